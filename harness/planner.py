"""Expand a sweep's axes into jobs with dependencies: train -> transfer -> export -> infer.

Each planned job carries its spec (``records.spec``), built here and nowhere else. A job's id
is a hash of its normalised settings (and of the ids it depends on), so the same sweep
planned twice gives the same ids, and changing one axis value changes only the jobs that
value touches.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig, JobEnvironment, environment_for
from records.errors import UserError
from records.spec import (
    INPUT_FIELDS,
    ExportSpec,
    InferSpec,
    Spec,
    TrainSpec,
    TransferSpec,
    inputs_of,
)

ID_LENGTH = 12
WINNER = "winner"  # the model of deployment jobs until the winner is known
FILTER_KEYS = ("id", "stage", "model", "dataset", "gpu_type", "seed", "repeat")


@dataclass(slots=True)  # not frozen: a frozen dataclass is 5x slower to make (100,000 jobs)
class JobPlan:
    """A planned job. Nothing changes it once planned."""

    id: str
    stage: str
    model: str
    dataset: str
    gpu_type: str
    gpus_per_node: int
    nodes: int
    seed: int
    repeat: int
    recipe: str
    overrides: dict[str, Any] = field(default_factory=dict, compare=False)
    depends_on: tuple[str, ...] = ()
    spec: Spec | None = field(default=None, compare=False)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stage": self.stage,
            "model": self.model,
            "dataset": self.dataset,
            "gpu_type": self.gpu_type,
            "gpus": self.gpus_per_node * self.nodes,
            "seed": self.seed,
            "repeat": self.repeat,
            "after": ",".join(self.depends_on) or "-",
        }


def layout(config: ClusterConfig, job: Mapping[str, Any]) -> tuple[int, int]:
    """(GPUs per node, nodes) of a job's row: a training or transfer job runs the sweep's
    ``gpus_per_job`` on each of its nodes (its ``gpus`` over that many); an export or
    inference job is one process on one GPU."""
    if job["stage"] in ("export", "infer"):
        return 1, 1
    per_node = config.sweep.gpus_per_job
    return per_node, max(1, (job["gpus"] or per_node) // per_node)


def job_dir(config: ClusterConfig, job_id: str) -> Path:
    """The folder of a job: checkpoints, outbox, logs, its spec."""
    return Path(config.results_dir).resolve() / config.name / "jobs" / job_id


def job_id(normalised: dict[str, Any]) -> str:
    """The id of a job: a hash of its normalised settings (as canonical JSON)."""
    return _hash(_canonical(normalised))


def _canonical(normalised: dict[str, Any]) -> str:
    return json.dumps(normalised, sort_keys=True, separators=(",", ":"), default=str)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


# Stand-ins for what differs between the jobs of one kind, in the order canonical JSON (its
# keys sorted) puts them: depends_on, repeat, seed
_VARYING = {"depends_on": "\x00parents", "repeat": "\x00repeat", "seed": "\x00seed"}
_MARKERS = [json.dumps(stand_in) for stand_in in _VARYING.values()]


@contextlib.contextmanager
def _bulk() -> Iterator[None]:
    """No cyclic garbage collection while a plan is built: its objects form no cycles, and
    the collector would otherwise walk them all again and again as they are made (a third of
    the time of a 100,000-job plan)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Shared:
    """What every job of a sweep shares, worked out once: its overrides per stage, the jobs'
    folder, the data folder, each GPU type's job environment."""

    def __init__(self, config: ClusterConfig, identity: dict[str, Any]) -> None:
        sweep = config.sweep
        self.config = config
        self.identity = identity
        self.overrides: dict[str, dict[str, Any]] = {
            "train": sweep.train_recipe_overrides(),
            "transfer": sweep.transfer_recipe_overrides(),
            "export": dict(sweep.export_options),
            "infer": dict(sweep.infer_options),
        }
        self.jobs = str(job_dir(config, "-").parent) + os.sep
        self.data = str(Path(sweep.data_dir).resolve())
        self.environments = {}
        for name in config.gpu_types:
            environment = environment_for(config, name)
            if environment != JobEnvironment():
                self.environments[name] = environment.as_dict()


