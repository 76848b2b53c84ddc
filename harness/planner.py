"""Expand a sweep's axes into jobs with dependencies: train -> transfer -> export -> infer.

Each planned job carries its spec (``records.spec``), built here and nowhere else. A job's id
is a hash of its normalised settings (and of the ids it depends on), so the same sweep
planned twice gives the same ids, and changing one axis value changes only the jobs that
value touches.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig, JobEnvironment, Sweep, environment_for
from records.errors import UserError
from records.spec import ExportSpec, InferSpec, Spec, TrainSpec, TransferSpec

ID_LENGTH = 12
WINNER = "winner"  # the model of deployment jobs until the winner is known
FILTER_KEYS = ("id", "stage", "model", "dataset", "gpu_type", "seed", "repeat")


@dataclass(frozen=True)
class JobPlan:
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
    overrides: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    depends_on: tuple[str, ...] = ()
    spec: Spec | None = field(default=None, hash=False, compare=False)

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


class _Folders:
    """What every spec of a sweep shares, worked out once (a sweep may plan 100,000 jobs):
    the jobs' folder, the data folder, each GPU type's job environment."""

    def __init__(self, config: ClusterConfig) -> None:
        self.jobs = str(job_dir(config, "-").parent) + os.sep
        self.data = str(Path(config.sweep.data_dir).resolve())
        self.environments = {}
        for name in config.gpu_types:
            environment = environment_for(config, name)
            if environment != JobEnvironment():
                self.environments[name] = environment.as_dict()


def _spec(config: ClusterConfig, job: JobPlan, folders: _Folders) -> Spec:
    """The spec of a planned job; its inputs are its parents' folders."""
    sweep = config.sweep
    gpu = config.gpu_types[job.gpu_type]
    inputs = [folders.jobs + parent for parent in job.depends_on]
    common: dict[str, Any] = {
        "out_dir": folders.jobs + job.id, "job_id": job.id, "gpu_type": job.gpu_type,
        "dataset": job.dataset, "data_dir": folders.data,
    }  # fmt: skip
    if job.gpu_type in folders.environments:  # for the job's provenance
        common["environment"] = folders.environments[job.gpu_type]
    if job.stage == "export":
        return ExportSpec(sources=inputs, **common, **job.overrides)
    if job.stage == "infer":
        return InferSpec(source=inputs[0], device=gpu.local or "auto", **common, **job.overrides)
    training: dict[str, Any] = {
        "model": job.model, "recipe": job.recipe, "overrides": job.overrides, "seed": job.seed,
        "download": sweep.download, "device": gpu.local or "auto", "max_steps": sweep.max_steps,
        "expect_gpu": gpu.gpu_name or ("cpu" if gpu.local == "cpu" else job.gpu_type),
        "target_accuracy": (sweep.targets or [None])[0],
    }  # fmt: skip
    if job.stage == "transfer":
        return TransferSpec(init_from=inputs[0], **common, **training)
    return TrainSpec(**common, **training)


def job_id(normalised: dict[str, Any]) -> str:
    text = json.dumps(normalised, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def _make(
    stage: str,
    common: dict[str, Any],
    dataset: str,
    recipe: str,
    overrides: dict[str, Any],
    depends_on: tuple[str, ...],
    identity: dict[str, Any],
) -> JobPlan:
    normalised = {
        **identity,
        **common,
        "stage": stage,
        "dataset": dataset,
        "recipe": recipe,
        "overrides": overrides,
        "depends_on": list(depends_on),
    }
    return JobPlan(
        id=job_id(normalised),
        stage=stage,
        dataset=dataset,
        recipe=recipe,
        overrides=overrides,
        depends_on=depends_on,
        **common,
    )


def _deploy(
    jobs: list[JobPlan],
    common: dict[str, Any],
    dataset: str,
    sources: tuple[str, ...],
    sweep: Sweep,
    identity: dict[str, Any],
) -> None:
    """An export job from ``sources`` (one trained network, or the winner's candidates) and,
    if the sweep infers, an inference job after it: each one process on one GPU."""
    common = {**common, "gpus_per_node": 1, "nodes": 1}
    export = _make(
        "export", common, dataset, sweep.recipe, dict(sweep.export_options), sources,
        identity=identity,
    )  # fmt: skip
    jobs.append(export)
    if "infer" in sweep.stages:
        infer = _make(
            "infer", common, dataset, sweep.recipe, dict(sweep.infer_options), (export.id,),
            identity=identity,
        )  # fmt: skip
        jobs.append(infer)


def plan(config: ClusterConfig) -> list[JobPlan]:
    """All jobs of the sweep, each after the jobs it depends on."""
    sweep = config.sweep
    stages = set(sweep.stages)
    train_overrides = dict(sweep.overrides)
    if sweep.epochs is not None:
        train_overrides["epochs"] = sweep.epochs

    transfer_overrides = {} if sweep.transfer_epochs is None else {"epochs": sweep.transfer_epochs}
    # Settings that change what a job computes but are not in its recipe; and the sweep's
    # name, so that two sweeps of one store never share a job (or its folder and results).
    identity: dict[str, Any] = {"sweep": config.name}
    if sweep.max_steps is not None:
        identity["max_steps"] = sweep.max_steps
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
        train = _make(
            "train", common, dataset, sweep.recipe, train_overrides, (), identity=identity
        )
        jobs.append(train)
        trained = [train]
        if "transfer" in stages:
            for target in sweep.transfer_to:
                transfer = _make(
                    "transfer",
                    common,
                    target,
                    sweep.recipe,
                    transfer_overrides,
                    (train.id,),
                    identity=identity,
                )
                jobs.append(transfer)
                trained.append(transfer)
        if "export" not in stages:
            continue
        if sweep.deploy == "all":
            for source in trained:
                _deploy(jobs, common, source.dataset, (source.id,), sweep, identity)
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
            _deploy(jobs, common, dataset, tuple(ids), sweep, identity)
    folders = _Folders(config)
    return [replace(job, spec=_spec(config, job, folders)) for job in jobs]


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
