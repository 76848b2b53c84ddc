"""cluster.yaml validation and the planner."""

import hashlib
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import config as cluster_config
from harness.planner import plan, select
from records.errors import UserError
from records.spec import from_dict

from .jobtools import base, write

EXE = Path(sysconfig.get_path("scripts")) / "resnest-bench"


def test_the_shipped_cluster_yaml_is_valid():
    config = cluster_config.load(Path(__file__).parents[1] / "cluster.yaml")
    assert set(config.sweep.gpu_types) <= set(config.gpu_types)


def test_plan_expands_the_axes_with_dependencies(tmp_path):
    jobs = plan(cluster_config.load(write(tmp_path, base(tmp_path))))
    by_stage = {
        s: [j for j in jobs if j.stage == s] for s in ("train", "transfer", "export", "infer")
    }
    assert len(by_stage["train"]) == 2 * 2 * 2  # models x gpu types x seeds
    assert len(by_stage["transfer"]) == 8 and len(by_stage["export"]) == 16
    assert len(by_stage["infer"]) == 16
    ids = {j.id for j in jobs}
    assert len(ids) == len(jobs)  # distinct
    position = {j.id: i for i, j in enumerate(jobs)}
    for job in jobs:
        for parent in job.depends_on:
            assert parent in ids and position[parent] < position[job.id]
    transfer = by_stage["transfer"][0]
    parent = next(j for j in jobs if j.id == transfer.depends_on[0])
    assert (parent.stage, parent.model, parent.gpu_type, parent.seed) == (
        "train",
        transfer.model,
        transfer.gpu_type,
        transfer.seed,
    )
    assert by_stage["train"][0].overrides == {"epochs": 3}


def test_deploy_winner_plans_one_export_per_dataset_and_gpu_type_after_every_candidate(
    tmp_path,
):
    data = base(tmp_path)
    every = plan(cluster_config.load(write(tmp_path, data)))
    data["sweep"]["deploy"] = "winner"
    jobs = plan(cluster_config.load(write(tmp_path, data)))
    by_id = {j.id: j for j in jobs}
    exports = [j for j in jobs if j.stage == "export"]
    # one per (stage, dataset) of the trained networks and per GPU type: 2 x 2
    assert len(exports) == 4 and len([j for j in jobs if j.stage == "infer"]) == 4
    assert {(by_id[j.depends_on[0]].stage, j.dataset, j.gpu_type) for j in exports} == {
        (stage, dataset, gpu)
        for stage, dataset in (("train", "cifar10"), ("transfer", "cifar100"))
        for gpu in ("v100", "a100")
    }
    for export in exports:
        assert export.model == "winner"
        parents = [by_id[p] for p in export.depends_on]
        # every run of both variants on every GPU type and seed of that dataset
        assert len(parents) == 8 and {p.dataset for p in parents} == {export.dataset}
        assert {(p.model, p.gpu_type, p.seed) for p in parents} == {
            (m, g, s) for m in data["sweep"]["models"] for g in ("v100", "a100") for s in (0, 1)
        }
    position = {j.id: i for i, j in enumerate(jobs)}
    assert all(position[p] < position[j.id] for j in jobs for p in j.depends_on)
    # training and transfer jobs are the same jobs as with deploy: all
    trained = {j.id for j in every if j.stage in ("train", "transfer")}
    assert trained == {j.id for j in jobs if j.stage in ("train", "transfer")}


def test_plan_ids_are_stable_and_change_only_with_their_spec(tmp_path):
    data = base(tmp_path)
    first = plan(cluster_config.load(write(tmp_path, data)))
    again = plan(cluster_config.load(write(tmp_path, data)))
    assert [j.id for j in first] == [j.id for j in again]
    data["sweep"]["seeds"] = [0, 1, 2]  # one more axis value
    grown = plan(cluster_config.load(write(tmp_path, data)))
    old, new = {j.id for j in first}, {j.id for j in grown}
    assert old <= new and len(new - old) == len(first) // 2
    assert all(j.seed == 2 for j in grown if j.id not in old)
    data["sweep"]["epochs"] = 4  # a different recipe: every job is new
    assert not {j.id for j in plan(cluster_config.load(write(tmp_path, data)))} & old
    data["sweep"]["epochs"] = 3
    data["name"] = "another"  # the same jobs in another sweep: other ids (one store holds both)
    assert not {j.id for j in plan(cluster_config.load(write(tmp_path, data)))} & old


