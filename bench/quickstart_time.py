"""The quickstart as a new user runs it: ``resnest-bench submit examples/quickstart.yaml``,
timed from the command's start to its exit (it ends by printing the comparison table).

Each run is in a fresh folder of its own (the sweep's ``results/`` is made there), so none
reuses another's store or job folders; the runs are repeated, and the figure is their median
with its range.

    python bench/quickstart_time.py [--repeats 3] [--out RESULT.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_file import Result, out_file, spread  # noqa: E402

COMMAND = "from harness.cli import main; raise SystemExit(main())"


def one_run(folder: Path) -> float:
    config = folder / "quickstart.yaml"
    shutil.copy(ROOT / "examples" / "quickstart.yaml", config)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", COMMAND, "submit", str(config)], cwd=folder,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    took = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        sys.exit(f"quickstart_time: the quickstart failed: {last}")
    if "resnest50_basic" not in done.stdout:
        sys.exit("quickstart_time: the quickstart printed no comparison table")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--out", type=out_file, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    result = Result("quickstart_time")
    times = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="resnest-bench-quickstart-") as tmp:
            times.append(one_run(Path(tmp)))
        print(f"run {i + 1}: {times[-1]:.1f} s", flush=True)
    result.figures["seconds"] = spread(times)
    figure = result.figures["seconds"]
    print(f"quickstart: median {figure['median']:.1f} s (range {figure['low']:.1f}-"
          f"{figure['high']:.1f}) over {len(times)} runs")  # fmt: skip
    result.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
