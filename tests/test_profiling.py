"""A profiler on demand: ``--set profile=FIRST:LAST`` traces those training steps of a real
job (on this CPU) as a Chrome trace, kept as an artifact of the job with its bytes and
sha256; off, nothing is written; a malformed window is refused when the sweep is planned."""

import hashlib
import json
from pathlib import Path

import pytest

from .jobtools import TINY, cli, records, run_job, tiny_sweep, write_cluster


def _trace(out: Path, *args: str) -> list[dict]:
    result = run_job(out, *TINY, "--epochs", "2", "--max-steps", "2", *args)
    assert result.returncode == 0, result.stderr
    return [r for r in records(out, "artifact") if r.get("artifact") == "profile"]


@pytest.mark.parametrize(("window", "steps"), [("1:3", 2), ("3:100", 1)])
def test_the_steps_asked_for_are_traced_and_kept_as_an_artifact(tmp_path, window, steps):
    """Steps count from the attempt's first, across epochs (2 epochs of 2 steps here): 1:3 is
    the last step of the first epoch and the first of the second; a window past the end of
    training keeps the steps it saw."""
    (artifact,) = _trace(tmp_path / "job", "--set", f"profile={window}")
    path = Path(artifact["path"])
    first, last = window.split(":")
    assert path == (tmp_path / "job" / "profile" / f"trace-steps-{first}-{last}.json").resolve()
    data = path.read_bytes()
    assert artifact["bytes"] == len(data)
    assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
    events = json.loads(data)["traceEvents"]
    # the optimizer's step runs once per training step traced
    stepped = [e for e in events if e.get("name", "").startswith("Optimizer.step#SGD.step")]
    assert len(stepped) == steps


def test_off_nothing_is_traced(tmp_path):
    assert _trace(tmp_path / "job") == []
    assert not (tmp_path / "job" / "profile").exists()


@pytest.mark.parametrize("window", ["5:2", "3", "a:b", "-1:4"])
def test_a_malformed_window_is_one_line_at_plan_time(tmp_path, window):
    path = write_cluster(
        tmp_path, "prof", {"kind": "local"}, {"v100": {"local": "cpu"}},
        tiny_sweep(gpu_types=["v100"], overrides={"batch_size": 32, "profile": window}),
    )  # fmt: skip
    result = cli("submit", str(path), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "profile" in result.stderr
    assert "FIRST:LAST" in result.stderr
