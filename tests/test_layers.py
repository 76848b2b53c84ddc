"""The shape of the code: layers that import only downwards, one spec per stage, one launcher
protocol, one record format, small modules and functions.

Layers, bottom up: ``resnest`` (the model zoo) and ``records`` (the contracts: specs, exit
codes, record kinds, outbox, store, queries), then ``jobs`` (the compute node), then
``harness`` (the login node).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("resnest", "records", "jobs", "harness")
# What each layer may not import, anywhere in its modules (function-level imports included).
FORBIDDEN = {
    "resnest": {"records", "jobs", "harness"},
    "records": {"resnest", "jobs", "harness", "torch"},
    "jobs": {"harness"},
    "harness": {"torch"},
}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_import_runs_up_the_layers():
    breaches = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package, forbidden in FORBIDDEN.items()
        for path in modules(package)
        for name in sorted(imported_packages(path) & forbidden)
    ]
    assert breaches == []
    # The walker sees imports inside functions too (what a lazy import would hide).
    assert "jobs" in imported_packages(ROOT / "harness" / "cli" / "commands.py")
    assert "torch" in imported_packages(ROOT / "jobs" / "train.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# A string that names a module of the project, alone or with ``:attribute``: what a table of
# modules loaded with importlib holds (jobs.run's stages, the launchers, the CLI's commands).
MODULE_STRING = re.compile(r"((?:resnest|records|jobs|harness)(?:\.\w+)+)(?::\w+)?")


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports: at any depth of its code, ``from X import
    Y`` counting as an import of module X.Y where there is one, relative imports resolved,
    and every string naming a module (an importlib load) counting as an import of it."""
    paths = {module_name(path): path for package in PACKAGES for path in modules(package)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()

        def add(target: str, name: str = name, found: set[str] = found) -> None:
            while target and target not in paths:
                target = target.rpartition(".")[0]  # an attribute of a module: the module
            if target and target != name:
                found.add(target)

        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:
                    add(f"{module}.{alias.name}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = MODULE_STRING.fullmatch(node.value)
                if match and match[1] in paths:
                    add(match[1])
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_import_graph_has_no_cycle():
    """No module imports, however lazily, one that imports it back: the dispatch of jobs.run
    and the stages, the launchers and the registry that loads them, the store's rows and the
    summaries, the specs and the job's command lines, and the CLI's table of commands are
    read as the imports they are."""
    graph = import_graph()
    assert cycles(graph) == []
    # The walker sees what importlib loads, and what a function imports:
    assert {"jobs.train", "jobs.export", "jobs.infer"} <= graph["jobs.run"]
    assert "harness.launchers.slurm" in graph["harness.launchers"]
    assert "harness.cli.recovery" in graph["harness.cli.parser"]
    assert "jobs.run" in graph["harness.cli.commands"]  # imported inside a function
    # and finds a cycle where there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_seams_are_typed_and_the_states_named_once():
    """Job rows are records.schema.JobRow, held to the jobs table's columns; the state names
    are one Literal type with their groups beside it, and no module of the harness writes a
    group of them out again; and mypy passes over records/ and harness/ (the README's test
    command runs it too; here with the checkout's cache)."""
    from typing import get_args

    from records import schema

    keys = schema.JobRow.__annotations__  # strings here: the module's annotations are lazy
    optional = {key for key, kind in keys.items() if "NotRequired" in str(kind)}
    assert set(keys) - optional == set(schema.jobs.c.keys())
    assert optional == {"exclude", "spec_text"}  # the harness's own, never stored
    assert get_args(schema.State) == schema.STATES
    groups = [schema.ENDED, schema.UNFINISHED, schema.IN_FLIGHT, schema.NOT_STARTED,
              schema.HELD_BACK, schema.ENDED_BADLY]  # fmt: skip
    assert all(set(group) <= set(schema.STATES) for group in groups)
    state = "|".join(schema.STATES)
    written = re.compile(rf'\(\s*"(?:{state})"(?:\s*,\s*"(?:{state})")+\s*,?\s*\)')
    named = {frozenset(group) for group in groups}
    loose = [
        f"{path.relative_to(ROOT)}: {match[0]}"
        for package in ("harness", "records")
        for path in modules(package)
        if path.name != "schema.py"
        for match in written.finditer(path.read_text())
        if frozenset(re.findall(r'"(\w+)"', match[0])) in named
    ]
    assert loose == []
    checked = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]
    assert "no issues found" in checked.stdout


def test_records_and_harness_load_no_torch_and_no_pandas():
    """Every module of ``records`` and ``harness`` imported in a fresh interpreter: the CLI
    starts on a login node without torch, and the pandas API's cost stays out of it."""
    names = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in ("records", "harness")
        for path in modules(package)
        if path.name != "__main__.py"
    ]
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'pandas', 'numpy', 'resnest', 'jobs'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert len(names) > 20
    assert [m for m in loaded if m.split(".")[0] in ("torch", "pandas", "resnest")] == []


