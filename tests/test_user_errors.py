"""What a user can get wrong, driven through the installed command line: every subcommand
against each broken input, every field of the shipped cluster.yaml and of the quickstart
mutated, a typo in cancel, a read before anything was written. Each ends in one line that
names the thing, exit 2, and nothing changed on disk."""

import contextlib
import copy
import hashlib
import io
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from records.store import SCHEMA_VERSION, Store

from .jobtools import cli, write_cluster

ROOT = Path(__file__).parents[1]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("resnest-bench: error: ")
    return result.stderr.strip()


def digest(path: Path) -> str:
    if path.is_dir():
        return "folder"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def local_site(tmp_path: Path, name: str) -> Path:
    """A cluster.yaml of one tiny network on this machine's CPU, its store under tmp_path."""
    return write_cluster(
        tmp_path, name, {"kind": "local"}, {"cpu": {"local": "cpu"}},
        {"models": ["resnest_tiny_basic"], "datasets": ["synthetic"], "gpu_types": ["cpu"]},
    )  # fmt: skip


def planned(path: Path) -> tuple[Store, list[str]]:
    """The sweep of ``path`` planned into its store, as submit records it; its job ids."""
    from harness import config as cluster_config
    from harness.sweep import record_plan, store_for

    config = cluster_config.load(path)
    store = store_for(config)
    return store, sorted(record_plan(config, store))


# -- every subcommand against each broken input ------------------------------------------------


def _garbage(db: Path) -> None:
    db.write_bytes(b"this is not a database\n" * 100)


def _folder(db: Path) -> None:
    db.mkdir()


def _foreign(db: Path) -> None:  # a SQLite file of something else
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE notes (text TEXT)")


def _newer(db: Path) -> None:  # written by a newer resnest-bench
    Store(f"sqlite:///{db}").engine.dispose()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))


BROKEN_STORES = {
    "garbage": (_garbage, "file is not a database"),
    "a folder": (_folder, "is a folder, not a SQLite file"),
    "another program's database": (_foreign, "holds no resnest-bench results"),
    "a newer schema": (_newer, "upgrade resnest-bench"),
}
COMMANDS = [
    ["status"],
    ["table"],
    ["table", "--layout", "study", "--format", "md"],
    ["table", "--deploy"],
    ["report"],
    ["logs", "abc123"],
    ["cancel", "--all"],
    ["cancel", "abc123"],
    ["rerun", "--failed"],
    ["ingest", "."],
]


@pytest.fixture
def site(tmp_path):
    path = local_site(tmp_path, "broken")
    return tmp_path, path, tmp_path / "results" / "results.db"


@pytest.mark.parametrize("broken", list(BROKEN_STORES))
def test_every_subcommand_on_a_broken_store_is_one_line(site, broken):
    tmp_path, path, db = site
    db.parent.mkdir(parents=True)
    make, says = BROKEN_STORES[broken]
    make(db)
    before = digest(db)
    for command in [*COMMANDS, ["submit", str(path), "-q"]]:
        args = command if command[0] == "submit" else [*command, "-c", str(path)]
        message = one_line_error(cli(*args, cwd=tmp_path))
        assert says in message, (command, message)
        assert str(db) in message or "results store" in message, message
        assert digest(db) == before, command  # nothing lost, nothing written


def test_every_subcommand_on_an_unreachable_store_is_one_line(site):
    tmp_path, _, _ = site
    url = "postgresql+psycopg://bench:secret@127.0.0.1:9/none"  # nothing listens there
    for command in COMMANDS:
        message = one_line_error(cli(*command, "--store", url, cwd=tmp_path))
        assert "results store postgresql+psycopg://bench:***@127.0.0.1:9/none" in message
        assert "secret" not in message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("name: [unclosed\n", ":2:1: YAML syntax error"),
        ("", "expected a mapping of settings at the top level"),
        ("name: x\ngpu_types: {cpu: {local: cpu}}\nsweep: {models: [resnest_tiny_basic], "
         "datasets: [synthetic], gpu_types: [cpu]}\nlauncher: {kind: local, locl: {}}\n",
         "launcher.locl: unknown key"),
    ],
    ids=["syntax", "empty", "typo"],
)  # fmt: skip
def test_every_subcommand_on_a_broken_cluster_yaml_is_one_line(tmp_path, text, says):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    for command in [*COMMANDS, ["submit", str(path)], ["submit", str(path), "--dry-run"]]:
        args = command if command[0] == "submit" else [*command, "-c", str(path)]
        message = one_line_error(cli(*args, cwd=tmp_path))
        assert message.startswith(f"resnest-bench: error: {path}") and says in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]


