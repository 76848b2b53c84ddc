"""cluster.yaml: the site (launcher, GPU types, results store) and the sweep, validated.

Every problem is reported as one line: the file, the field path and what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from records.errors import SpecError, UserError
from records.spec import DATASETS, STAGES, check_device
from records.spec import check_options as check_job_options

# SLURM's forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
SLURM_TIME = r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2})$"
SLURM_MEMORY = r"^\d+[KMGT]?$"
GRES = r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$"  # gpu or gpu:v100; the count is added per job


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _JobEnvironment(_Strict):
    """How a job's process is set up on its node: shell lines first (``module load``, an
    environment's activation), then the variables, then the interpreter that runs the job."""

    setup: list[str] = []  # shell lines, run in order before the job; one failing fails it
    python: str | None = None  # the interpreter on the node (default: the one submitting)
    env: dict[Annotated[str, Field(pattern=ENV_NAME)], str] = {}

    @field_validator("python")
    @classmethod
    def _interpreter(cls, python: str | None) -> str | None:
        # An empty value would start the job with no interpreter at all, on the node, later.
        if python is not None and not python.strip():
            raise ValueError(
                "expected the interpreter's path or name (leave the key out for the one "
                "that submits), got an empty string"
            )
        return python


class GpuType(_JobEnvironment):
    """How to get one GPU of a type: SLURM, Ray, or the machine at hand (``local``). Its
    ``setup``, ``python`` and ``env`` add to the launcher's (see ``environment_for``)."""

    local: str | None = None  # cpu, cuda, cuda:N
    partition: str | None = None
    gres: str | None = Field(default=None, pattern=GRES)  # e.g. gpu:v100
    constraint: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = Field(default=None, pattern=SLURM_TIME)  # SLURM time limit, "08:00:00"
    cpus_per_gpu: PositiveInt = 4
    mem_per_gpu: str | None = Field(default=None, pattern=SLURM_MEMORY)  # e.g. 32G
    ray_accelerator: str | None = None  # Ray accelerator type, e.g. V100
    ray_resource: str | None = None  # or a custom Ray resource name
    price_per_gpu_hour: NonNegativeFloat | None = None
    # The GPU's peak TFLOP/s in the math its jobs use (fp32, or tf32 / bf16 where they do),
    # for the tables' fraction of peak (mfu_pct); default: the known GPUs' (harness.peaks)
    peak_tflops: PositiveFloat | None = None
    # A fragment of the GPU's name (as NVML reports it) that a job of this type must show,
    # e.g. "V100"; default: the GPU type's own name, or "cpu" for local: cpu. Runs on another
    # GPU are flagged in the tables.
    gpu_name: str | None = None

    @field_validator("local")
    @classmethod
    def _device(cls, local: str | None) -> str | None:
        try:
            return None if local is None else check_device(local)  # the job's own rule
        except SpecError as exc:
            raise ValueError(str(exc).removeprefix("device: ")) from None


class LocalSettings(_Strict):
    max_parallel: PositiveInt | None = None  # default: one per visible GPU, else 1


class SlurmSettings(_Strict):
    array_parallelism: PositiveInt = 16
    requeue_on_preemption: bool = True
    # A cap of the user's own on the jobs queued at once (the site's limits apply anyway):
    # the rest wait in the store and go out as room frees.
    max_queued: PositiveInt | None = None
    # How many times a job whose failure belongs to its host (NODE_FAIL, a rendezvous or
    # connection error, a collective timeout) is submitted again, with that host excluded
    max_retries: int = Field(default=1, ge=0)
    # Jobs left waiting for room are submitted by a feeder job, from a compute node, as room
    # frees (nothing stays running on the login node); false: by status and submit --wait
    feeder: bool = True
    # Where the feeder (one CPU, a few minutes) runs; by default the cluster's default partition
    feeder_partition: str | None = None


class RaySettings(_Strict):
    # auto (RAY_ADDRESS, or the cluster this machine is in), local (a Ray for the sweep),
    # HOST:PORT or ray://HOST:PORT
    address: str = Field(default="auto", pattern=r"^(auto|local|(ray://)?[\w.\-\[\]:]+:\d+)$")
    max_retries: int = Field(default=2, ge=0)


class Launcher(_JobEnvironment):
    """Which launcher runs the jobs, its settings, and the job environment every GPU type
    starts from."""

    kind: Literal["local", "slurm", "ray"] = "local"
    local: LocalSettings = LocalSettings()
    slurm: SlurmSettings = SlurmSettings()
    ray: RaySettings = RaySettings()


Fraction = Annotated[float, Field(gt=0, le=1)]


def _merged(overrides: dict[str, Any], where: str, **settings: Any) -> dict[str, Any]:
    """``overrides`` with the sweep's own ``settings`` (its fields, those not None) added as
    the recipe fields they name (``transfer_epochs`` is the transfer recipe's ``epochs``): a
    setting given in both places is refused, for neither may silently win."""
    merged = dict(overrides)
    for field, value in settings.items():
        name = field.removeprefix("transfer_")
        if value is None:
            continue
        if name in merged:
            raise ValueError(
                f"{where}: {name} is {merged[name]!r} here and {value!r} in sweep.{field}: "
                "give it in one place"
            )
        merged[name] = value
    return merged