def test_modules_and_functions_stay_small():
    """No module over 450 lines; no function over 80 lines unless its docstring says why
    ("Long because ...")."""
    too_long = []
    for package in PACKAGES:
        for path in modules(package):
            text = path.read_text()
            lines = len(text.splitlines())
            if lines > MAX_MODULE_LINES:
                too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
            for node in ast.walk(ast.parse(text)):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                length = node.end_lineno - node.lineno + 1
                reason = "Long because" in (ast.get_docstring(node) or "")
                if length > MAX_FUNCTION_LINES and not reason:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}")
    assert too_long == []


def test_one_spec_class_per_stage_written_once_and_read_back(tmp_path):
    """The planner builds each job's spec; the store keeps its dict; the launcher writes its
    JSON; the job reads the same spec back. One class per stage, one dispatch for all."""
    from harness import config as cluster_config
    from harness.planner import plan
    from jobs.run import STAGE_MODULES
    from records import spec as specs

    assert set(specs.SPECS) == set(specs.STAGES) == set(STAGE_MODULES)
    assert len({cls for cls in specs.SPECS.values()}) == len(specs.STAGES)
    data = tmp_path / "data"
    data.mkdir()
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "name: layers\n"
        f"results_dir: {tmp_path / 'results'}\n"
        "gpu_types: {cpu: {local: cpu}}\n"
        "sweep:\n"
        "  models: [resnest_tiny_basic]\n"
        "  datasets: [synthetic]\n"
        "  transfer_to: [synthetic]\n"
        "  gpu_types: [cpu]\n"
        "  stages: [train, transfer, export, infer]\n"
        f"  data_dir: {data}\n"
        "  export_options: {no_aoti: true}\n"
        "  infer_options: {runtimes: [eager, onnxruntime], batches: [1, 4]}\n"
    )
    jobs = plan(cluster_config.load(path))
    assert {job.stage for job in jobs} == set(specs.STAGES)
    by_id = {job.id: job for job in jobs}
    for job in jobs:
        spec = job.spec
        assert type(spec) is specs.SPECS[job.stage] and spec.stage == job.stage
        assert spec.job_id == job.id
        file = tmp_path / f"{job.id}.json"
        file.write_text(spec.to_json())
        assert specs.load(file) == spec == specs.from_dict(json.loads(json.dumps(spec.to_dict())))
        parents = [str(Path(by_id[p].spec.out_dir)) for p in job.depends_on]
        if job.stage == "transfer":
            assert spec.init_from == parents[0]
        elif job.stage == "export":
            assert spec.sources == parents and spec.no_aoti is True
        elif job.stage == "infer":
            assert spec.source == parents[0] and spec.batches == [1, 4]


