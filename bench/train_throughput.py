"""Training throughput: the study's input pipeline against the fast path, per ResNeSt-50 variant.

For each model and configuration, runs the training job's own step (``Trainer.train_step``)
on batches from its own loader, excludes the warm-up steps, times blocks of steps with the
device synchronised at their ends, and prints images per second and the projected time of
one CIFAR-10 epoch (50,000 images). Data: the synthetic 32x32 set (throughput does not
depend on the pixels).

    python bench/train_throughput.py                # both variants, both pipelines, the
                                                    # fast one in NCHW and NHWC, fp32 and bf16
    python bench/train_throughput.py --pipelines fast --fast-batch 2048 --compile \\
        --compile-mode max-autotune-no-cudagraphs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from jobs import distributed
from jobs.device import resolve
from jobs.reporter import NullReporter
from jobs.stopping import StopFlag
from jobs.timing import synchronize
from jobs.trainer import Trainer
from records.spec import TrainSpec

CIFAR10_TRAIN = 50_000


def configurations(args: argparse.Namespace, device: torch.device) -> dict[str, dict]:
    """The study's pipeline, and the fast path once per memory format and precision asked for
    (the A/B behind the fast recipe's ``memory_format=auto``)."""
    configs = {
        # The study: torchvision DataLoader with PIL transforms, fp32, batch 128.
        "study": {
            "pipeline": "torchvision",
            "batch_size": 128,
            "bf16": False,
            "memory_format": "contiguous",
            "compile": False,
        },
    }
    # The fast path: whole set on the device, augmentation as tensor ops, a large batch,
    # optionally compiled; bf16 is autocast on CUDA only.
    precisions = [p for p in args.precisions if p == "fp32" or device.type == "cuda"]
    for fmt in args.formats:
        for precision in precisions:
            configs[f"fast {FORMAT_LABEL[fmt]} {precision}"] = {
                "pipeline": "device",
                "compile_mode": args.compile_mode,
                "batch_size": args.fast_batch,
                "bf16": precision == "bf16",
                "memory_format": fmt,
                "compile": args.compile,
            }
    return configs


FORMAT_LABEL = {"contiguous": "NCHW", "channels_last": "NHWC"}


def measure(model: str, overrides: dict, args: argparse.Namespace) -> dict:
    env = distributed.detect()
    device = resolve(args.device, env.local_rank)
    with tempfile.TemporaryDirectory() as tmp:
        spec = TrainSpec(
            model=model,
            dataset="synthetic",
            out_dir=tmp,
            device=args.device,
            overrides={**overrides, "lr": 0.01},
        )
        trainer = Trainer(spec, env, device, NullReporter(), StopFlag())
        trainer.set_train_mode()
        batches = _cycle(trainer.train_loader)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            trainer.train_step(*next(batches))
        # Timed in blocks synchronised only at their ends, as the job runs: within a block
        # the host queues work ahead of the device.
        times = []
        for _ in range(args.blocks):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step(*next(batches))
            synchronize(device)
            times.append((time.perf_counter() - start) / args.steps)
    batch = overrides["batch_size"]
    median = statistics.median(times)
    cv = statistics.pstdev(times) / statistics.mean(times) if len(times) > 1 else 0.0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {
        "images_per_sec": batch / median,
        "step_ms": 1000 * median,
        "cv": cv,
        "epoch_s": CIFAR10_TRAIN / (batch / median),
        "peak_mem_gb": peak / 1e9,
    }


def format_verdicts(rows: list[dict]) -> list[str]:
    """Per model and precision, the faster memory format of the fast path and by how much."""
    lines = []
    fast = [r for r in rows if r["configuration"].startswith("fast")]
    for model in dict.fromkeys(r["model"] for r in fast):
        for bf16 in (False, True):
            pair = {
                r["memory_format"]: r for r in fast if r["model"] == model and r["bf16"] == bf16
            }
            if len(pair) < 2:
                continue
            a, b = pair["channels_last"], pair["contiguous"]
            win, lose = (a, b) if a["images_per_sec"] > b["images_per_sec"] else (b, a)
            lines.append(
                f"{model} {'bf16' if bf16 else 'fp32'}: {FORMAT_LABEL[win['memory_format']]} "
                f"wins, {win['images_per_sec'] / lose['images_per_sec']:.2f}x the images/s of "
                f"{FORMAT_LABEL[lose['memory_format']]}"
            )
    return lines


def _cycle(loader):
    epoch = 0
    while True:
        yield from loader.batches(epoch)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnest50_bottleneck", "resnest50_basic"])
    parser.add_argument(
        "--pipelines", nargs="+", default=["study", "fast"], choices=["study", "fast"]
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        default=["contiguous", "channels_last"],
        choices=list(FORMAT_LABEL),
        help="memory formats of the fast path (default both: the A/B)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16"],
        choices=["fp32", "bf16"],
        help="precisions of the fast path (bf16 only on CUDA; default both)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per timed block (default 10 on CUDA, 2 on CPU)",
    )
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks (default 5)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 5 on CUDA, 1 on CPU)"
    )
    parser.add_argument(
        "--fast-batch",
        type=int,
        default=None,
        help="fast path batch (default 1024 on CUDA, 128 on CPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode (default, reduce-overhead, ...)",
    )
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    device = resolve(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (10 if cuda else 2)
    args.warmup = args.warmup or (5 if cuda else 1)
    args.fast_batch = args.fast_batch or (1024 if cuda else 128)
    name = (
        torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {name}; torch {torch.__version__}; {args.warmup} warm-up steps excluded, "
        f"{args.blocks} timed blocks of {args.steps} steps, median block reported"
    )
    header = (
        f"{'model':<24}{'configuration':<19}{'batch':>6}{'img/s':>10}{'step ms':>10}{'CV':>7}"
        f"{'epoch s':>9}{'peak GB':>9}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for model in args.models:
        for pipeline, overrides in configurations(args, device).items():
            if pipeline.split()[0] not in args.pipelines:
                continue
            r = measure(model, overrides, args)
            row = {"model": model, "configuration": pipeline, **overrides, **r, "device": name}
            rows.append(row)
            flag = " !" if r["cv"] > 0.05 else ""
            print(
                f"{model:<24}{pipeline:<19}{overrides['batch_size']:>6}"
                f"{r['images_per_sec']:>10,.0f}{r['step_ms']:>10.1f}{100 * r['cv']:>6.1f}%"
                f"{r['epoch_s']:>9.1f}{r['peak_mem_gb']:>9.2f}{flag}",
                flush=True,
            )
    print(
        "epoch s: projected time of one CIFAR-10 epoch (50,000 images); "
        "CV across blocks, ! marks CV above 5%"
    )
    for line in format_verdicts(rows):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
