"""The cost of the profiler hooks when profiling is off: the same training steps with and
without them.

A training step of the job has, with profiling off, the profiler's two checks
(``StepProfiler.before_step``/``after_step``) and four NVTX ranges (data, forward, backward,
optimizer: nothing off CUDA). This bench runs blocks of training steps (forward, backward,
SGD step on a fixed batch, the device synchronised at the end of each block), alternating a
block without the hooks and one with them, so that drift of the machine hits both alike. It
reports the median block time of each with its range, the paired difference in percent, and
the hooks' own cost per step measured alone (a million calls), as a share of a step.

    python bench/profile_overhead.py [--model resnest_tiny_basic] [--batch 32] [--steps 20]
        [--pairs 9] [--device auto] [--out RESULT.json]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from telemetry_overhead import block_parser, training_parts

from bench.results_file import Result, out_file, spread
from harness import stats
from jobs.profiling import StepProfiler, nvtx


def main() -> None:
    parser = block_parser(__doc__.splitlines()[0], "resnest_tiny_basic", 32)
    parser.add_argument("--out", type=out_file, help="also write the figures as JSON here")
    args = parser.parse_args()
    result = Result("profile_overhead")
    device, model, optimizer, images, labels = training_parts(args)
    folder = Path(tempfile.mkdtemp())
    off = StepProfiler("", folder, device, True, lambda artifact: None)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def block(hooks: bool) -> float:
        def ranged(name: str):
            return nvtx(name, device) if hooks else contextlib.nullcontext()

        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            if hooks:
                off.before_step()
            with ranged("data"):
                x, y = images, labels
            optimizer.zero_grad(set_to_none=True)
            with ranged("forward"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            with ranged("backward"):
                loss.backward()
            with ranged("optimizer"):
                optimizer.step()
            if hooks:
                off.after_step()
        sync()
        return time.perf_counter() - start

    block(True)  # warm-up
    without, with_hooks = [], []
    for _ in range(args.pairs):
        without.append(block(False))
        with_hooks.append(block(True))
    calls = 1_000_000
    start = time.perf_counter()
    for _ in range(calls):
        off.before_step()
        for name in ("data", "forward", "backward", "optimizer"):
            with nvtx(name, device):
                pass
        off.after_step()
    per_step = (time.perf_counter() - start) / calls
    step = statistics.median(without) / args.steps
    paired = sorted(100 * (w - b) / b for b, w in zip(without, with_hooks, strict=True))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}); model {args.model}, batch {args.batch}, "
          f"{args.steps} steps per block, {args.pairs} blocks each way, interleaved")  # fmt: skip
    for label, times in (("without hooks", without), ("with hooks   ", with_hooks)):
        print(f"block {label}: median {statistics.median(times):.4f} s "
              f"(min {min(times):.4f}, max {max(times):.4f})")  # fmt: skip
    print(f"paired difference: median {statistics.median(paired):+.2f}% "
          f"(range {paired[0]:+.2f}% .. {paired[-1]:+.2f}%)")  # fmt: skip
    print(f"the hooks alone: {1e6 * per_step:.2f} us per step = "
          f"{100 * per_step / step:.4f}% of a {1e3 * step:.1f} ms step")  # fmt: skip
    low, high = stats.interval(paired)
    if low is not None and high is not None:
        print(f"paired difference, 95% interval (bootstrap over the pairs): {low:+.2f}% .. "
              f"{high:+.2f}%")  # fmt: skip
    result.conditions.update(device=f"{device} ({name})", model=args.model, batch=args.batch,
                             steps=args.steps, pairs=args.pairs,
                             threads=torch.get_num_threads())  # fmt: skip
    result.figures = {
        "without_s": spread(without), "with_s": spread(with_hooks),
        "paired_pct": {**spread(paired), "ci95_low": low, "ci95_high": high},
        "hooks_us_per_step": 1e6 * per_step, "step_ms": 1e3 * step,
        "hooks_pct_of_step": 100 * per_step / step,
    }  # fmt: skip
    result.write(args.out)


if __name__ == "__main__":
    main()
