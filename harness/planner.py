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
from records.spec import ExportSpec, InferSpec, Spec, TrainSpec, TransferSpec

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


class _Maker:
    """Makes the jobs of one sweep (a sweep may plan 100,000 of them), each with its id and
    its spec, without working out per job what its kind of job shares:

    - an id is the hash of the job's canonical JSON (``job_id``); that text is the same for
      every job of one stage, model, dataset, GPU type and layout but for its seed, repeat
      and parents, so it is written once per kind as a template with those three left out;
    - a spec is built and checked once per stage, GPU type, model and dataset (a prototype),
      and each job's spec is a copy with its own folder, id, seed and inputs;
    - the jobs' folder, the data folder and each GPU type's job environment are found once.
    """

    def __init__(self, config: ClusterConfig, identity: dict[str, Any]) -> None:
        sweep = config.sweep
        self.config = config
        self.identity = identity
        overrides = dict(sweep.overrides)
        if sweep.epochs is not None:
            overrides["epochs"] = sweep.epochs
        self.overrides: dict[str, dict[str, Any]] = {
            "train": overrides,
            "transfer": {} if sweep.transfer_epochs is None else {"epochs": sweep.transfer_epochs},
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
        self.templates: dict[tuple[Any, ...], tuple[list[str], list[str]] | None] = {}
        self.prototypes: dict[tuple[str, ...], Spec] = {}

    def make(
        self, stage: str, common: dict[str, Any], dataset: str, depends_on: tuple[str, ...]
    ) -> JobPlan:
        recipe = self.config.sweep.recipe
        overrides = self.overrides[stage]
        id_ = self._id(stage, common, dataset, depends_on)
        spec = self._spec(stage, common, dataset, id_, depends_on)
        return JobPlan(id_, stage, common["model"], dataset, common["gpu_type"],
                       common["gpus_per_node"], common["nodes"], common["seed"],
                       common["repeat"], recipe, overrides, depends_on, spec)  # fmt: skip

    def _normalised(
        self, stage: str, common: dict[str, Any], dataset: str, depends_on: Any
    ) -> dict[str, Any]:
        return {
            **self.identity, **common, "stage": stage, "dataset": dataset,
            "recipe": self.config.sweep.recipe, "overrides": self.overrides[stage],
            "depends_on": depends_on,
        }  # fmt: skip

    def _id(
        self, stage: str, common: dict[str, Any], dataset: str, depends_on: tuple[str, ...]
    ) -> str:
        key = (stage, dataset, common["model"], common["gpu_type"], common["gpus_per_node"],
               common["nodes"])  # fmt: skip
        if key not in self.templates:
            self.templates[key] = self._template(stage, common, dataset)
        template = self.templates[key]
        seed = common["seed"]
        if template is None or type(seed) is not int:
            return job_id(self._normalised(stage, common, dataset, list(depends_on)))
        start, after_parents, after_repeat, end = template
        parents = ",".join([f'"{parent}"' for parent in depends_on])
        repeat = common["repeat"]
        return _hash(f"{start}[{parents}]{after_parents}{repeat}{after_repeat}{seed}{end}")

    def _template(
        self, stage: str, common: dict[str, Any], dataset: str
    ) -> tuple[str, str, str, str] | None:
        """The canonical JSON of this kind of job cut where its parents, repeat and seed go
        (None if a setting's own text holds a stand-in: then each id is written whole)."""
        stand_ins = {**common, "seed": _VARYING["seed"], "repeat": _VARYING["repeat"]}
        text = _canonical(self._normalised(stage, stand_ins, dataset, _VARYING["depends_on"]))
        pieces = text.split(_MARKERS[0])
        if len(pieces) != 2:
            return None
        start, rest = pieces
        pieces = [start]
        for marker in _MARKERS[1:]:
            cut = rest.split(marker)
            if len(cut) != 2:
                return None
            pieces.append(cut[0])
            rest = cut[1]
        start, after_parents, after_repeat = pieces
        return start, after_parents, after_repeat, rest

    def _spec(
        self, stage: str, common: dict[str, Any], dataset: str, id_: str, parents: tuple[str, ...]
    ) -> Spec:
        """The spec of a job; its inputs are its parents' folders."""
        key = (stage, common["gpu_type"], common["model"], dataset)
        prototype = self.prototypes.get(key)
        if prototype is None:
            prototype = self.prototypes[key] = self._prototype(stage, common, dataset)
        fields: dict[str, Any] = {"out_dir": self.jobs + id_, "job_id": id_}
        inputs = [self.jobs + parent for parent in parents]
        if stage in ("train", "transfer"):
            fields["seed"] = common["seed"]
        if stage == "transfer":
            fields["init_from"] = inputs[0]
        elif stage == "export":
            fields["sources"] = inputs
        elif stage == "infer":
            fields["source"] = inputs[0]
        spec = object.__new__(type(prototype))  # a copy of a checked spec: no checks again
        spec.__dict__.update(prototype.__dict__)
        spec.__dict__.update(fields)
        return spec

    def _prototype(self, stage: str, common: dict[str, Any], dataset: str) -> Spec:
        """A spec of this kind of job, built and checked; a stand-in for each input."""
        sweep = self.config.sweep
        gpu = self.config.gpu_types[common["gpu_type"]]
        shared: dict[str, Any] = {
            "gpu_type": common["gpu_type"], "dataset": dataset, "data_dir": self.data,
        }  # fmt: skip
        if common["gpu_type"] in self.environments:  # for the job's provenance
            shared["environment"] = self.environments[common["gpu_type"]]
        overrides = self.overrides[stage]
        if stage == "export":
            return ExportSpec(sources=["-"], **shared, **overrides)
        if stage == "infer":
            return InferSpec(source="-", device=gpu.local or "auto", **shared, **overrides)
        training: dict[str, Any] = {
            "model": common["model"], "recipe": sweep.recipe, "overrides": overrides,
            "download": sweep.download, "device": gpu.local or "auto",
            "max_steps": sweep.max_steps,
            "expect_gpu": gpu.gpu_name or ("cpu" if gpu.local == "cpu" else common["gpu_type"]),
            "target_accuracy": (sweep.targets or [None])[0],
        }  # fmt: skip
        if stage == "transfer":
            return TransferSpec(init_from="-", **shared, **training)
        return TrainSpec(**shared, **training)


def _deploy(
    maker: _Maker, jobs: list[JobPlan], common: dict[str, Any], dataset: str,
    sources: tuple[str, ...],
) -> None:  # fmt: skip
    """An export job from ``sources`` (one trained network, or the winner's candidates) and,
    if the sweep infers, an inference job after it: each one process on one GPU."""
    common = {**common, "gpus_per_node": 1, "nodes": 1}
    export = maker.make("export", common, dataset, sources)
    jobs.append(export)
    if "infer" in maker.config.sweep.stages:
        jobs.append(maker.make("infer", common, dataset, (export.id,)))


def plan(config: ClusterConfig) -> list[JobPlan]:
    """All jobs of the sweep, each after the jobs it depends on."""
    sweep = config.sweep
    # Settings that change what a job computes but are not in its recipe; and the sweep's
    # name, so that two sweeps of one store never share a job (or its folder and results).
    identity: dict[str, Any] = {"sweep": config.name}
    if sweep.max_steps is not None:
        identity["max_steps"] = sweep.max_steps
    with _bulk():
        return _plan(config, _Maker(config, identity))


def _plan(config: ClusterConfig, maker: _Maker) -> list[JobPlan]:
    sweep = config.sweep
    stages = set(sweep.stages)
    jobs: list[JobPlan] = []
    candidates: dict[tuple[str, str], list[str]] = defaultdict(list)
    axes = itertools.product(sweep.models, sweep.datasets, sweep.gpu_types, sweep.node_counts,
                             sweep.seeds, range(sweep.repeats))  # fmt: skip
    for model, dataset, gpu_type, nodes, seed, repeat in axes:
        common = {
            "model": model,
            "gpu_type": gpu_type,
            "gpus_per_node": sweep.gpus_per_job,
            "nodes": nodes,
            "seed": seed,
            "repeat": repeat,
        }
        train = maker.make("train", common, dataset, ())
        jobs.append(train)
        trained = [train]
        if "transfer" in stages:
            for target in sweep.transfer_to:
                transfer = maker.make("transfer", common, target, (train.id,))
                jobs.append(transfer)
                trained.append(transfer)
        if "export" not in stages:
            continue
        if sweep.deploy == "all":
            for source in trained:
                _deploy(maker, jobs, common, source.dataset, (source.id,))
        else:
            for source in trained:
                candidates[(source.stage, source.dataset)].append(source.id)
    # The winner of each (stage, dataset): the export job waits for every candidate, picks
    # the best of them from the store, and names its network when it starts.
    for (_, dataset), ids in candidates.items():
        for gpu_type in sweep.gpu_types:
            common = {
                "model": WINNER, "gpu_type": gpu_type, "gpus_per_node": 1, "nodes": 1,
                "seed": sweep.seeds[0], "repeat": 0,
            }  # fmt: skip
            _deploy(maker, jobs, common, dataset, tuple(ids))
    return jobs


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