class _Kind:
    """The jobs of one stage, model, dataset, GPU type and layout, which differ only in their
    seed, repeat and parents (a sweep may plan 100,000 jobs of a few dozen kinds):

    - a job's id is the hash of its canonical JSON (``job_id``), written once per kind as a
      template with the seed, repeat and parents left out;
    - a job's spec is a copy of the kind's spec, built and checked once, with the job's own
      folder, id, seed and inputs.
    """

    def __init__(self, shared: _Shared, stage: str, common: dict[str, Any], dataset: str):
        self.shared, self.stage, self.dataset = shared, stage, dataset
        self.common = common  # model, gpu_type, gpus_per_node, nodes
        self.recipe = shared.config.sweep.recipe
        self.overrides = shared.overrides[stage]
        self.template = self._template()
        self.prototype = self._prototype()
        self.seeded = stage in ("train", "transfer")
        self.reads_parents = stage in INPUT_FIELDS

    def make(self, seed: int, repeat: int, parents: tuple[str, ...]) -> JobPlan:
        if self.template is None or type(seed) is not int:
            id_ = job_id(self._normalised(seed, repeat, list(parents)))
        else:
            start, after_parents, after_repeat, end = self.template
            listed = ",".join([f'"{parent}"' for parent in parents])
            id_ = _hash(f"{start}[{listed}]{after_parents}{repeat}{after_repeat}{seed}{end}")
        jobs = self.shared.jobs
        spec = object.__new__(type(self.prototype))  # a copy of a checked spec: no checks again
        fields = spec.__dict__
        fields.update(self.prototype.__dict__)
        fields["out_dir"] = jobs + id_
        fields["job_id"] = id_
        if self.seeded:
            fields["seed"] = seed
        if self.reads_parents:
            fields.update(inputs_of(self.stage, [jobs + parent for parent in parents]))
        common = self.common
        return JobPlan(id_, self.stage, common["model"], self.dataset, common["gpu_type"],
                       common["gpus_per_node"], common["nodes"], seed, repeat, self.recipe,
                       self.overrides, parents, spec)  # fmt: skip

    def _normalised(self, seed: Any, repeat: Any, depends_on: Any) -> dict[str, Any]:
        return {
            **self.shared.identity, **self.common, "seed": seed, "repeat": repeat,
            "stage": self.stage, "dataset": self.dataset, "recipe": self.recipe,
            "overrides": self.overrides, "depends_on": depends_on,
        }  # fmt: skip

    def _template(self) -> tuple[str, str, str, str] | None:
        """The canonical JSON of this kind of job cut where its parents, repeat and seed go
        (None if a setting's own text holds a stand-in: then each id is written whole)."""
        seed, repeat, parents = _VARYING["seed"], _VARYING["repeat"], _VARYING["depends_on"]
        text = _canonical(self._normalised(seed, repeat, parents))
        pieces = []
        for marker in _MARKERS:
            cut = text.split(marker)
            if len(cut) != 2:
                return None
            pieces.append(cut[0])
            text = cut[1]
        start, after_parents, after_repeat = pieces
        return start, after_parents, after_repeat, text

    def _prototype(self) -> Spec:
        """A spec of this kind of job, built and checked; a stand-in for each input."""
        sweep, shared, common = self.shared.config.sweep, self.shared, self.common
        gpu_type = common["gpu_type"]
        gpu = shared.config.gpu_types[gpu_type]
        base: dict[str, Any] = {
            "gpu_type": gpu_type,
            "dataset": self.dataset,
            "data_dir": shared.data,
        }
        if gpu_type in shared.environments:  # for the job's provenance
            base["environment"] = shared.environments[gpu_type]
        if self.stage == "export":
            return ExportSpec(sources=["-"], **base, **self.overrides)
        if self.stage == "infer":
            return InferSpec(source="-", device=gpu.local or "auto", **base, **self.overrides)
        training: dict[str, Any] = {
            "model": common["model"], "recipe": sweep.recipe, "overrides": self.overrides,
            "download": sweep.download, "device": gpu.local or "auto",
            "max_steps": sweep.max_steps,
            "expect_gpu": gpu.gpu_name or ("cpu" if gpu.local == "cpu" else gpu_type),
            "target_accuracy": sweep.targets[0] if sweep.targets else None,
        }  # fmt: skip
        if self.stage == "transfer":
            return TransferSpec(init_from="-", **base, **training)
        return TrainSpec(**base, **training)


