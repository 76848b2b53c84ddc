"""Running jobs as a launcher does: in subprocesses, reading what they leave in the job folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from jobs import checkpoint
from records.outbox import read_outbox

TINY = ["--model", "resnest_tiny_basic", "--dataset", "synthetic", "--batch-size", "32"]


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    return env


def job_cmd(out: Path, *args: str, stage: str = "train") -> list[str]:
    return [sys.executable, "-m", f"jobs.{stage}", "--out", str(out), *args]


def run_job(out: Path, *args: str, stage: str = "train", timeout: int = 600):
    return subprocess.run(
        job_cmd(out, *args, stage=stage),
        capture_output=True,
        text=True,
        env=job_env(),
        timeout=timeout,
    )


def records(out: Path, kind: str | None = None) -> list[dict]:
    rows = read_outbox(out / "outbox.jsonl")
    return [r for r in rows if kind is None or r["kind"] == kind]


def events(out: Path, name: str) -> list[dict]:
    return [r for r in records(out, "event") if r["event"] == name]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    path = checkpoint.list_checkpoints(out / "checkpoints")[-1]
    return checkpoint.load(path)["model"]


def write_spec(path: Path, **fields) -> Path:
    path.write_text(json.dumps(fields))
    return path


def tiny_sweep(**settings) -> dict:
    """The sweep section of the cluster launcher tests: both tiny variants on two GPU types."""
    return {
        "models": ["resnest_tiny_bottleneck", "resnest_tiny_basic"],
        "datasets": ["synthetic"],
        "gpu_types": ["v100", "a100"],
        "recipe": "fast",
        "epochs": 2,
        "max_steps": 2,
        "overrides": {"batch_size": 32},
        "transfer_overrides": {"batch_size": 32},  # the fast recipe's 1,024 is minutes on a CPU
        **settings,
    }


def write_cluster(tmp_path: Path, name: str, launcher: dict, gpu_types: dict, sweep: dict) -> Path:
    """A cluster.yaml in ``tmp_path`` whose results (and SQLite store) go under it."""
    import yaml

    data = {
        "name": name,
        "results_dir": str(tmp_path / "results"),
        "launcher": launcher,
        "gpu_types": gpu_types,
        "sweep": sweep,
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def store_of(tmp_path: Path):
    from records.store import Store

    return Store(f"sqlite:///{tmp_path / 'results' / 'results.db'}")


def check_winner_deployed(store, sweep: str, ranked_from: str = "store") -> dict:
    """Check that the sweep's one export job deployed the best of its training runs, as worked
    out here from the store's results (best final accuracy, the first of equals in the sweep's
    order), ranked from the store, or from the candidates' outboxes (``ranked_from``: a job
    on another host than a SQLite store's never opens it); return that run's row."""
    rows = store.jobs(sweep)
    trains = [r for r in rows if r["stage"] == "train"]
    (export,) = [r for r in rows if r["stage"] == "export"]
    order = export["depends_on"]
    assert len(order) == len(trains) > 1 and set(order) == {r["id"] for r in trains}
    accuracies = store.final_accuracies(order)
    winner = next(r for r in trains if r["id"] == max(order, key=accuracies.get))
    (start,) = records(Path(export["job_dir"]), "start")
    assert start["spec"]["source"] == winner["job_dir"]
    assert [(c["job_id"], c["test_acc"], c["from"]) for c in start["winner_of"]] == [
        (job_id, accuracies[job_id], ranked_from) for job_id in order
    ]
    # Planned as "winner", the deployment jobs now carry the winner's model.
    assert {r["model"] for r in rows if r["stage"] in ("export", "infer")} == {winner["model"]}
    return winner


def second_python(folder: Path) -> Path:
    """A second virtual environment's interpreter, as a site's other Python would be: its
    own ``sys.executable``, seeing this environment's packages through a ``.pth`` file."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    assert ours in site.getsitepackages() or ours in sys.path
    Path(purelib, "resnest_bench_parent.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n"
    )
    return python
