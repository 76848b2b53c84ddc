"""The command line, run as a user runs it: the installed console script in a subprocess."""

import csv
import io
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from harness.cli.status import LIST_ALL_UP_TO

# The console script installed beside this interpreter, as a user of this environment runs it.
EXE = Path(sysconfig.get_path("scripts")) / "resnest-bench"


def run(*args: str) -> subprocess.CompletedProcess:
    assert EXE.exists(), f"{EXE} is missing: install the project (pip install -e .)"
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300)


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from harness.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_ABSENT')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "models" in out.stdout
    assert out.stdout.strip().endswith("TORCH_ABSENT")


def test_help_explains_the_commands():
    result = run("--help")
    assert result.returncode == 0
    assert "models" in result.stdout and "GPU types" in result.stdout
    result = run("models", "--help")
    assert result.returncode == 0 and "--format" in result.stdout


@pytest.fixture(scope="module")
def models_json():
    result = run("models", "--format", "json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_models_reports_the_study_figures(models_json):
    bottleneck = models_json["resnest50_bottleneck"]
    assert bottleneck["params"] == 25_454_730
    assert bottleneck["MFLOPs@32"] == 222.9
    assert bottleneck["block"] == "bottleneck" and bottleneck["stages"] == [3, 4, 6, 3]
    basic = models_json["resnest50_basic"]
    assert (basic["params"], basic["MFLOPs@32"]) == (33_459_082, 303.9)
    assert basic["fp32 MB"] == round(33_459_082 * 4 / 1e6, 1)
    assert basic["MFLOPs@224"] > 40 * basic["MFLOPs@32"]


def test_models_table_and_csv():
    table = run("models")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "block"]
    assert any(line.startswith("resnest50_basic ") and "33,459,082" in line for line in lines)
    result = run("models", "--format", "csv", "--num-classes", "1000")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    official = next(r for r in rows if r["name"] == "resnest50_bottleneck")
    assert official["params"] == "27483240"


def test_bad_arguments_give_one_line_and_exit_2():
    result = run("models", "--num-classes", "zero")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--num-classes: expected a whole number, got 'zero'" in result.stderr
    result = run("models", "--format", "xml")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_train_help_and_bad_input(tmp_path):
    result = run("train", "--help")
    assert result.returncode == 0
    assert "--recipe" in result.stdout and "torchrun" in result.stdout and "75" in result.stdout
    out = tmp_path / "job"
    result = run("train", "--model", "resnest99", "--dataset", "synthetic", "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown model 'resnest99'" in result.stderr
    assert not out.exists()  # a refused job leaves nothing behind
    result = run("train", "--model", "resnest_tiny_basic", "--out", str(out))
    assert result.returncode == 2 and "missing --dataset" in result.stderr


def test_a_command_runs_with_fewer_collections_and_puts_the_collector_back(monkeypatch):
    """The cyclic collector runs less often during a command (``GC_YOUNG``: the first status
    of a large sweep spends a tenth of its time in it otherwise), and is as it was after,
    whether the command succeeded or failed."""
    import gc

    import harness.cli.status
    from harness.cli import GC_YOUNG, main

    before = gc.get_threshold()
    during = []

    def fake_status(args):  # stands in for the command, to see the collector while it runs
        during.append(gc.get_threshold())
        if args.store.endswith("nowhere.db"):
            raise harness.cli.UserError("no such sweep")
        return 0

    monkeypatch.setattr(harness.cli.status, "cmd_status", fake_status)
    assert main(["status", "--store", "sqlite:///here.db"]) == 0
    assert gc.get_threshold() == before
    assert main(["status", "--store", "sqlite:///nowhere.db"]) == 2
    assert gc.get_threshold() == before
    assert during == [(GC_YOUNG, *before[1:])] * 2


@pytest.mark.parametrize("n_jobs", [LIST_ALL_UP_TO, LIST_ALL_UP_TO + 50])
def test_status_of_a_large_sweep_lists_the_jobs_not_succeeded_and_all_with_all(tmp_path, n_jobs):
    """A reader's status of more than ``LIST_ALL_UP_TO`` (100) jobs leaves out the succeeded
    ones and says how many; ``--all`` lists them too; json has every job; 100 jobs are all
    listed."""
    from records.store import Store

    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    store.add_sweep("big", {})
    ids = [f"job{i:04d}" for i in range(n_jobs)]
    store.add_jobs("big", [
        {"id": job_id, "stage": "train", "model": "resnest_tiny_basic", "dataset": "synthetic",
         "gpu_type": "v100", "gpus": 1, "seed": i, "repeat": 0, "spec": {}, "depends_on": []}
        for i, job_id in enumerate(ids)
    ])  # fmt: skip
    states = ["failed" if i % 10 == 3 else "running" if i % 10 == 7 else "succeeded"
              for i in range(n_jobs)]  # fmt: skip
    store.set_states([(j, s, {}) for j, s in zip(ids, states, strict=True)])
    store.engine.dispose()
    succeeded = {j for j, s in zip(ids, states, strict=True) if s == "succeeded"}

    def listed(*extra: str) -> tuple[set[str], str]:
        result = run("status", "--store", url, *extra)
        assert result.returncode == 0, result.stderr
        return set(re.findall(r"\bjob\d{4}\b", result.stdout)), result.stdout

    shown, text = listed()
    if n_jobs > LIST_ALL_UP_TO:
        assert shown == set(ids) - succeeded
        assert f"the {len(succeeded)} succeeded jobs are not listed (--all lists them)" in text
    else:
        assert shown == set(ids) and "not listed" not in text
    assert f"{len(succeeded)} succeeded" in text.splitlines()[0]
    assert listed("--all")[0] == set(ids)
    as_json = run("status", "--store", url, "--format", "json")
    assert {row["id"] for row in json.loads(as_json.stdout)} == set(ids)
