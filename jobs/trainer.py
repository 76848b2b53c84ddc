"""The Trainer: one training or transfer run, from one CPU process to multi-node DDP.

It builds the data, the network, the optimiser and the loaders from the spec and its recipe,
resumes from the job folder's latest valid checkpoint, trains epoch by epoch with the device
synchronised only at the measurement points, reports each epoch and its telemetry, and
checkpoints; a stop signal checkpoints at the next safe point and raises ``Requeue``. The job
around it (process group, reporter, exit codes) is ``jobs.train``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import resnest
from jobs import checkpoint, data, distributed, flops, memory_format, telemetry
from jobs.checkpoint import CheckpointError, load_source, model_from
from jobs.loader import PIPELINES, DeviceLoader
from jobs.profiling import StepProfiler, nvtx
from jobs.provenance import params_digest, provenance
from jobs.recipe import RecipeError, as_dict, get_recipe
from jobs.reporter import Reporter
from jobs.schedule import frozen_modules, lr_factor, optimizer_for
from jobs.stopping import Diverged, Requeue, StopFlag
from jobs.timing import (
    EpochTotals,
    History,
    StepTimer,
    epoch_line,
    peak_memory,
    progress_bar,
    synchronize,
)
from records.errors import SpecError
from records.spec import TrainSpec, TransferSpec


def autocast_for(bf16: bool, device: torch.device) -> Any:
    """The recipe's autocast to bfloat16 on CUDA; nothing elsewhere."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    def __init__(
        self,
        spec: TrainSpec,
        env: distributed.DistEnv,
        device: torch.device,
        reporter: Reporter,
        stop: StopFlag,
        rendezvous_s: float | None = None,
    ) -> None:
        self.spec, self.env, self.device = spec, env, device
        self.reporter, self.stop, self.rendezvous_s = reporter, stop, rendezvous_s
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
        self.flops = flops.forward_flops(self.model, tuple(self.train_set.images.shape[1:]))
        freeze = spec.freeze if isinstance(spec, TransferSpec) else "none"
        self.frozen = frozen_modules(self.model, freeze)
        for module in self.frozen:
            module.requires_grad_(False)
        self.autocast = autocast_for(recipe.bf16, device)
        sample = (self.local_batch // recipe.accum_steps, *self.train_set.images.shape[1:])
        self.layout = memory_format.choose(
            recipe.memory_format, self.model, sample, self.train_set.num_classes, device, env,
            self.autocast,
        )  # fmt: skip
        if self.layout.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer_for(self.model, recipe)
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
            channels_last=self.layout.channels_last,
        )
        self.test_loader = DeviceLoader(
            self.test_set,
            max(self.local_batch, 256),
            device,
            train=False,
            rank=env.rank,
            world_size=env.world_size,
            channels_last=self.layout.channels_last,
        )
        net: nn.Module = self.model
        if env.distributed:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[device] if device.type == "cuda" else None
            )
        self.net = torch.compile(net, mode=recipe.compile_mode) if recipe.compile else net
        artifact = functools.partial(reporter.report, "artifact")
        self.profiler = StepProfiler(
            recipe.profile, Path(spec.out_dir), device, env.is_main, artifact
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
        num_classes, spec, recipe = self.train_set.num_classes, self.spec, self.recipe
        if not isinstance(spec, TransferSpec):
            return resnest.create(spec.model, num_classes, spec.stem, last_gamma=recipe.last_gamma)
        source = load_source(Path(self.spec.init_from))
        if source["model_name"] != self.spec.model:
            raise CheckpointError(
                f"{self.spec.init_from}: a {source['model_name']} checkpoint; this job's "
                f"model is {self.spec.model}"
            )
        model = model_from(source).train()
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
            resumed = {"path": str(path), "epoch": state["epoch"], "step": state["step"]}
            self.reporter.report("event", {"event": "resumed", **resumed})
            print(f"resumed from {path}", flush=True)
        totals, history = EpochTotals(**state["totals"]), History(**state["history"])
        return state["epoch"], state["step"], totals, history

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
                with nvtx("forward", self.device):
                    logits = self.net(x)
                    loss = self.criterion(logits, y)
                with nvtx("backward", self.device):
                    (loss / accum).backward()
            loss_sum += loss.detach().double() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum().double()
        with nvtx("optimizer", self.device):
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
        hosts = distributed.hosts(env)
        if env.is_main:
            self.reporter.report(
                "start",
                {
                    "spec": spec.to_dict(),
                    "recipe": as_dict(recipe),
                    "world_size": env.world_size,
                    "hosts": hosts,
                    "rendezvous_s": self.rendezvous_s,
                    "device": str(self.device),
                    "cpu_threads": torch.get_num_threads(),
                    **self.layout.record(),
                    "steps_per_epoch": steps,
                    "resumed_from": [start_epoch, start_step],
                },
            )
        sampler, note = telemetry.sampler_for(self.device, self.spec.telemetry_interval,
                                              env.local_rank == 0)  # fmt: skip
        if env.is_main:
            devices = sampler.source.devices() if sampler else []
            record = provenance(self.device, spec, devices, note)
            mode = flops.math_mode(self.device, self.recipe.bf16)
            extra = {"forward_flops": self.flops, "math_mode": mode,
                     "cpu_energy": telemetry.cpu_energy_method(sampler)}  # fmt: skip
            self.reporter.report("provenance", {**record, **extra})
        try:
            return self._train(start_epoch, start_step, totals, history, steps, sampler)
        finally:
            self.profiler.close()  # training ended inside the window: the steps it has
            if sampler is not None:
                sampler.stop()

    def _train(self, start_epoch, start_step, totals, history, steps, sampler) -> dict[str, Any]:
        spec, recipe = self.spec, self.recipe
        first_epoch_here = True
        for epoch in range(start_epoch, recipe.epochs):
            step0 = start_step if epoch == start_epoch else 0
            if step0 == 0:
                totals = EpochTotals()
            if sampler is not None:
                sampler.begin_epoch()
            epoch_time, lr = self._train_epoch(epoch, step0, steps, totals, history)
            # The telemetry window is the epoch's training, not its evaluation.
            window = sampler.end_epoch() if sampler is not None else None
            record = self._epoch_record(epoch, epoch_time, totals, lr, first_epoch_here)
            samples = telemetry.fold_into(record, window, self.env, self.device)
            first_epoch_here = False
            history.add(record, spec.target_accuracy)
            if self.env.is_main:
                self.reporter.report("epoch", record)
                if samples:
                    self.reporter.report("telemetry", {"epoch": epoch + 1, "samples": samples})
                print(epoch_line(record, recipe.epochs), flush=True)
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

    def _train_epoch(
        self, epoch: int, step0: int, steps: int, totals: EpochTotals, history: History
    ) -> tuple[float, float]:
        """Train one epoch from ``step0``; return its wall time (the part before an earlier
        interruption included) and the last lr. A stop signal checkpoints mid-epoch and
        raises Requeue; a non-finite loss raises Diverged."""
        recipe = self.recipe
        base_lr = recipe.scaled_lr()
        self.set_train_mode()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        batches = self.train_loader.batches(epoch, start=step0)
        progress = progress_bar(self.env, steps, step0, f"epoch {epoch + 1}/{recipe.epochs}")
        synchronize(self.device)
        epoch_start = time.perf_counter()
        lr = base_lr
        timer = StepTimer(self.device)
        sums = torch.zeros(2, device=self.device, dtype=torch.float64)
        for step in range(step0, steps):
            start = timer.mark()
            self.profiler.before_step()
            host_start = time.perf_counter()
            with nvtx("data", self.device):
                images, labels = next(batches)
            host_wait = time.perf_counter() - host_start
            mid = timer.mark()
            lr = base_lr * lr_factor(recipe, epoch + step / steps, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum, correct = self.train_step(images, labels)
            sums += torch.stack([loss_sum, correct])
            timer.add(start, mid, timer.mark(), host_wait)
            totals.count += labels.shape[0]
            totals.steps += 1
            self.profiler.after_step()
            progress.update(1)
            # Reading flags syncs the device, so it happens every few steps only.
            if (step + 1) % self.spec.check_every and step + 1 < steps:
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
                    f"signal {self.stop.signal}: checkpointed at epoch {epoch + 1}, step "
                    f"{step + 1}",
                    self.stop.signal,
                )
        totals.fold(sums, timer)
        progress.close()
        synchronize(self.device)
        return totals.elapsed + time.perf_counter() - epoch_start, lr

    def _epoch_record(self, epoch, epoch_time, totals, lr, warmup) -> dict[str, Any]:
        sums = torch.tensor(
            [totals.loss_sum, totals.correct, totals.count], dtype=torch.float64, device=self.device
        )
        loss_sum, correct, count = distributed.all_sum(sums, self.env).tolist()
        eval_start = time.perf_counter()
        test_loss, test_acc = self.evaluate()
        eval_time = time.perf_counter() - eval_start
        peak, peak_kind = peak_memory(self.device)
        speed = count / epoch_time if epoch_time > 0 else 0.0
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
            "images_per_sec": speed,
            "tflops": flops.achieved_tflops(speed, self.flops),
            "peak_mem_bytes": peak,
            "peak_mem_kind": peak_kind,
            "warmup": warmup,
            "steps": totals.steps,
            "world_size": self.env.world_size,
        }

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
