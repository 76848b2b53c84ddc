"""The training and transfer job: one code path from one CPU process to multi-node DDP.

Run directly (``python -m jobs.train --model ... --dataset ... --out DIR``), under
``torchrun --nproc_per_node=N -m jobs.train ...``, as SLURM tasks, or from a Ray Train worker.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import math
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import resnest
from jobs import checkpoint, data, distributed, telemetry
from jobs.checkpoint import CheckpointError
from jobs.loader import PIPELINES, DeviceLoader
from jobs.lock import take
from jobs.recipe import Recipe, RecipeError, as_dict, get_recipe
from jobs.reporter import NullReporter, Reporter, reporter_for
from jobs.spec import (
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REQUEUE,
    EXIT_USER_ERROR,
    SpecError,
    TrainSpec,
    add_job_arguments,
    spec_from_args,
)

log = logging.getLogger("jobs.train")


class Diverged(Exception):
    """The loss became NaN or infinite."""


class Requeue(Exception):
    """Stopped by a signal after writing a checkpoint; the launcher should requeue."""

    def __init__(self, message: str, signal: int | None = None) -> None:
        super().__init__(message)
        self.signal = signal


class StopFlag:
    """Set by SIGTERM, SIGUSR1 or SIGUSR2 (preemption, time limits, ``scontrol requeue``);
    read at safe points. SIGUSR2 is the signal submitit asks SLURM to send before a time
    limit; handling it here checkpoints at a step boundary rather than mid-step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. some Ray workers)
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum


def lr_factor(recipe: Recipe, epoch: float) -> float:
    """Multiplier of the base lr at fractional ``epoch`` (``epoch + step / steps``)."""
    if recipe.schedule == "multistep":
        factor = recipe.gamma ** sum(1 for m in recipe.milestones if int(epoch) >= m)
    elif recipe.schedule == "step":
        factor = recipe.gamma ** (int(epoch) // recipe.step_size)
    elif recipe.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(epoch / recipe.epochs, 1.0)))
    else:  # onecycle: linear warm-up to the peak, then linear decay to zero
        warm = max(recipe.warmup_epochs, 1e-9)
        if epoch < recipe.warmup_epochs:
            return max(epoch / warm, 0.01)
        rest = max(recipe.epochs - recipe.warmup_epochs, 1e-9)
        return max(1.0 - (epoch - recipe.warmup_epochs) / rest, 0.0)
    if recipe.warmup_epochs > 0 and epoch < recipe.warmup_epochs:
        factor *= max(epoch / recipe.warmup_epochs, 0.01)
    return factor


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not recipe.no_decay_norm_bias:
        return [{"params": [p for _, p in trainable], "weight_decay": recipe.weight_decay}]
    # One-dimensional tensors are BN scales and shifts and biases.
    decay = [p for _, p in trainable if p.ndim > 1]
    no_decay = [p for _, p in trainable if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def frozen_modules(model: resnest.ResNeSt, policy: str) -> list[nn.Module]:
    if policy == "none":
        return []
    stem = [model.conv1, model.bn1]
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    if policy == "backbone":
        return stem + stages
    return stem + stages[: int(policy)]


def params_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def provenance(
    device: torch.device, spec: TrainSpec, gpus: list[dict[str, Any]], telemetry_note: str | None
) -> dict[str, Any]:
    """Where this attempt ran, and whether that is the GPU type the sweep asked for."""
    import socket
    from importlib.metadata import PackageNotFoundError, version

    try:
        code = version("resnest-bench")
    except PackageNotFoundError:
        code = "unknown"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "cudnn": str(cudnn or ""),
        "gpu_name": "",
        "gpu_uuid": "",
        "gpu_memory_total": None,
        "driver": "",
        "code_version": code,
        "telemetry": telemetry_note or "nvml",
        "gpu_type": spec.gpu_type,
        "expected_gpu": spec.expect_gpu,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_name"] = props.name
        info["gpu_uuid"] = str(getattr(props, "uuid", ""))
        info["gpu_memory_total"] = props.total_memory
    if gpus:  # NVML's view, which has the driver version
        info.update(
            gpu_name=gpus[0]["name"] or info["gpu_name"],
            gpu_uuid=gpus[0]["uuid"] or info["gpu_uuid"],
            gpu_memory_total=gpus[0]["memory_total"] or info["gpu_memory_total"],
            driver=gpus[0]["driver"],
        )
    match = telemetry.gpu_matches(spec.expect_gpu, info["gpu_name"], device.type)
    info["gpu_mismatch"] = None if match is None else not match
    return info


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_rss"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Data and compute time of each step without stalling the device.

    On CUDA, events around the data and compute work of each step are read once, when the
    totals are collected; data time there is the GPU time of the data ops plus the host time
    spent waiting for the next batch (DataLoader workers). On the CPU, where the work is
    synchronous, host clocks measure both.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[Any, Any, Any]] = []
        self.data = 0.0
        self.compute = 0.0

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, start: Any, mid: Any, end: Any, host_wait: float) -> None:
        if self.cuda:
            self.marks.append((start, mid, end))
            self.data += host_wait
        else:
            self.data += mid - start
            self.compute += end - mid

    def collect(self) -> tuple[float, float]:
        if self.marks:
            self.marks[-1][2].synchronize()
            for start, mid, end in self.marks:
                self.data += start.elapsed_time(mid) / 1000
                self.compute += mid.elapsed_time(end) / 1000
            self.marks.clear()
        data, compute = self.data, self.compute
        self.data = self.compute = 0.0
        return data, compute