def test_transfer_overrides_reach_the_transfer_jobs_alone(tmp_path):
    """``overrides`` change the training jobs' recipe, ``transfer_overrides`` (with
    ``transfer_epochs``) the transfer jobs' own; a sweep without them plans the ids it did."""
    from jobs.recipe import get_recipe

    data = base(tmp_path)
    before = {j.id for j in plan(cluster_config.load(write(tmp_path, data)))}
    changes = {"batch_size": 16, "memory_format": "contiguous"}
    data["sweep"].update(
        overrides={"batch_size": 48}, transfer_epochs=4, transfer_overrides=changes
    )
    jobs = plan(cluster_config.load(write(tmp_path, data)))
    recipes = {
        stage: {get_recipe(j.recipe, stage, j.overrides) for j in jobs if j.stage == stage}
        for stage in ("train", "transfer")
    }
    (train,), (transfer,) = recipes["train"], recipes["transfer"]
    assert (train.batch_size, train.epochs) == (48, 3)
    assert (transfer.batch_size, transfer.epochs, transfer.memory_format) == (16, 4, "contiguous")
    assert transfer.lr == get_recipe("study", "transfer").lr  # the rest is the transfer recipe's
    assert all(j.spec.overrides == j.overrides for j in jobs if j.stage == "transfer")
    del (
        data["sweep"]["transfer_overrides"],
        data["sweep"]["overrides"],
        data["sweep"]["transfer_epochs"],
    )
    assert {j.id for j in plan(cluster_config.load(write(tmp_path, data)))} == before


def test_sweep_profile_traces_every_training_job_and_no_transfer_job(tmp_path):
    """``sweep.profile`` is the training recipe's ``profile``: each training job's spec
    carries it (the transfer jobs' recipe is their own). A bad window: see BAD."""
    from jobs.recipe import get_recipe

    data = base(tmp_path)
    data["sweep"]["profile"] = "5:7"
    jobs = plan(cluster_config.load(write(tmp_path, data)))
    train = [j for j in jobs if j.stage == "train"]
    assert train and all(j.spec.overrides["profile"] == "5:7" for j in train)
    assert {get_recipe(j.recipe, "train", j.overrides).profile for j in train} == {"5:7"}
    assert all("profile" not in j.overrides for j in jobs if j.stage != "train")


def test_only_selects_with_dependencies(tmp_path):
    jobs = plan(cluster_config.load(write(tmp_path, base(tmp_path))))
    chosen = select(jobs, ["stage=infer", "gpu_type=a100", "seed=1", "model=resnest50_basic"])
    assert sorted(j.stage for j in chosen) == sorted(
        ["train", "transfer", "export", "export", "infer", "infer"]
    )
    with pytest.raises(UserError, match="KEY=VALUE"):
        select(jobs, ["colour=red"])