def test_a_missing_cluster_yaml_and_a_config_that_is_a_folder(tmp_path):
    for command in COMMANDS:
        message = one_line_error(cli(*command, "-c", "nope.yaml", cwd=tmp_path))
        assert "nope.yaml: no such file" in message
    (tmp_path / "dir.yaml").mkdir()
    message = one_line_error(cli("submit", "dir.yaml", "--dry-run", cwd=tmp_path))
    assert message.startswith("resnest-bench: error: dir.yaml: cannot read")


def test_outboxes_torn_damaged_and_unreadable(tmp_path):
    from records.outbox import OutboxWriter

    job = tmp_path / "runs" / "job-a"
    reporter = OutboxWriter(job, "job-a")
    reporter.report("start", {"spec": {"stage": "train", "model": "resnest_tiny_basic",
                                       "dataset": "synthetic"}})  # fmt: skip
    reporter.report("epoch", {"epoch": 1, "epoch_time": 1.0, "images_per_sec": 10.0})
    outbox = job / "outbox.jsonl"
    url = f"sqlite:///{tmp_path / 'store.db'}"
    # A torn last line (a write cut short by a kill): skipped, the rest ingested.
    with open(outbox, "a") as f:
        f.write('{"kind": "epoch", "epo')
    result = cli("ingest", str(tmp_path / "runs"), "--store", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ingested 2 records from 1 outbox file(s)" in result.stdout
    # A damaged line inside: named with its line number; nothing of that file is written.
    lines = outbox.read_text().splitlines(keepends=True)
    outbox.write_text(lines[0] + "}{ not json\n" + lines[1])
    store_before = digest(tmp_path / "store.db")
    message = one_line_error(cli("ingest", str(outbox), "--store", url, cwd=tmp_path))
    assert f"{outbox}:2: not an outbox record" in message
    assert digest(tmp_path / "store.db") == store_before
    # Not text at all.
    outbox.write_bytes(b"\xff\xfe\x00garbage\n")
    message = one_line_error(cli("ingest", str(outbox), "--store", url, cwd=tmp_path))
    assert "not an outbox (not UTF-8 text)" in message
    # A path that is not there.
    message = one_line_error(cli("ingest", "gone/", "--store", url, cwd=tmp_path))
    assert "gone: no such file or folder" in message


def test_a_reference_gpu_type_without_runs_and_a_negative_timeout(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.add_sweep("ref", {})
    url = f"sqlite:///{tmp_path / 'results.db'}"
    message = one_line_error(
        cli("table", "ref", "--store", url, "--reference", "v10", cwd=tmp_path)
    )
    assert "--reference 'v10': no finished run on that GPU type in sweep 'ref'" in message
    result = cli("submit", "x.yaml", "--wait", "--timeout", "-5", cwd=tmp_path)
    assert result.returncode == 2 and "expected a number of seconds above 0, got -5" in (
        result.stderr
    )


def test_a_job_folder_that_is_a_file_and_a_rerun_with_nothing_to_do(tmp_path):
    (tmp_path / "taken").write_text("a file where the job folder should go")
    for stage in ("train", "transfer"):
        source = ["--from", "x"] if stage == "transfer" else []
        result = cli(stage, "--model", "resnest_tiny_basic", "--dataset", "synthetic", *source,
                     "--out", "taken", cwd=tmp_path)  # fmt: skip
        message = one_line_error(result)
        assert "taken: cannot be the job's folder" in message
    path = local_site(tmp_path, "done")
    store, ids = planned(path)
    for job_id in ids:
        store.set_state(job_id, "succeeded")
    result = cli("rerun", "--failed", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "nothing to rerun: no failed or not-run job in sweep 'done'"


SEEN_IN_THE_QUEUE = {
    "batch size": ({"overrides": {"batch_size": -5}},
                   "sweep.overrides: batch_size: expected a number at least 1, got -5"),
    "device": ({}, "gpu_types.cpu.local: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    "runtime": ({"infer_options": {"runtimes": ["tensorflow"]}},
                "sweep.infer_options.runtimes: invalid choice: 'tensorflow'"),
    "batches": ({"infer_options": {"batches": [0]}},
                "sweep.infer_options.batches: expected a whole number at least 1, got 0"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SEEN_IN_THE_QUEUE))
def test_values_that_failed_in_the_queue_stop_the_plan(tmp_path, case):
    settings, says = SEEN_IN_THE_QUEUE[case]
    path = write_cluster(
        tmp_path, "queue", {"kind": "local"},
        {"cpu": {"local": "tpu" if case == "device" else "cpu"}},
        {"models": ["resnest_tiny_basic"], "datasets": ["synthetic"], "gpu_types": ["cpu"],
         "stages": ["train", "export", "infer"], **settings},
    )  # fmt: skip
    for submit in (["submit", str(path), "--dry-run"], ["submit", str(path), "-q"]):
        message = one_line_error(cli(*submit, cwd=tmp_path))
        assert message.startswith(f"resnest-bench: error: {path}: {says}"), message
    assert not (tmp_path / "results").exists()  # nothing planned, nothing stored


def test_the_plan_and_the_job_refuse_an_option_in_the_same_words(tmp_path):
    """One source of truth: the inference job's own parser says what the plan said."""
    import sys

    job = subprocess.run(
        [sys.executable, "-m", "jobs.infer", "--from", "x", "--out", str(tmp_path / "o"),
         "--batches", "0"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert job.returncode == 2
    assert "argument --batches: expected a whole number at least 1, got 0" in job.stderr
    assert not (tmp_path / "o").exists()


def test_logs_of_a_job_whose_folder_is_gone(tmp_path):
    path = local_site(tmp_path, "gone")
    store, (job_id,) = planned(path)
    store.set_state(job_id, "failed", reason="exit code 1")
    message = one_line_error(cli("logs", job_id, "-c", str(path), cwd=tmp_path))
    assert f"job {job_id}: its folder" in message and "does not exist" in message
    assert f"resnest-bench rerun {job_id}" in message
    store.set_state(job_id, "pending")  # not started yet: nothing to show, and it says so
    result = cli("logs", job_id, "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.count("(not written yet)") == 2


# -- reads look where the user means, and never create a store ----------------------------------


def test_a_read_never_creates_a_store_and_says_where_it_looked(tmp_path):
    shutil.copy(ROOT / "cluster.yaml", tmp_path / "cluster.yaml")  # the SLURM example
    for command in COMMANDS[:8]:
        message = one_line_error(cli(*command, cwd=tmp_path))
        assert "no results store at" in message and "results/resnest-study/results.db" in message
        assert "the store of cluster.yaml" in message and "give -c" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.yaml"]  # nothing created
    message = one_line_error(cli("status", "--store", f"sqlite:///{tmp_path}/x.db", cwd=tmp_path))
    assert f"no results store at {tmp_path}/x.db" in message
    assert not (tmp_path / "x.db").exists()


def test_a_sweep_the_store_lacks_names_the_store_and_the_sweeps_it_holds(tmp_path):
    path = local_site(tmp_path, "wanted")
    store = Store(f"sqlite:///{tmp_path / 'results' / 'results.db'}")
    store.add_sweep("quickstart", {})
    store.add_sweep("other", {})
    message = one_line_error(cli("status", "-c", str(path), cwd=tmp_path))
    assert f"no sweep 'wanted' in the store of {path}" in message
    assert "it holds: quickstart, other" in message and "results.db" in message


# -- cancel: a typo never cancels a sweep ----------------------------------------------------------


def test_cancel_a_typo_cancels_nothing_and_a_sweep_only_when_asked(tmp_path):
    path = write_cluster(
        tmp_path, "cancel-me", {"kind": "slurm"}, {"v100": {"gres": "gpu:v100"}},
        {"models": ["resnest_tiny_basic", "resnest_tiny_bottleneck"], "datasets": ["synthetic"],
         "gpu_types": ["v100"]},
    )  # fmt: skip
    store, ids = planned(path)
    store.set_state(ids[1], "succeeded")

    def states() -> dict:
        return {r["id"]: r["state"] for r in store.jobs("cancel-me")}

    before = states()
    for typo in (["cancel-me"], ["zzz"], [ids[0][:6], "zzz"]):  # a sweep name is not a job id
        message = one_line_error(cli("cancel", *typo, "-c", str(path), cwd=tmp_path))
        assert "nothing cancelled" in message
        assert states() == before
    message = one_line_error(cli("cancel", "-c", str(path), cwd=tmp_path))
    assert "--sweep NAME" in message and "--all" in message
    assert states() == before

    result = cli("cancel", ids[0][:8], "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"cancelling {ids[0]}  train" in result.stdout and "cancelled 1 job(s)" in result.stdout
    assert states() == {**before, ids[0]: "cancelled"}

    store.set_state(ids[0], "pending")
    result = cli("cancel", "--sweep", "cancel-me", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("cancelling ") == 1  # the succeeded job is left as it is
    assert f"{ids[1]}  already succeeded" in result.stderr
    assert states() == {ids[0]: "cancelled", ids[1]: "succeeded"}
    result = cli("cancel", "--all", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0 and "nothing to cancel" in result.stdout


# -- every field of the shipped files, mutated ---------------------------------------------------

# Names of the site's own things (partitions, accounts, folders...): any text is a value the
# file cannot check; the cluster is asked about them at submission.
FREE_TEXT = {
    "name", "results_dir", "data_dir", "partition", "gres", "constraint", "account", "qos",
    "gpu_name", "ray_resource", "ray_accelerator",
}  # fmt: skip


def leaves(node, path=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list) and node:
        for i, value in enumerate(node):
            yield from leaves(value, (*path, i))
    else:
        yield path, node


def mutations(value, key):
    yield "wrong type", {"a": 1} if not isinstance(value, dict) else "text"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield "out of range", -5
    if isinstance(value, bool) or (isinstance(value, str) and key not in FREE_TEXT):
        yield "unknown value", "no-such-value"


def set_at(data, path, value):
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def field_cases():
    for name in ("cluster.yaml", "examples/quickstart.yaml"):
        data = yaml.safe_load((ROOT / name).read_text())
        for path, value in leaves(data):
            key = next((p for p in reversed(path) if isinstance(p, str)), "")
            for kind, bad in mutations(value, key):
                yield pytest.param(name, path, bad, id=f"{name}:{'.'.join(map(str, path))}:{kind}")


@pytest.mark.parametrize(("name", "path", "bad"), list(field_cases()))
def test_a_mutated_field_of_the_shipped_files_is_one_line_naming_it(
    tmp_path, monkeypatch, name, path, bad
):
    from harness.cli import main

    data = yaml.safe_load((ROOT / name).read_text())
    data = copy.deepcopy(data)
    set_at(data, path, bad)
    (tmp_path / "data").mkdir()
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["submit", str(config), "--dry-run"])
    message = err.getvalue()
    assert code == 2, f"accepted: {path} = {bad!r}"
    assert message.count("\n") == 1 and "Traceback" not in message
    field = ".".join(str(p) for p in path if not isinstance(p, int))
    # The field's own path, or its section's where a value is checked against another one.
    named = field if not isinstance(path[-1], int) else ".".join(map(str, path[:-1]))
    assert message.startswith(f"resnest-bench: error: {config}: "), message
    assert named.split(".")[0] in message and (named in message or field.rsplit(".", 1)[0] in
                                               message), message  # fmt: skip


def test_the_shipped_files_themselves_plan(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("cluster.yaml", "examples/quickstart.yaml"):
        result = cli("submit", str(ROOT / name), "--dry-run", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