@dataclass
class EpochTotals:
    """Running sums of one epoch; part of a mid-epoch checkpoint."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    data_time: float = 0.0
    compute_time: float = 0.0
    elapsed: float = 0.0  # wall time of the epoch before an interruption
    steps: int = 0

    def fold(self, sums: torch.Tensor, timer: StepTimer) -> None:
        """Move the device-side sums and the timer's readings into these totals."""
        loss_sum, correct = sums.tolist()
        sums.zero_()
        self.loss_sum += loss_sum
        self.correct += correct
        data_time, compute_time = timer.collect()
        self.data_time += data_time
        self.compute_time += compute_time


@dataclass
class History:
    best_acc: float = 0.0
    train_time: float = 0.0
    time_to_target: float | None = None
    last: dict[str, Any] = field(default_factory=dict)


class Trainer:
    def __init__(
        self,
        spec: TrainSpec,
        env: distributed.DistEnv,
        device: torch.device,
        reporter: Reporter,
        stop: StopFlag,
    ) -> None:
        self.spec = spec
        self.env = env
        self.device = device
        self.reporter = reporter
        self.stop = stop
        self.recipe = get_recipe(spec.recipe, spec.stage, spec.overrides)
        try:
            resnest.get_config(spec.model)
        except KeyError as exc:
            raise SpecError(exc.args[0]) from None
        self.ckpt_dir = Path(spec.out_dir) / "checkpoints"
        recipe = self.recipe
        if recipe.batch_size % env.world_size:
            raise RecipeError(
                f"batch_size {recipe.batch_size} does not divide over {env.world_size} ranks"
            )
        self.local_batch = recipe.batch_size // env.world_size
        if self.local_batch % recipe.accum_steps:
            raise RecipeError(
                f"per-rank batch {self.local_batch} does not split into "
                f"{recipe.accum_steps} accumulation steps"
            )

        torch.manual_seed(spec.seed)
        self.train_set = self._load(train=True)
        self.test_set = self._load(train=False)
        self.model = self._build_model().to(device)
        self.frozen = frozen_modules(self.model, spec.freeze)
        for module in self.frozen:
            module.requires_grad_(False)
        if recipe.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            param_groups(self.model, recipe),
            lr=recipe.scaled_lr(),
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.train_loader = PIPELINES[recipe.pipeline](
            self.train_set,
            self.local_batch,
            device,
            train=True,
            augment=recipe.augment,
            rank=env.rank,
            world_size=env.world_size,
            seed=spec.seed,
            channels_last=recipe.channels_last,
        )
        self.test_loader = DeviceLoader(
            self.test_set,
            max(self.local_batch, 256),
            device,
            train=False,
            rank=env.rank,
            world_size=env.world_size,
            channels_last=recipe.channels_last,
        )
        net: nn.Module = self.model
        if env.distributed:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[device] if device.type == "cuda" else None
            )
        self.net = torch.compile(net, mode=recipe.compile_mode) if recipe.compile else net
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if recipe.bf16 and device.type == "cuda"
            else contextlib.nullcontext()
        )

    def _load(self, train: bool) -> data.ImageSet:
        # Rank 0 downloads; the others wait, then read what it wrote.
        if self.env.is_main:
            result = data.load(self.spec.dataset, self.spec.data_dir, train, self.spec.download)
        if self.env.distributed:
            dist.barrier()
        if not self.env.is_main:
            result = data.load(self.spec.dataset, self.spec.data_dir, train, download=False)
        return result

    def _build_model(self) -> resnest.ResNeSt:
        num_classes = self.train_set.num_classes
        if self.spec.stage == "train":
            return resnest.create(self.spec.model, num_classes=num_classes, stem=self.spec.stem)
        source = load_source(Path(self.spec.init_from))
        model = resnest.create(
            self.spec.model, num_classes=source["num_classes"], stem=source.get("stem") or None
        )
        model.load_state_dict(source["model"])
        model.reset_classifier(num_classes)
        return model

    # -- checkpoints ----------------------------------------------------------------------

    def state(self, epoch: int, step: int, totals: EpochTotals, history: History) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
            "totals": vars(totals).copy(),
            "history": vars(history).copy(),
            "num_classes": self.train_set.num_classes,
            "model_name": self.spec.model,
            "stem": self.spec.stem or "",
            "dataset": self.spec.dataset,
            "rng": torch.get_rng_state(),
        }

    def save(self, epoch: int, step: int, totals: EpochTotals, history: History) -> None:
        if self.env.is_main:
            path = checkpoint.save(
                self.ckpt_dir,
                self.state(epoch, step, totals, history),
                epoch,
                step,
                keep=self.spec.keep_checkpoints,
            )
            self.reporter.report(
                "event", {"event": "checkpoint", "path": str(path), "epoch": epoch, "step": step}
            )
        if self.env.distributed:
            dist.barrier()

    def resume(self) -> tuple[int, int, EpochTotals, History]:
        path, state, refused = checkpoint.load_latest(self.ckpt_dir)
        for reason in refused:
            if self.env.is_main:
                self.reporter.report("event", {"event": "checkpoint_refused", "reason": reason})
        if state is None:
            return 0, 0, EpochTotals(), History()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if self.env.is_main:
            self.reporter.report(
                "event",
                {
                    "event": "resumed",
                    "path": str(path),
                    "epoch": state["epoch"],
                    "step": state["step"],
                },
            )
            print(f"resumed from {path}", flush=True)
        return (
            state["epoch"],
            state["step"],
            EpochTotals(**state["totals"]),
            History(**state["history"]),
        )

    # -- the loop -------------------------------------------------------------------------

    def set_train_mode(self) -> None:
        self.net.train()
        for module in self.frozen:  # frozen stages keep their BN statistics
            module.eval()

    def control(self, loss: torch.Tensor) -> tuple[bool, bool]:
        """(stop requested, loss not finite), agreed by all ranks."""
        flags = torch.stack(
            [
                torch.tensor(float(self.stop.signal is not None), device=self.device),
                (~torch.isfinite(loss.detach().float())).float(),
            ]
        )
        flags = distributed.all_sum(flags, self.env)
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        accum = self.recipe.accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.float64)
        for k in range(accum):
            # Strided micro-batches: micro-batch k of a global batch holds what rank k would
            # hold in a DDP run with ``accum`` ranks, so the two runs see the same BN batches.
            x, y = (images, labels) if accum == 1 else (images[k::accum], labels[k::accum])
            sync = (
                self.net.no_sync()
                if k < accum - 1 and self.env.distributed
                else contextlib.nullcontext()
            )
            with sync, self.autocast:
                logits = self.net(x)
                loss = self.criterion(logits, y)
            (loss / accum).backward()
            loss_sum += loss.detach().double() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum().double()
        self.optimizer.step()
        return loss_sum, correct

    def evaluate(self) -> tuple[float, float]:
        if self.env.distributed:
            # Every rank evaluates its shard with rank 0's BN statistics.
            for buffer in self.model.buffers():
                dist.broadcast(buffer, 0)
        self.model.eval()
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        with torch.no_grad(), self.autocast:
            for images, labels in self.test_loader.batches(0):
                logits = self.model(images)
                loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
                sums += torch.stack(
                    [
                        loss.double(),
                        (logits.argmax(1) == labels).sum().double(),
                        torch.tensor(labels.shape[0], device=self.device).double(),
                    ]
                )
        sums = distributed.all_sum(sums, self.env)
        return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()

    def run(self) -> dict[str, Any]:
        spec, recipe, env = self.spec, self.recipe, self.env
        start_epoch, start_step, totals, history = self.resume()
        steps = len(self.train_loader)
        if spec.max_steps:
            steps = min(steps, spec.max_steps)
        if env.is_main:
            self.reporter.report(
                "start",
                {
                    "spec": vars(spec),
                    "recipe": as_dict(recipe),
                    "world_size": env.world_size,
                    "device": str(self.device),
                    "steps_per_epoch": steps,
                    "resumed_from": [start_epoch, start_step],
                },
            )
        sampler, note = self.open_telemetry()
        if env.is_main:
            devices = sampler.source.devices() if sampler else []
            self.reporter.report("provenance", provenance(self.device, spec, devices, note))
        try:
            return self._train(start_epoch, start_step, totals, history, steps, sampler)
        finally:
            if sampler is not None:
                sampler.stop()

    def open_telemetry(self) -> tuple[telemetry.Sampler | None, str | None]:
        """This rank's sampler (its own GPU), or None when the spec turns telemetry off."""
        if not self.spec.telemetry_interval:
            return None, "off"
        uuids = []
        if self.device.type == "cuda":
            uuid = str(getattr(torch.cuda.get_device_properties(self.device), "uuid", ""))
            uuids = [uuid] if uuid else []
        source, note = telemetry.open_source(self.device.type, uuids)
        if source is None:
            log.warning("telemetry: %s", note)
            return None, note
        if note:
            log.info("telemetry: %s", note)
        return telemetry.Sampler(source, self.spec.telemetry_interval).start(), note

    def _train(self, start_epoch, start_step, totals, history, steps, sampler) -> dict[str, Any]:
        spec, recipe, env = self.spec, self.recipe, self.env
        base_lr = recipe.scaled_lr()
        first_epoch_here = True
        for epoch in range(start_epoch, recipe.epochs):
            self.set_train_mode()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            step0 = start_step if epoch == start_epoch else 0
            if step0 == 0:
                totals = EpochTotals()
            batches = self.train_loader.batches(epoch, start=step0)
            progress = _progress(env, steps, step0, f"epoch {epoch + 1}/{recipe.epochs}")
            synchronize(self.device)
            if sampler is not None:
                sampler.begin_epoch()
            epoch_start = time.perf_counter()
            lr = base_lr
            timer = StepTimer(self.device)
            sums = torch.zeros(2, device=self.device, dtype=torch.float64)
            for step in range(step0, steps):
                start = timer.mark()
                host_start = time.perf_counter()
                images, labels = next(batches)
                host_wait = time.perf_counter() - host_start
                mid = timer.mark()
                lr = base_lr * lr_factor(recipe, epoch + step / steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss_sum, correct = self.train_step(images, labels)
                sums += torch.stack([loss_sum, correct])
                timer.add(start, mid, timer.mark(), host_wait)
                totals.count += labels.shape[0]
                totals.steps += 1
                progress.update(1)
                # Reading flags syncs the device, so it happens every few steps only.
                if (step + 1) % spec.check_every and step + 1 < steps:
                    continue
                stop, bad = self.control(sums[0])
                if bad:
                    progress.close()
                    raise Diverged(f"loss is not finite at epoch {epoch + 1}, step {step + 1}")
                if stop and step + 1 < steps:
                    progress.close()
                    totals.fold(sums, timer)
                    totals.elapsed += time.perf_counter() - epoch_start
                    self.save(epoch, step + 1, totals, history)
                    raise Requeue(
                        f"signal {self.stop.signal}: checkpointed at epoch "
                        f"{epoch + 1}, step {step + 1}",
                        self.stop.signal,
                    )
            totals.fold(sums, timer)
            progress.close()
            synchronize(self.device)
            epoch_time = totals.elapsed + time.perf_counter() - epoch_start
            # The telemetry window is the epoch's training, not its evaluation.
            window = sampler.end_epoch() if sampler is not None else None
            record = self._epoch_record(epoch, epoch_time, totals, lr, first_epoch_here)
            samples = self._telemetry(record, window)
            first_epoch_here = False
            history.train_time += record["epoch_time"]
            history.best_acc = max(history.best_acc, record["test_acc"])
            if (
                spec.target_accuracy is not None
                and history.time_to_target is None
                and record["test_acc"] >= spec.target_accuracy
            ):
                history.time_to_target = history.train_time
            history.last = record
            if env.is_main:
                self.reporter.report("epoch", record)
                if samples:
                    self.reporter.report("telemetry", {"epoch": epoch + 1, "samples": samples})
                print(_epoch_line(record, recipe.epochs), flush=True)
            done = epoch + 1 == recipe.epochs
            stop, _ = self.control(torch.zeros((), device=self.device))
            if done or stop or (epoch + 1) % spec.checkpoint_every == 0:
                self.save(epoch + 1, 0, EpochTotals(), history)
            if stop and not done:
                raise Requeue(
                    f"signal {self.stop.signal}: checkpointed after epoch {epoch + 1}",
                    self.stop.signal,
                )
        return self._final(history)

    def _epoch_record(self, epoch, epoch_time, totals, lr, warmup) -> dict[str, Any]:
        sums = torch.tensor(
            [totals.loss_sum, totals.correct, totals.count], dtype=torch.float64, device=self.device
        )
        loss_sum, correct, count = distributed.all_sum(sums, self.env).tolist()
        eval_start = time.perf_counter()
        test_loss, test_acc = self.evaluate()
        eval_time = time.perf_counter() - eval_start
        peak, peak_kind = peak_memory(self.device)
        return {
            "epoch": epoch + 1,
            "train_loss": loss_sum / count,
            "train_acc": correct / count,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "epoch_time": epoch_time,
            "data_time": totals.data_time,
            "compute_time": totals.compute_time,
            "eval_time": eval_time,
            "images": int(count),
            "images_per_sec": count / epoch_time if epoch_time > 0 else 0.0,
            "peak_mem_bytes": peak,
            "peak_mem_kind": peak_kind,
            "warmup": warmup,
            "steps": totals.steps,
            "world_size": self.env.world_size,
        }

    def _telemetry(self, record: dict[str, Any], window) -> list[dict[str, Any]]:
        """Add the epoch's telemetry (``Sampler.end_epoch()``) to its record, all ranks' GPUs
        together; return this rank's samples."""
        if window is None:
            record["telemetry_source"] = "off"
            return []
        figures, samples = window
        keys_sum = ("energy_j", "power_mean_w", "gpu_util_mean", "cpu_util_mean")
        keys_max = ("gpu_util_max", "gpu_mem_peak_bytes", "rss_peak_bytes")
        nan = float("nan")
        sums = torch.tensor([nan if figures.get(k) is None else figures[k] for k in keys_sum],
                            dtype=torch.float64, device=self.device)  # fmt: skip
        maxes = torch.tensor([nan if figures.get(k) is None else figures[k] for k in keys_max],
                             dtype=torch.float64, device=self.device)  # fmt: skip
        if self.env.distributed:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
            dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
            sums[2:] /= self.env.world_size  # utilisations: the mean over the ranks' GPUs
        combined = dict(zip(keys_sum + keys_max, sums.tolist() + maxes.tolist(), strict=True))
        for key, value in combined.items():
            if key in figures:  # the GPU figures from NVML, or the CPU ones from psutil
                record[key] = None if math.isnan(value) else value
        record["telemetry_source"] = figures["telemetry_source"]
        record["energy_method"] = figures.get("energy_method")
        energy = record.get("energy_j")
        record["energy_per_image_j"] = energy / record["images"] if energy else None
        return samples

    def _final(self, history: History) -> dict[str, Any]:
        digest = params_digest(self.model)
        consistent = True
        if self.env.distributed:
            digests: list[str] = [""] * self.env.world_size
            dist.all_gather_object(digests, digest)
            consistent = len(set(digests)) == 1
        summary = {
            "status": "succeeded",
            "best_test_acc": history.best_acc,
            "final_test_acc": history.last.get("test_acc"),
            "train_time": history.train_time,
            "time_to_target": history.time_to_target,
            "target_accuracy": self.spec.target_accuracy,
            "epochs": self.recipe.epochs,
            "params_sha256": digest,
            "ranks_consistent": consistent,
        }
        if self.env.is_main:
            self.reporter.report("final", summary)
        return summary


def load_source(path: Path) -> dict[str, Any]:
    """A transfer's starting weights: a checkpoint file, or a job folder's latest valid one."""
    if path.is_dir():
        _, state, refused = checkpoint.load_latest(path / "checkpoints")
        if state is None:
            why = f" ({'; '.join(refused)})" if refused else ""
            raise CheckpointError(f"{path}: no valid checkpoint in {path / 'checkpoints'}{why}")
        return state
    return checkpoint.load(path)


def _progress(env: distributed.DistEnv, total: int, initial: int, desc: str):
    from tqdm import tqdm

    # Only on a terminal and only on rank 0; logs get the per-epoch line instead.
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        leave=False,
        unit="step",
        disable=None if env.is_main else True,
        file=sys.stderr,
    )


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {r['epoch']:>3}/{epochs}  loss {r['train_loss']:.4f}  "
        f"train {100 * r['train_acc']:5.2f}%  test {100 * r['test_acc']:5.2f}%  "
        f"lr {r['lr']:.4g}  {r['epoch_time']:.1f} s  {r['images_per_sec']:,.0f} img/s"
        + ("  (warm-up)" if r["warmup"] else "")
    )


