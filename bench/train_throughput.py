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

from bench.results_file import Result, out_file
from harness import stats
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


def format_verdicts(rows: list[dict]) -> list[dict]:
    """Per model and precision, NHWC against NCHW on the fast path: the median of the rounds'
    paired ratios of images/s with its 95% bootstrap interval, and the faster one, or "same"
    where the interval holds 1 (with fewer than five rounds, no interval: by the median)."""
    verdicts = []
    fast = [r for r in rows if r["configuration"].startswith("fast")]
    for model in dict.fromkeys(r["model"] for r in fast):
        for bf16 in (False, True):
            pair = {
                r["memory_format"]: r for r in fast if r["model"] == model and r["bf16"] == bf16
            }
            if len(pair) < 2:
                continue
            nhwc, nchw = pair["channels_last"], pair["contiguous"]
            pairs = zip(nhwc["images_per_sec_rounds"], nchw["images_per_sec_rounds"], strict=True)
            ratios = [a / b for a, b in pairs]
            ratio = statistics.median(ratios)
            # an interval from fewer rounds than five says nothing: none then
            low, high = stats.interval(ratios) if len(ratios) >= 5 else (None, None)
            if low is not None and high is not None and low <= 1 <= high:
                said = "same"
            else:
                said = "NHWC" if ratio > 1 else "NCHW"
            interval = f" [95%: {low:.2f}-{high:.2f}]" if low is not None else ""
            verdicts.append({
                "model": model, "precision": "bf16" if bf16 else "fp32", "winner": said,
                "nhwc_over_nchw": ratio, "ci95_low": low, "ci95_high": high,
                "nhwc_images_per_sec": nhwc["images_per_sec"],
                "nchw_images_per_sec": nchw["images_per_sec"], "rounds": len(ratios),
                "line": f"{model} {'bf16' if bf16 else 'fp32'}: "
                        + ("NHWC and NCHW the same" if said == "same" else f"{said} wins")
                        + f", NHWC at {ratio:.2f}x the images/s of NCHW{interval}",
            })  # fmt: skip
    return verdicts


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
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of every configuration, interleaved (default 1)")  # fmt: skip
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--out", type=out_file,
                        help="write the rows, verdicts and conditions as JSON here")  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    result = Result("train_throughput")

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
    configs = {k: v for k, v in configurations(args, device).items()
               if k.split()[0] in args.pipelines}  # fmt: skip
    measured: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.rounds):
        # every configuration once a round, in a rotating order: drift falls on all alike
        names = list(configs)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]
        for model in args.models:
            for pipeline in names:
                r = measure(model, configs[pipeline], args)
                measured.setdefault((model, pipeline), []).append(r)
                flag = " !" if r["cv"] > 0.05 else ""
                print(
                    f"{model:<24}{pipeline:<19}{configs[pipeline]['batch_size']:>6}"
                    f"{r['images_per_sec']:>10,.0f}{r['step_ms']:>10.1f}{100 * r['cv']:>6.1f}%"
                    f"{r['epoch_s']:>9.1f}{r['peak_mem_gb']:>9.2f}{flag}"
                    + (f"  (round {round_ + 1})" if args.rounds > 1 else ""),
                    flush=True,
                )
    rows = []
    for (model, pipeline), runs in measured.items():
        rate = [r["images_per_sec"] for r in runs]
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append({"model": model, "configuration": pipeline, **configs[pipeline], **median,
                     "images_per_sec_rounds": rate, "device": name})  # fmt: skip
    print(
        "epoch s: projected time of one CIFAR-10 epoch (50,000 images); "
        "CV across blocks, ! marks CV above 5%"
        + (f"; figures below are medians over {args.rounds} rounds" if args.rounds > 1 else "")
    )
    verdicts = format_verdicts(rows)
    for verdict in verdicts:
        print(verdict["line"])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    result.conditions.update(device=name, rounds=args.rounds, blocks=args.blocks,
                             steps=args.steps, warmup=args.warmup)  # fmt: skip
    result.figures = {"rows": rows, "verdicts": verdicts}
    result.write(args.out)


if __name__ == "__main__":
    main()