class Sweep(_Strict):
    models: list[str] = Field(min_length=1)
    datasets: list[Literal[DATASETS]] = Field(min_length=1)  # type: ignore[valid-type]
    transfer_to: list[Literal[DATASETS]] = []  # type: ignore[valid-type]
    recipe: Literal["study", "fast"] = "study"
    overrides: dict[str, Any] = {}  # the training jobs' recipe fields
    epochs: PositiveInt | None = None
    # FIRST:LAST: a torch.profiler trace of those steps of every training job, on rank 0
    # (the recipe's ``profile``; ``resnest-bench rerun --set profile=...`` for one job)
    profile: str = ""
    transfer_overrides: dict[str, Any] = {}  # the transfer jobs' (their recipe is their own)
    transfer_epochs: PositiveInt | None = None
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] = Field(default=[0], min_length=1)
    gpus_per_job: PositiveInt = 1  # per node: a job of N nodes has N x gpus_per_job GPUs
    # Nodes per training job, or a list of node counts (an axis: each run on each count, and
    # the table's scaling column compares them).
    nodes: PositiveInt | list[PositiveInt] = 1
    gpu_types: list[str] = Field(min_length=1)
    repeats: PositiveInt = 1
    # Test accuracies (fractions) to report the time to: one, or a list. The table gives, per
    # target, the training time the runs took to reach it and how many did; each training
    # job is also given the first as its --target-accuracy.
    target_accuracy: Fraction | list[Fraction] | None = None
    stages: list[Literal[STAGES]] = ["train"]  # type: ignore[valid-type]
    data_dir: str = "data"
    download: bool = False
    max_steps: PositiveInt | None = None  # cap on steps per epoch: smoke runs
    # Options of the export and infer jobs (python -m jobs.export / jobs.infer --help), e.g.
    # export_options: {no_aoti: true}; infer_options: {runtimes: [eager, onnxruntime],
    # batches: [1, 64], threads: 4}
    export_options: dict[str, Any] = {}
    infer_options: dict[str, Any] = {}
    # Which trained networks the export and infer stages deploy: "all" of them, or, as the
    # study did, only the "winner": per dataset (and stage, train or transfer) the run with
    # the best final test accuracy, chosen from the store when those runs have ended. The
    # winner is exported and run once per GPU type of the sweep.
    deploy: Literal["all", "winner"] = "all"

    @field_validator("nodes")
    @classmethod
    def _node_counts(cls, nodes: int | list[int]) -> int | list[int]:
        if isinstance(nodes, list) and (not nodes or len(set(nodes)) != len(nodes)):
            raise ValueError("expected a node count, or a list of different node counts")
        return nodes

    @field_validator("profile")
    @classmethod
    def _profile_window(cls, text: str) -> str:
        from jobs.recipe import profile_window

        profile_window(text)  # its ValueError names the form expected
        return text

    @field_validator("target_accuracy")
    @classmethod
    def _targets(cls, targets: float | list[float] | None) -> float | list[float] | None:
        if isinstance(targets, list) and (not targets or len(set(targets)) != len(targets)):
            raise ValueError("expected a fraction, or a list of different fractions")
        return targets

    @property
    def targets(self) -> list[float]:
        targets = self.target_accuracy
        return [] if targets is None else targets if isinstance(targets, list) else [targets]

    @property
    def node_counts(self) -> list[int]:
        return self.nodes if isinstance(self.nodes, list) else [self.nodes]

    @field_validator("export_options", "infer_options")
    @classmethod
    def _job_options(cls, options: dict[str, Any], info: Any) -> dict[str, Any]:
        check_job_options(info.field_name.removesuffix("_options"), options)  # the job's own parser
        return options

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        from resnest import list_models

        known = list_models()
        for name in models:
            if name not in known:
                raise ValueError(f"unknown model {name!r}; expected one of {', '.join(known)}")
        return models

    @model_validator(mode="after")
    def _recipes_valid(self) -> Sweep:
        """The recipes the jobs will run, built and checked as the jobs build them."""
        from jobs.recipe import RecipeError, get_recipe

        try:
            get_recipe(self.recipe, "train", self.train_recipe_overrides())
        except RecipeError as exc:
            raise ValueError(f"overrides: {exc}") from None
        try:
            get_recipe(self.recipe, "transfer", self.transfer_recipe_overrides())
        except RecipeError as exc:
            raise ValueError(f"transfer_overrides: {exc}") from None
        return self

    def train_recipe_overrides(self) -> dict[str, Any]:
        """What the training jobs change in their recipe: ``overrides``, with ``epochs`` and
        ``profile`` as theirs."""
        profile = self.profile or None
        return _merged(self.overrides, "overrides", epochs=self.epochs, profile=profile)

    def transfer_recipe_overrides(self) -> dict[str, Any]:
        """What the transfer jobs change in their recipe: ``transfer_overrides``, with
        ``transfer_epochs`` as its epochs."""
        return _merged(self.transfer_overrides, "transfer_overrides",
                       transfer_epochs=self.transfer_epochs)  # fmt: skip

    @model_validator(mode="after")
    def _stages_in_order(self) -> Sweep:
        if "train" not in self.stages:
            raise ValueError("stages: a sweep starts with train")
        if "transfer" in self.stages and not self.transfer_to:
            raise ValueError("stages: transfer needs transfer_to (the target datasets)")
        return self