BAD = [
    ("syntax", "name: t\nsweep: [unclosed\n", r"cluster.yaml:3:1: YAML syntax error"),
    ("unknown key", {"sweep": {"modles": ["x"]}}, r"sweep.modles: unknown key"),
    ("wrong type", {"sweep": {"seeds": "zero"}}, r"sweep.seeds: Input should be a valid list"),
    (
        "unknown model",
        {"sweep": {"models": ["resnest51"]}},
        r"sweep.models: unknown model 'resnest51'",
    ),
    (
        "undefined gpu type",
        {"sweep": {"gpu_types": ["h100"]}},
        r"sweep.gpu_types: 'h100' is not defined in gpu_types \(a100, v100\)",
    ),
    (
        "non-positive epochs",
        {"sweep": {"epochs": 0}},
        r"sweep.epochs: Input should be greater than 0",
    ),
    (
        "missing data folder",
        {"sweep": {"data_dir": "/nonexistent/data"}},
        r"sweep.data_dir: folder /nonexistent/data does not exist",
    ),
    (
        "unknown dataset",
        {"sweep": {"datasets": ["imagenet"]}},
        r"sweep.datasets.0: Input should be",
    ),
    ("bad override", {"sweep": {"overrides": {"lrate": 1}}}, r"unknown recipe field 'lrate'"),
    # Values that passed the plan and then meant something else:
    (
        "an empty python",
        {"gpu_types": {"v100": {"partition": "gpu", "python": ""}}},
        r"gpu_types.v100.python: expected the interpreter's path or name .* got an empty",
    ),
    (
        "an empty launcher python",
        {"launcher": {"kind": "slurm", "python": "  "}},
        r"launcher.python: expected the interpreter's path or name",
    ),
    (
        "two nodes on the local launcher",
        {"launcher": {"kind": "local"}, "sweep": {"nodes": [1, 2]}},
        r"cluster.yaml: sweep.nodes: \[1, 2\] with the local launcher, which runs every job "
        r"on this one machine: use launcher.kind slurm or ray for 2 nodes",
    ),
    (
        "epochs given twice",
        {"sweep": {"epochs": 5, "overrides": {"epochs": 0}}},
        r"cluster.yaml: sweep.overrides: epochs is 0 here and 5 in sweep.epochs: give it in "
        r"one place",
    ),
    (
        "profile given twice",
        {"sweep": {"profile": "1:2", "overrides": {"profile": "3:4"}}},
        r"cluster.yaml: sweep.overrides: profile is '3:4' here and '1:2' in sweep.profile: "
        r"give it in one place",
    ),
    (
        "profile window backwards",
        {"sweep": {"profile": "7:5"}},
        r"cluster.yaml: sweep.profile: expected FIRST:LAST, steps with FIRST < LAST",
    ),
    (
        "transfer epochs given twice",
        {"sweep": {"transfer_epochs": 5, "transfer_overrides": {"epochs": 2}}},
        r"cluster.yaml: sweep.transfer_overrides: epochs is 2 here and 5 in "
        r"sweep.transfer_epochs: give it in one place",
    ),
    (
        "bad transfer override",
        {"sweep": {"transfer_overrides": {"batch_size": 0}}},
        r"cluster.yaml: sweep.transfer_overrides: batch_size",
    ),
    ("missing sweep", {"sweep": None}, r"sweep: Input should be a valid dictionary"),
]