def run(spec: TrainSpec, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run one job to the end. Raises Diverged, Requeue, or a user error."""
    env = distributed.detect()
    device = distributed.select_device(env, spec.device)
    distributed.init_process_group(env, device)
    if reporter is None:
        reporter = (
            reporter_for(Path(spec.out_dir), spec.job_id, spec.attempt)
            if env.is_main
            else NullReporter()
        )
    stop = StopFlag()
    stop.install()
    # Ends every rank agrees on (success, divergence, requeue) leave through a barrier;
    # an unexpected error leaves at once, since the other ranks may never reach one.
    agreed = False
    try:
        try:
            summary = Trainer(spec, env, device, reporter, stop).run()
        except Diverged as exc:
            agreed = True
            if env.is_main:
                reporter.report(
                    "final", {"status": "failed", "reason": "diverged", "detail": str(exc)}
                )
            raise
        except Requeue:
            agreed = True
            raise
        agreed = True
        return summary
    finally:
        if agreed:
            distributed.shutdown(env)
        elif env.distributed and dist.is_initialized() and env.source != "preinitialised":
            dist.destroy_process_group()


USER_ERRORS = (data.DataError, CheckpointError, RecipeError, SpecError)


def main(argv: Sequence[str] | None = None, stage: str = "train") -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m jobs.{stage}",
        description=f"Run one {stage} job (also under torchrun or as SLURM tasks).",
    )
    add_job_arguments(parser, stage)
    args = parser.parse_args(argv)
    return run_from_args(args, stage)


def run_from_args(args: argparse.Namespace, stage: str) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = spec_from_args(args, stage)
    except USER_ERRORS as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return execute(spec)[0]


def execute(spec: TrainSpec) -> tuple[int, int | None]:
    """Run a job and map its end to an exit code; also the signal that stopped it, if any.
    One runner per job folder (and rank): a second one exits at once, having done nothing."""
    lock, refused = take(spec.out_dir, distributed.detect().rank)
    if lock is None:
        return refused, None
    try:
        return _execute(spec)
    finally:
        lock.release()


def _execute(spec: TrainSpec) -> tuple[int, int | None]:
    try:
        run(spec)
    except Requeue as exc:
        print(f"resnest-bench: {exc}; exiting for requeue", file=sys.stderr)
        return EXIT_REQUEUE, exc.signal
    except Diverged as exc:
        print(f"resnest-bench: diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED, None
    except USER_ERRORS as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR, None
    except KeyboardInterrupt:
        return EXIT_FAILED, None
    return EXIT_OK, None


if __name__ == "__main__":
    sys.exit(main())