def test_each_job_option_is_a_spec_field_and_its_parsers_are_generated_from_it():
    """A job's command line has an option per option field of its spec (and no other, but
    the training job's --spec and its recipe shortcuts), each with the field's default; and
    nothing else declares an option: no add_argument in the jobs, no option default outside
    records.spec."""
    from records.fields import options_of
    from records.options import RECIPE_SHORTCUTS, parser_for
    from records.spec import SPECS

    for stage, cls in SPECS.items():
        parser = parser_for(stage)
        actions = {a.dest: a for a in parser._actions if a.dest != "help"}
        extra = (
            {"spec", "overrides", *RECIPE_SHORTCUTS} if stage in ("train", "transfer") else set()
        )
        assert set(actions) == set(options_of(cls)) | extra, stage
        instance_defaults = {
            name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
            for name, (_, f) in options_of(cls).items()
        }
        assert {name: actions[name].default for name in options_of(cls)} == instance_defaults
    declaring = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in modules(package)
        if "add_argument(" in path.read_text()
    ]
    assert sorted(declaring) == ["harness/cli/parser.py", "jobs/run.py", "records/options.py"]


def _argparse_says(stage: str, key: str, value) -> str | None:
    """What the job's own parser says of ``--KEY VALUE`` (None: it takes it)."""
    from records.options import parser_for

    class Raising(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(message)

    parser = parser_for(stage)
    parser.__class__ = Raising
    flag = "--" + key.replace("_", "-")
    # one value as --KEY=VALUE: argparse would take a value such as -1e-5 for a flag
    given = [flag, *map(str, value)] if isinstance(value, list) else [f"{flag}={value}"]
    try:
        parser.parse_args(["--from", "x", "--out", "o", *given])
    except ValueError as exc:
        return re.sub(r"^argument --([\w-]+):", lambda m: m[1].replace("-", "_") + ":", str(exc))
    return None


@settings(max_examples=150, deadline=None)
@given(
    stage_key=st.sampled_from([("export", k) for k in ("parity_images", "tolerance", "aoti_device")]
                              + [("infer", k) for k in ("runtimes", "batches", "warmup", "iters",
                                                        "threads", "test_images",
                                                        "calibration_images")]),
    value=st.one_of(st.integers(-3, 300), st.floats(-1, 2, allow_nan=False),
                    st.sampled_from(["x", "cpu", "cuda:1", "tpu", "eager", "caffe2", "1e-3"]),
                    st.lists(st.sampled_from([0, 1, 64, "eager", "tensorflow"]), min_size=1,
                             max_size=3)),
)  # fmt: skip
def test_a_sweep_option_is_refused_at_plan_time_in_the_words_of_the_jobs_parser(stage_key, value):
    """The plan's check of export_options / infer_options and the job's command line share
    each option's parser of a value: whatever the value, they agree whether it is taken, and
    when it is not, they say the same."""
    from records.errors import OptionError
    from records.spec import check_options

    stage, key = stage_key
    if isinstance(value, list) and key not in ("runtimes", "batches"):
        value = value[0]  # a list is for the options of several values
    try:
        check_options(stage, {key: value})
        plan = None
    except OptionError as exc:
        plan = str(exc)
    assert plan == _argparse_says(stage, key, value), (stage, key, value)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"stage": "deploy"}', "stage: expected one of train, transfer, export, infer"),
        ('{"stage": "train", "model": "m", "dataset": "d", "colour": 1}', "unknown train spec"),
        ('{"stage": "transfer", "model": "m", "dataset": "d"}', "needs init_from"),
        ('{"stage": "infer", "source": "x", "batches": [0]}', "batches: expected a whole"),
        ('{"stage": "export", "sources": ["x"], "tolerance": -1}', "tolerance: expected a number"),
        ("[1, 2]", "not a spec"),
        ("{", "cannot read the spec"),
    ],
)
def test_a_bad_spec_file_is_one_line_naming_it(tmp_path, text, message):
    from records.errors import UserError
    from records.spec import load

    path = tmp_path / "spec.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        load(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_every_exit_code_has_one_meaning_for_every_launcher():
    from harness.launchers.base import judge_exit
    from harness.launchers.sacct import map_state
    from records import spec as specs

    codes = {name: value for name, value in vars(specs).items() if name.startswith("EXIT_")}
    assert len(set(codes.values())) == len(codes)  # no two names for one code
    for name, code in codes.items():
        state, reason = judge_exit(code, "resnest-bench: error: the last line")
        if name == "EXIT_OK":
            assert (state, reason) == ("succeeded", None)
            continue
        assert state in ("failed", "cancelled")
        if name != "EXIT_FAILED":  # each of the job's own codes has its own reason
            assert not reason.startswith("exit code"), name
        if name not in ("EXIT_FAILED", "EXIT_REQUEUE"):  # SLURM reads them the same way
            record = {"State": "FAILED", "ExitCode": f"{code}:0", "Reason": "None"}
            assert map_state(record) == judge_exit(code, ""), name


