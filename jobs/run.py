"""Run any job from its spec file: ``python -m jobs.run --spec spec.json``.

Launchers write one spec per job (``harness/sweep.py``) and start this; it hands the spec to
the job of its stage: train and transfer (``jobs.train``), export (``jobs.export``), infer
(``jobs.infer``). Exit codes as the jobs define them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.options import to_argv
from jobs.spec import EXIT_USER_ERROR


def _options(spec: dict[str, Any]) -> list[str]:
    """Command-line options of an export or infer job from a sweep's spec."""
    sources = spec["init_from"]  # a winner's export has several candidates
    args = ["--from", *([sources] if isinstance(sources, str) else sources)]
    args += ["--out", spec["out_dir"]]
    args += ["--dataset", spec["dataset"], "--data-dir", spec.get("data_dir", "data")]
    args += ["--job-id", spec.get("job_id", ""), "--attempt", str(spec.get("attempt", 0))]
    if spec.get("gpu_type"):
        args += ["--gpu-type", spec["gpu_type"]]
    if spec["stage"] == "infer" and spec.get("device") not in (None, "auto"):
        args += ["--device", spec["device"]]
    # A sweep's export_options / infer_options travel as the job's overrides.
    return args + to_argv(spec.get("overrides") or {})


def execute_spec(path: str | Path, attempt_offset: int = 0) -> tuple[int, int | None]:
    """Run the job of a spec file; return its exit code and the signal that stopped it."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        print(f"resnest-bench: error: {path}: cannot read the spec: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR, None
    spec["attempt"] = spec.get("attempt", 0) + attempt_offset
    stage = spec.get("stage", "train")
    if stage in ("train", "transfer"):
        from jobs.spec import SpecError, TrainSpec
        from jobs.train import execute

        try:
            train_spec = TrainSpec.from_dict(spec)
        except SpecError as exc:
            print(f"resnest-bench: error: {path}: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR, None
        return execute(train_spec)
    if stage == "export":
        from jobs import export

        return export.main(_options(spec)), None
    if stage == "infer":
        from jobs import infer

        return infer.main(_options(spec)), None
    print(f"resnest-bench: error: {path}: unknown stage {stage!r}", file=sys.stderr)
    return EXIT_USER_ERROR, None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the job's spec file (JSON)")
    args = parser.parse_args(argv)
    return execute_spec(args.spec)[0]


if __name__ == "__main__":
    sys.exit(main())