class Reference(_Strict):
    """A figure's expected value on a GPU type, for ``table --check``: the figure regresses
    when its 95% interval lies wholly beyond the value moved by ``tolerance_pct`` the worse
    way (``harness.references``)."""

    value: float = Field(gt=0, allow_inf_nan=False)  # times, rates, accuracy, energy
    tolerance_pct: NonNegativeFloat = 0.0


class ClusterConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    results_dir: str = "results"
    store: str | None = None  # SQLAlchemy URL; default SQLite under results_dir
    launcher: Launcher = Launcher()
    gpu_types: dict[str, GpuType] = Field(min_length=1)
    sweep: Sweep
    # GPU type -> model -> figure (a tidy name: epoch_time_s, images_per_s, final_acc_pct,
    # energy_per_image_mj, time_to_93pct_s) -> its reference
    references: dict[str, dict[str, dict[str, Reference]]] = {}

    @model_validator(mode="after")
    def _references_known(self) -> ClusterConfig:
        """Each reference names a GPU type of gpu_types, a model of the zoo and a figure
        with an interval (the time to a target: one of sweep.target_accuracy)."""
        if not self.references:
            return self
        from harness.headlines import with_targets
        from resnest import list_models

        figures = with_targets(self.sweep.targets)
        models = list_models()
        for gpu, by_model in self.references.items():
            if gpu not in self.gpu_types:
                raise ValueError(
                    f"references: {gpu!r} is not a GPU type of gpu_types "
                    f"({', '.join(self.gpu_types)})"
                )
            for model, by_figure in by_model.items():
                if model not in models:
                    raise ValueError(f"references.{gpu}: unknown model {model!r}")
                for figure in by_figure:
                    if figure not in figures:
                        raise ValueError(
                            f"references.{gpu}.{model}: unknown figure {figure!r}; expected "
                            f"one of {', '.join(figures)}"
                        )
        return self

    @model_validator(mode="after")
    def _nodes_reachable(self) -> ClusterConfig:
        """The local launcher runs every job on this one machine: a job of several nodes
        would silently run on one."""
        many = [n for n in self.sweep.node_counts if n > 1]
        if self.launcher.kind == "local" and many:
            raise ValueError(
                f"sweep.nodes: {self.sweep.nodes} with the local launcher, which runs every "
                f"job on this one machine: use launcher.kind slurm or ray for {max(many)} nodes"
            )
        return self

    @model_validator(mode="after")
    def _gpu_types_defined(self) -> ClusterConfig:
        for name in self.sweep.gpu_types:
            if name not in self.gpu_types:
                defined = ", ".join(self.gpu_types)
                raise ValueError(
                    f"sweep.gpu_types: {name!r} is not defined in gpu_types ({defined})"
                )
        return self


@dataclass(frozen=True)
class JobEnvironment:
    setup: tuple[str, ...] = ()
    python: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"setup": list(self.setup), "python": self.python, "env": dict(self.env)}


def environment_for(config: ClusterConfig, gpu_type: str) -> JobEnvironment:
    """The environment of a job on ``gpu_type``: the launcher's setup lines then the GPU
    type's, the GPU type's python if it names one, and both sets of variables (the GPU
    type's win)."""
    base, gpu = config.launcher, config.gpu_types[gpu_type]
    return JobEnvironment(
        setup=(*base.setup, *gpu.setup),
        python=gpu.python or base.python,
        env=tuple({**base.env, **gpu.env}.items()),
    )


def load(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster.yaml; raise UserError with one line on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level")
    try:
        config = ClusterConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: {_describe(exc)}") from None
    data_dir = Path(config.sweep.data_dir)
    needs_files = set(config.sweep.datasets + config.sweep.transfer_to) - {"synthetic"}
    if needs_files and not config.sweep.download and not data_dir.is_dir():
        raise UserError(
            f"{path}: sweep.data_dir: folder {data_dir} does not exist "
            f"(needed for {', '.join(sorted(needs_files))}; or set download: true)"
        )
    return config


def with_launcher(config: ClusterConfig, kind: str, path: str | Path) -> ClusterConfig:
    """The config with another launcher (``submit --launcher``), checked again as a whole:
    what one launcher can run, another may not."""
    data = config.model_dump(mode="python")
    data["launcher"]["kind"] = kind
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path} with --launcher {kind}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    # A validator of a whole section names the field inside it: "stages: ..." in sweep.
    inner = re.match(r"^([a-z_][a-z_.]*): ", message)
    if error["type"] == "value_error" and inner:
        loc = f"{loc}.{inner[1]}" if loc else inner[1]
        message = message[inner.end() :]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required, missing"
    elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
        message = f"{message}, got {error['input']!r}"
    return f"{loc}: {message}" if loc else message