def test_the_outbox_format_is_described_once(tmp_path):
    """Every kind a job emits is a kind ``records.kinds`` describes, and the store keeps
    each of them; an unknown kind is refused when written and when read."""
    from records import kinds
    from records.errors import OutboxError
    from records.outbox import OutboxWriter, read_outbox
    from records.store import Store

    emitted = set()
    for path in modules("jobs"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "report"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                emitted.add(node.args[0].value)
    assert emitted and emitted <= set(kinds.KINDS)
    writer = OutboxWriter(tmp_path / "job", "job-1", 0)
    examples = {
        "start": {"spec": {"stage": "train", "model": "m"}},
        "epoch": {"epoch": 1, "epoch_time": 2.0},
        "event": {"event": "checkpoint", "path": "x", "epoch": 1, "step": 0},
        "telemetry": {"epoch": 1, "samples": [{"time": 1.0, "gpu_index": 0, "gpu_util": 5}]},
        "provenance": {"host": "h", "torch": "2"},
        "artifact": {"artifact": "onnx", "path": "m.onnx", "bytes": 3, "sha256": "0"},
        "inference": {"runtime": "eager", "batch_size": 1, "available": True},
        "final": {"status": "succeeded", "final_test_acc": 0.5},
    }
    assert set(examples) == set(kinds.KINDS)
    for kind, record in examples.items():
        writer.report(kind, record)
    with pytest.raises(ValueError, match="unknown record kind"):
        writer.report("mystery", {})
    records = read_outbox(writer.path)
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    assert store.write_records(records) == len(examples)
    with store.begin() as conn:
        from sqlalchemy import func, select

        from records import schema

        for table in ("epochs", "events", "telemetry", "provenance", "artifacts", "inference",
                      "results"):  # fmt: skip
            count = conn.execute(select(func.count()).select_from(schema.metadata.tables[table]))
            assert count.scalar() >= 1, table
    with open(writer.path, "a") as f:
        f.write('{"kind": "mystery", "job_id": "job-1"}\n{"kind": "epoch"}\n')
    with pytest.raises(OutboxError, match=r"outbox.jsonl:9: unknown record kind 'mystery'"):
        read_outbox(writer.path)


def test_a_launcher_is_one_abstract_class_registered_by_name(tmp_path):
    """One abstract class with documented verbs; each launcher a registered subclass that
    implements them, imported when first asked for; the harness's sweep and CLI never ask
    which launcher it is."""
    from harness import launchers
    from harness.launchers import MODULES
    from harness.launchers.base import Launcher
    from records.errors import UserError
    from records.store import Store

    verbs = ["describe", "check", "submit", "poll", "wait", "look_after", "waiting_note",
             "cancel", "logs"]  # fmt: skip
    public = {name for name, _ in inspect.getmembers(Launcher, callable) if name[0] != "_"}
    assert public == {*verbs, "sweep_config"}
    assert inspect.isabstract(Launcher)
    assert Launcher.__abstractmethods__ == {"describe", "submit"}
    for verb in verbs:
        assert getattr(Launcher, verb).__doc__, verb  # each verb says what it does
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    for name in MODULES:
        launcher = launchers.get(name, store)
        assert isinstance(launcher, Launcher) and launcher.name == name
        assert not inspect.isabstract(type(launcher))
        assert type(launcher).__module__ == MODULES[name]
        row = {"id": "j", "launcher_job_id": launcher.prefix + "1", "job_dir": "/nowhere"}
        assert launchers.launcher_of(row) == name
    with pytest.raises(UserError, match="unknown launcher 'pbs'"):
        launchers.get("pbs", store)
    names = re.compile(r"""["'](local|slurm|ray)["']""")
    asking = [
        str(path.relative_to(ROOT))
        for path in [ROOT / "harness" / "sweep.py", *modules("harness/cli")]
        if names.search(path.read_text())
    ]
    assert asking == []
    # The dependency rule is written once, in the Driver's module, for every launcher.
    rule = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in modules(package)
        if "not run: depends on" in path.read_text()
    ]
    assert rule == ["harness/launchers/base.py"]