@pytest.mark.parametrize("case,change,expected", BAD, ids=[c[0] for c in BAD])
def test_bad_cluster_yaml_is_one_line_naming_file_and_field(tmp_path, case, change, expected):
    if isinstance(change, str):
        path = write(tmp_path, change)
    else:
        data = base(tmp_path)
        for section, values in change.items():
            if values is None:
                data[section] = None
            else:
                data[section] = {**data.get(section, {}), **values}
        path = write(tmp_path, data)
    with pytest.raises(UserError, match=expected) as err:
        cluster_config.load(path)
    assert str(err.value).startswith(str(path))
    assert "\n" not in str(err.value)
    # The same through the command line: exit 2, one line, nothing submitted.
    result = subprocess.run(
        [str(EXE), "submit", str(path), "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (tmp_path / "results").exists()


def test_dry_run_prints_the_plan_and_does_not_import_torch(tmp_path):
    path = write(tmp_path, base(tmp_path))
    code = (
        "import sys; from harness.cli import main; rc = main(['submit', sys.argv[1], "
        "'--dry-run', '--format', 'csv']); print('TORCH' if 'torch' in sys.modules "
        "else 'NO_TORCH', rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("id,stage,model,dataset,gpu_type")
    assert len(lines) == 1 + 48 + 1 and lines[-1] == "NO_TORCH 0"
    assert "48 jobs (8 train, 8 transfer, 16 export, 16 infer)" in result.stderr
    assert "nothing submitted" in result.stderr


def reference_id(config: cluster_config.ClusterConfig, job) -> str:
    """A job's id as the store knows it: the first 12 hex digits of the SHA-256 of its
    settings as canonical JSON (what every planned job must keep, or a re-planned sweep would
    not find its jobs in the store)."""
    settings = {
        "sweep": config.name, "model": job.model, "gpu_type": job.gpu_type,
        "gpus_per_node": job.gpus_per_node, "nodes": job.nodes, "seed": job.seed,
        "repeat": job.repeat, "stage": job.stage, "dataset": job.dataset, "recipe": job.recipe,
        "overrides": job.overrides, "depends_on": list(job.depends_on),
    }  # fmt: skip
    if config.sweep.max_steps is not None:
        settings["max_steps"] = config.sweep.max_steps
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# GPU type names are the one free text of a job's settings: some hold the very text the
# planner cuts its id templates at.
STAND_INS = ["\x00seed", 'a"\x00parents', "\\u0000repeat"]
GPU_NAMES = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6
)
STAGE_SETS = [
    ["train"], ["train", "transfer"], ["train", "export", "infer"],
    ["train", "transfer", "export", "infer"],
]  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    gpu_names=st.lists(GPU_NAMES | st.sampled_from(STAND_INS), min_size=1, max_size=2, unique=True),
    seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3, unique=True),
    repeats=st.integers(1, 2),
    nodes=st.sampled_from([1, 2, [1, 2]]),
    stages=st.sampled_from(STAGE_SETS),
    deploy=st.sampled_from(["all", "winner"]),
    epochs=st.sampled_from([None, 2]),
    max_steps=st.sampled_from([None, 5]),
    batches=st.sampled_from([None, [1, 64]]),
)
def test_every_planned_id_is_the_hash_of_its_settings_and_every_spec_is_whole(
    tmp_path, gpu_names, seeds, repeats, nodes, stages, deploy, epochs, max_steps, batches
):
    data = base(tmp_path)
    data["gpu_types"] = {name: {"local": "cpu"} for name in gpu_names}
    data["launcher"] = {"kind": "ray"}  # jobs of several nodes: not the local launcher's
    sweep = data["sweep"]
    sweep.update(gpu_types=gpu_names, seeds=seeds, repeats=repeats, nodes=nodes, stages=stages,
                 deploy=deploy, epochs=epochs, max_steps=max_steps)  # fmt: skip
    if batches:
        sweep["infer_options"] = {"batches": batches}
    config = cluster_config.load(write(tmp_path, data))
    jobs = plan(config)
    assert [job.id for job in jobs] == [reference_id(config, job) for job in jobs]
    assert len({job.id for job in jobs}) == len(jobs)
    folder = Path(config.results_dir).resolve() / config.name / "jobs"
    inputs = {"transfer": "init_from", "export": "sources", "infer": "source"}
    for job in jobs:
        spec = job.spec
        # a spec the constructor (and its checks) gives back unchanged, of this job alone
        assert from_dict(spec.to_dict()) == spec
        assert (spec.job_id, spec.out_dir, spec.gpu_type) == (
            job.id,
            str(folder / job.id),
            job.gpu_type,
        )
        if job.stage in ("train", "transfer"):
            assert (spec.model, spec.seed, spec.dataset) == (job.model, job.seed, job.dataset)
        parents = [str(folder / parent) for parent in job.depends_on]
        if job.stage in inputs:
            value = getattr(spec, inputs[job.stage])
            assert value == (parents if job.stage == "export" else parents[0])
    exports = [job.spec.sources for job in jobs if job.stage == "export"]
    assert len({id(sources) for sources in exports}) == len(exports)  # no list shared


def test_a_launcher_given_on_the_command_line_is_checked_with_the_sweep(tmp_path):
    """`submit --launcher local` on a sweep of two-node jobs would run them on one node: it
    is refused as the same value in the file would be."""
    data = base(tmp_path)
    data["launcher"] = {"kind": "slurm"}
    data["sweep"]["nodes"] = 2
    path = write(tmp_path, data)
    cluster_config.load(path)  # valid as written
    result = subprocess.run(
        [str(EXE), "submit", str(path), "--dry-run", "--launcher", "local"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr == (
        f"resnest-bench: error: {path} with --launcher local: sweep.nodes: 2 with the local "
        "launcher, which runs every job on this one machine: use launcher.kind slurm or ray "
        "for 2 nodes\n"
    )
