"""The tests' one helper module (no test module imports another): running jobs as a launcher
does, in subprocesses, and reading what they leave in the job folder; the sweeps and
cluster.yaml files the tests write; the command line run as a user runs it, or in-process;
and the clusters' settings (the two-node SLURM, the single-node SLURM's slurm.conf)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch
import yaml

from harness import config as cluster_config
from harness.cli import main
from harness.planner import plan
from jobs import checkpoint
from records.outbox import read_outbox

TINY = ["--model", "resnest_tiny_basic", "--dataset", "synthetic", "--batch-size", "32"]


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    return env


def job_cmd(out: Path, *args: str, stage: str = "train") -> list[str]:
    return [sys.executable, "-m", f"jobs.{stage}", "--out", str(out), *args]


def run_job(out: Path, *args: str, stage: str = "train", timeout: int = 600, env=None):
    return subprocess.run(
        job_cmd(out, *args, stage=stage),
        capture_output=True,
        text=True,
        env={**job_env(), **(env or {})},
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


# -- the quickstart's sweep on the local launcher --

EXE = Path(sysconfig.get_path("scripts")) / "resnest-bench"


def sweep_yaml(tmp_path: Path, **sweep) -> Path:
    data = {
        "name": "local-test",
        "results_dir": str(tmp_path / "results"),
        "launcher": {"kind": "local", "local": {"max_parallel": 2}},
        "gpu_types": {"cpu-a": {"local": "cpu"}, "cpu-b": {"local": "cpu"}},
        "sweep": {
            "models": ["resnest_tiny_basic", "resnest_tiny_bottleneck"],
            "datasets": ["synthetic"],
            "transfer_to": ["synthetic"],
            "gpu_types": ["cpu-a", "cpu-b"],
            "stages": ["train", "transfer"],
            "epochs": 2,
            "transfer_epochs": 1,
            "max_steps": 2,
            "overrides": {"batch_size": 32},
            **sweep,
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def doomed_training_job(tmp_path: Path, path: Path):
    """The cpu-b training job of the sweep, made to fail when it saves (a file where its
    checkpoint folder must go), with the transfer job that waits on it and its folder."""
    jobs = plan(cluster_config.load(path))
    doomed = next(j for j in jobs if j.stage == "train" and j.gpu_type == "cpu-b")
    dependant = next(j for j in jobs if doomed.id in j.depends_on)
    folder = tmp_path / "results" / "local-test" / "jobs" / doomed.id
    folder.mkdir(parents=True)
    (folder / "checkpoints").write_text("not a folder")
    return doomed, dependant, folder


# -- the study's cluster.yaml, for the planner --


def base(tmp_path: Path) -> dict:
    (tmp_path / "data").mkdir(exist_ok=True)
    return {
        "name": "t",
        "results_dir": str(tmp_path / "results"),
        "gpu_types": {
            "v100": {"partition": "gpu", "gres": "gpu:v100"},
            "a100": {"partition": "gpu", "gres": "gpu:a100"},
        },
        "sweep": {
            "models": ["resnest50_bottleneck", "resnest50_basic"],
            "datasets": ["cifar10"],
            "transfer_to": ["cifar100"],
            "gpu_types": ["v100", "a100"],
            "seeds": [0, 1],
            "stages": ["train", "transfer", "export", "infer"],
            "data_dir": str(tmp_path / "data"),
            "epochs": 3,
        },
    }


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# -- the command line in-process --


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


# -- the two-node SLURM (scripts/slurm-nodes.sh) --

CONF = "/etc/slurm-nodes/slurm.conf"


def nodes_env() -> dict[str, str]:
    """The submitting environment for the two-node cluster; jobs inherit it. No loopback
    rendezvous here: the ranks find each other by the first node's name."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")
    }
    # One OpenMP thread per rank, as the one-process run below has: the same sums in the
    # same order.
    env.update(SLURM_CONF=CONF, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_cli(tmp_path: Path, *args: str, env: dict | None = None, timeout: int = 600):
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, cwd=tmp_path,
        env=env or nodes_env(), timeout=timeout,
    )  # fmt: skip


