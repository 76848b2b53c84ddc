"""The cost of the telemetry sampler: the same training loop with and without it.

Runs blocks of training steps (forward, backward, SGD step on a fixed batch, the device
synchronised at the end of each block), alternating a block without the sampler and a block
with it running at the job's rate (1 Hz by default), so that drift of the machine's speed
hits both alike. Reports the median block time of each, the overhead in percent (target: below
0.5% of epoch time), and the sampler's own time per sample. NVML on a GPU; on a machine
without one, the CPU fallback (psutil), which is what a job there would run.

    python bench/telemetry_overhead.py [--model resnest50_bottleneck] [--batch 128]
        [--steps 20] [--pairs 5] [--interval 1.0] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import resnest
from jobs.device import resolve
from jobs.nvml import _clock_events
from jobs.rapl import ROOT, Rapl
from jobs.telemetry import RAPL_ENV, Sampler, open_source


def nvml_call_costs(source, repeats: int = 20) -> dict[str, float]:
    """Seconds per call of each NVML query a sample makes, on the first GPU."""
    nvml, handle = source.nvml, source.handles[0]
    calls = {
        "nvmlDeviceGetUtilizationRates": lambda: nvml.nvmlDeviceGetUtilizationRates(handle),
        "nvmlDeviceGetMemoryInfo": lambda: nvml.nvmlDeviceGetMemoryInfo(handle),
        "nvmlDeviceGetPowerUsage": lambda: nvml.nvmlDeviceGetPowerUsage(handle),
        "nvmlDeviceGetTemperature": lambda: nvml.nvmlDeviceGetTemperature(
            handle, nvml.NVML_TEMPERATURE_GPU
        ),
        "nvmlDeviceGetClockInfo (SM)": lambda: nvml.nvmlDeviceGetClockInfo(
            handle, nvml.NVML_CLOCK_SM
        ),
        "nvmlDeviceGetClockInfo (memory)": lambda: nvml.nvmlDeviceGetClockInfo(
            handle, nvml.NVML_CLOCK_MEM
        ),
        "nvmlDeviceGetTotalEnergyConsumption": lambda: source._energy(handle),
        "clock-event (throttle) reasons": lambda: _clock_events(nvml, handle),
        "XID events (a wait of 0 ms)": source.xids,
    }
    return {name: _seconds_per_call(call, repeats) for name, call in calls.items()}


def _seconds_per_call(call, repeats: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def block_parser(description: str, model: str, batch: int) -> argparse.ArgumentParser:
    """The options of a bench that times blocks of training steps two ways, interleaved."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=model)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--pairs", type=int, default=9, help="blocks with and without, each")
    parser.add_argument("--device", default="auto")
    return parser


def training_parts(args: argparse.Namespace) -> tuple:
    """The device, the network, its SGD optimizer and a fixed CIFAR-sized batch."""
    device = resolve(args.device)
    model = resnest.create(args.model, num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    return device, model, optimizer, images, labels


def main() -> None:
    parser = block_parser(__doc__.splitlines()[0], "resnest50_bottleneck", 128)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    args = parser.parse_args()
    device, model, optimizer, images, labels = training_parts(args)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def block() -> float:
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
        sync()
        return time.perf_counter() - start

    uuids = []
    if device.type == "cuda":
        uuids = [str(torch.cuda.get_device_properties(device).uuid)]
    source, note = open_source(device.type, uuids)
    if source is None:
        raise SystemExit(f"no telemetry source: {note}")
    block()  # warm-up
    without, with_sampler = [], []
    sampler = None
    for _ in range(args.pairs):
        without.append(block())
        sampler = Sampler(source, args.interval).start()
        with_sampler.append(block())
        sampler.halt()
    # The sampler's own cost: time per sample, taken back to back.
    probe = Sampler(source, args.interval)
    start = time.perf_counter()
    for _ in range(50):
        probe.take()  # a periodic sample (the energy counter is read at epoch boundaries)
    per_sample = (time.perf_counter() - start) / 50
    call_costs = nvml_call_costs(source) if source.kind == "nvml" else {}
    rapl = Rapl(os.environ.get(RAPL_ENV) or ROOT)
    if rapl.zones:  # read twice an epoch, at its boundaries
        call_costs["RAPL counters (all zones)"] = _seconds_per_call(rapl.read)
    source.close()

    base = statistics.median(without)
    paired = sorted(100 * (w - b) / b for b, w in zip(without, with_sampler, strict=True))
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    samples = len(sampler.samples) if sampler else 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name})")
    print(f"telemetry source: {source.kind}" + (f" ({note})" if note else ""))
    print(
        f"model {args.model}, batch {args.batch}, {args.steps} steps per block, "
        f"{args.pairs} blocks each way, sampling every {args.interval:g} s"
    )
    for label, times in (("without sampler", without), ("with sampler   ", with_sampler)):
        print(
            f"block {label}: median {statistics.median(times):.3f} s "
            f"(min {min(times):.3f}, max {max(times):.3f})"
        )
    print(f"samples in the last block with the sampler: {samples}")
    print(
        f"overhead, paired blocks: median {statistics.median(paired):+.2f}% "
        f"(quartiles {quartiles[0]:+.2f}% .. {quartiles[2]:+.2f}%); noise, blocks without the "
        f"sampler: CV {100 * statistics.pstdev(without) / base:.2f}%  (target < 0.5%)"
    )
    print(
        f"sampler cost: {1e3 * per_sample:.3f} ms per sample = "
        f"{100 * per_sample / args.interval:.3f}% of one core at {1 / args.interval:g} Hz"
    )
    for call, seconds in call_costs.items():
        print(f"  {call:<40} {1e3 * seconds:8.3f} ms")
    print(f"CPU energy: {rapl.method}")


if __name__ == "__main__":
    main()