def test_a_runtime_is_a_class_registered_by_name_and_a_model_and_a_device_resolve_once(
    tmp_path, monkeypatch
):
    """Each runtime a registered subclass of one abstract class, under the infer job's names;
    the network is rebuilt from a saved state in one function, and ``auto`` resolved in one."""
    import numpy as np
    import torch

    import resnest
    from jobs import runtimes
    from jobs.checkpoint import model_from
    from jobs.device import DeviceError, resolve
    from records.spec import RUNTIMES

    assert tuple(runtimes.RUNTIMES) == RUNTIMES
    assert inspect.isabstract(runtimes.Runtime)
    assert runtimes.Runtime.__abstractmethods__ == {"prepare", "run"}
    for verb in ("prepare", "run", "times", "close"):
        assert getattr(runtimes.Runtime, verb).__doc__, verb
    for name, cls in runtimes.RUNTIMES.items():
        assert issubclass(cls, runtimes.Runtime) and cls.name == name
        assert not inspect.isabstract(cls) and cls.__doc__, name
    assert issubclass(runtimes.RUNTIMES["onnxruntime-int8"], runtimes.RUNTIMES["onnxruntime"])
    assert issubclass(runtimes.RUNTIMES["compile"], runtimes.RUNTIMES["eager"])
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        runtimes.create("tvm", None)

    def holding(text: str) -> list[str]:
        return [str(p.relative_to(ROOT)) for p in modules("jobs") if text in p.read_text()]

    # A network from a saved state: model_from; a fresh one (the trainer's): resnest.create.
    assert holding("resnest.create(") == ["jobs/checkpoint.py", "jobs/trainer.py"]
    assert holding("cuda.is_available()") == ["jobs/device.py"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as here, on any machine
    assert resolve("auto") == torch.device("cpu") == resolve("cpu")
    with pytest.raises(DeviceError, match=r"^device 'cuda' was asked for, but no CUDA"):
        resolve("cuda")
    with pytest.raises(DeviceError, match=r"^device 'gpu0': not a device \(auto, cpu"):
        resolve("gpu0")
    # One GPU visible: torch.cuda stands in for it (there is no GPU here).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(DeviceError, match=r"^device 'cuda:1' was asked for, but 1 CUDA device\(s\) "
                       r"are visible \(cuda:0 to cuda:0; CUDA_VISIBLE_DEVICES=3\)$"):  # fmt: skip
        resolve("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    # The eager runtime on an export's files gives the saved network's logits.
    torch.manual_seed(0)
    model = resnest.create("resnest_tiny_basic", num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "model.state_dict.pt")
    artifacts = {"folder": tmp_path, "model_name": "resnest_tiny_basic", "num_classes": 10}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
        rebuilt = model_from({**artifacts, "model": model.state_dict()})(x).numpy()
    np.testing.assert_array_equal(rebuilt, expected)
    setting = runtimes.Setting(artifacts, torch.device("cpu"), 1, x.numpy())
    eager = runtimes.create("eager", setting)
    info = eager.prepare()
    assert info["bytes"] == (tmp_path / "model.state_dict.pt").stat().st_size
    np.testing.assert_allclose(eager.run(x.numpy()), expected, rtol=0, atol=1e-6)
    times = eager.times(x.numpy(), warmup=1, iters=4)
    assert len(times) == 4 and all(t > 0 for t in times)
    eager.close()
    eager.close()  # twice: nothing left to free