def checkpointed(folder: Path) -> bool:
    """Whether the job has recorded a checkpoint (the first epoch's follows its epoch
    record by a moment: a node lost between the two resumes from the start)."""
    return (folder / "outbox.jsonl").is_file() and any(
        e["event"] == "checkpoint" for e in records(folder, "event")
    )


STATE = Path("/var/lib/resnest-bench-slurm-nodes")


def assert_same_weights_as_one_process(folder: Path, tmp_path: Path, epochs: int, steps: int):
    """The final weights of a two-rank job equal those of one process here with the same
    global batch of 32 in two strided micro-batches of 16 (BN running statistics are rank
    0's alone in DDP, so they are not compared)."""
    single = tmp_path / "single"
    cmd = job_cmd(single, *TINY, "--epochs", str(epochs), "--max-steps", str(steps),
                  "--set", "accum_steps=2")  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**job_env(), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    a, b = final_weights(folder), final_weights(single)
    params = [
        k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert len(params) > 50
    assert [k for k in params if not torch.equal(a[k], b[k])] == []


def processes_on(node: str, fragment: str) -> list[int]:
    """PIDs (as this machine sees them) of the processes of ``node`` whose command line holds
    ``fragment``: those in the node's process namespace."""
    holder = (STATE / "run" / f"holder-{node}.pid").read_text().strip()
    namespace = os.readlink(f"/proc/{holder}/ns/pid")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == holder:
            continue
        try:
            same = os.readlink(entry / "ns" / "pid") == namespace
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if same and fragment in command:
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


# -- the single-node SLURM's slurm.conf --


def restart_slurmctld() -> None:
    """slurmctld started again on its slurm.conf (its jobs kept in its state folder): SLURM
    22.05's ``scontrol reconfigure`` shows a new MaxArraySize but keeps checking arrays
    against the one it started with."""
    pid_file = Path(os.environ.get("SLURM_LOCAL_DIR", "/var/lib/resnest-bench-slurm"))
    pid = int((pid_file / "run" / "slurmctld.pid").read_text())
    subprocess.run(["scontrol", "shutdown", "slurmctld"], check=True, timeout=60)

    def gone() -> bool:  # exited (a zombie, if this process started it, has too)
        try:
            return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True

    wait_for(gone, 60, "slurmctld to stop")
    subprocess.run(["slurmctld"], check=True, timeout=60)
    wait_for(lambda: subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0,
               60, "slurmctld to answer")  # fmt: skip


@contextlib.contextmanager
def slurm_conf_changed():
    """Held while a test changes the cluster's slurm.conf: one such test at a time (the
    tests run in two processes), each restoring what it found."""
    import fcntl

    with open("/tmp/resnest-bench-slurm-conf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def max_array_size(size: int):
    """The cluster's MaxArraySize set to ``size`` for the block (the other tests' arrays
    have at most two tasks, so they are not affected)."""
    with slurm_conf_changed():
        yield from _with_max_array_size(size)


def _with_max_array_size(size: int):
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    before = conf.read_text()
    conf.write_text(before + f"MaxArraySize={size}\n")

    def shown() -> str:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=30).stdout  # fmt: skip
        return next((line.split("=")[1].strip() for line in out.splitlines()
                     if line.startswith("MaxArraySize")), "")  # fmt: skip

    try:
        restart_slurmctld()
        wait_for(lambda: shown() == str(size), 30, f"MaxArraySize={size}")
        yield
    finally:
        conf.write_text(before)
        restart_slurmctld()
        wait_for(lambda: shown() not in ("", str(size)), 30, "MaxArraySize back")


# -- the command line, as a user runs it --

# The jobs a command starts keep DDP on loopback (SLURM's sbatch --export=ALL passes it on).
LOOPBACK = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def cli(
    *args: str, cwd: Path, env: dict | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    """``resnest-bench ARGS`` run in ``cwd``, its environment this one's with ``env`` over it."""
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
        env={**os.environ, **LOOPBACK, **(env or {})},
    )  # fmt: skip