def plan(config: ClusterConfig) -> list[JobPlan]:
    """All jobs of the sweep, each after the jobs it depends on."""
    sweep = config.sweep
    # Settings that change what a job computes but are not in its recipe; and the sweep's
    # name, so that two sweeps of one store never share a job (or its folder and results).
    identity: dict[str, Any] = {"sweep": config.name}
    if sweep.max_steps is not None:
        identity["max_steps"] = sweep.max_steps
    with _bulk():
        return _plan(_Shared(config, identity))


def _plan(shared: _Shared) -> list[JobPlan]:
    sweep = shared.config.sweep
    stages = set(sweep.stages)
    jobs: list[JobPlan] = []
    candidates: dict[tuple[str, str], list[str]] = defaultdict(list)
    runs = list(itertools.product(sweep.seeds, range(sweep.repeats)))
    shapes = itertools.product(sweep.models, sweep.datasets, sweep.gpu_types, sweep.node_counts)
    for model, dataset, gpu_type, nodes in shapes:
        common = {"model": model, "gpu_type": gpu_type, "gpus_per_node": sweep.gpus_per_job,
                  "nodes": nodes}  # fmt: skip
        trains = _Kind(shared, "train", common, dataset)
        transfers = [_Kind(shared, "transfer", common, target) for target in sweep.transfer_to
                     if "transfer" in stages]  # fmt: skip
        deploys = {}  # (export, infer) kinds per trained dataset, when every network deploys
        if "export" in stages and sweep.deploy == "all":
            deployed = {**common, "gpus_per_node": 1, "nodes": 1}
            for kind in (trains, *transfers):
                deploys[kind.dataset] = _deploy_kinds(shared, deployed, kind.dataset)
        for seed, repeat in runs:
            train = trains.make(seed, repeat, ())
            jobs.append(train)
            trained = [train]
            for kind in transfers:
                transfer = kind.make(seed, repeat, (train.id,))
                jobs.append(transfer)
                trained.append(transfer)
            if "export" not in stages:
                continue
            for source in trained:
                if deploys:
                    _deploy(jobs, deploys[source.dataset], seed, repeat, (source.id,))
                else:
                    candidates[(source.stage, source.dataset)].append(source.id)
    # The winner of each (stage, dataset): the export job waits for every candidate, picks
    # the best of them from the store, and names its network when it starts.
    for (_, dataset), ids in candidates.items():
        for gpu_type in sweep.gpu_types:
            common = {"model": WINNER, "gpu_type": gpu_type, "gpus_per_node": 1, "nodes": 1}
            kinds = _deploy_kinds(shared, common, dataset)
            _deploy(jobs, kinds, sweep.seeds[0], 0, tuple(ids))
    return jobs


def _deploy_kinds(shared: _Shared, common: dict[str, Any], dataset: str) -> tuple[_Kind, ...]:
    """The export kind and, if the sweep infers, the inference kind of a trained network."""
    stages = ["export", "infer"] if "infer" in shared.config.sweep.stages else ["export"]
    return tuple(_Kind(shared, stage, common, dataset) for stage in stages)


def _deploy(
    jobs: list[JobPlan], kinds: tuple[_Kind, ...], seed: int, repeat: int,
    sources: tuple[str, ...],
) -> None:  # fmt: skip
    """An export job from ``sources`` (one trained network, or the winner's candidates) and,
    if the sweep infers, an inference job after it: each one process on one GPU."""
    parents = sources
    for kind in kinds:
        job = kind.make(seed, repeat, parents)
        jobs.append(job)
        parents = (job.id,)


def select(jobs: list[JobPlan], only: list[str]) -> list[JobPlan]:
    """Jobs matching every ``KEY=VALUE`` filter, with the jobs they depend on."""
    if not only:
        return jobs
    filters = []
    for text in only:
        key, sep, value = text.partition("=")
        if not sep or key not in FILTER_KEYS:
            raise UserError(
                f"--only {text!r}: expected KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}"
            )
        filters.append((key, value))
    by_id = {job.id: job for job in jobs}
    chosen: set[str] = set()

    def add(job_id_: str) -> None:
        if job_id_ not in chosen:
            chosen.add(job_id_)
            for parent in by_id[job_id_].depends_on:
                add(parent)

    for job in jobs:
        if all(str(getattr(job, key)) == value for key, value in filters):
            add(job.id)
    return [job for job in jobs if job.id in chosen]
