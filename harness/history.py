"""History across the sweeps of a store (``resnest-bench history``): each figure with an
interval, per GPU type and model, sweep after sweep in the order they were submitted; the
steps, where its level changed; and what changed in the runs' provenance at each step.

A step is found by binary segmentation: of every cut of a series in two, the one whose two
sides' runs differ most by the Mann-Whitney U test (``harness.stats.split_p_values``), kept
where its p is below 0.01 divided by the number of cuts tried (Bonferroni: a series without
a step shows one in at most one case in a hundred) and the medians of the two sides differ by
``min_change`` percent or more; then each side is searched again. A time to a target is
searched where every run reached it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from harness import stats
from harness.figures import headline, run_values
from harness.headlines import headline_of
from records import packages
from records.store import Store

# 0.05 found a second, false step beside a real one in 8% of series (each side searched
# again); 0.01 in 1%, and still finds an 8% step at a 2% CV in the newest sweep alone.
ALPHA = 0.01
# The provenance fields a step is explained by, as history names them.
EXPLAINED = {
    "gpu_name": "GPU",
    "driver": "driver",
    "cuda": "CUDA",
    "cudnn": "cuDNN",
    "torch": "torch",
    "code_commit": "commit",
    "code_version": "version",
}


@dataclass
class Point:
    sweep: str
    value: float | None
    low: float | None
    high: float | None
    runs: int


@dataclass
class Step:
    index: int  # the first sweep after the step
    before: str  # the sweep before it
    after: str
    change_pct: float
    p: float
    differences: list[str] = field(default_factory=list)


@dataclass
class Series:
    row: str  # the GPU type (and node count)
    model: str
    figure: str
    points: list[Point]
    steps: list[Step]


def series_of(
    store: Store, sweeps: list[str] | None = None, min_change: float = 1.0
) -> list[Series]:
    """Every figure with an interval, per row (GPU type) and model, over the store's sweeps
    (or ``sweeps``, in their order) that measured it, with its steps (without their
    provenance: ``explain``)."""
    names = store.sweeps() if sweeps is None else sweeps
    values: dict[tuple[str, str, str], list[tuple[str, list]]] = {}
    for sweep in names:
        for (row, model), by_figure in run_values(store, sweep).items():
            for figure, runs in by_figure.items():
                if runs:
                    values.setdefault((row, model, figure), []).append((sweep, runs))
    out = []
    for (row, model, figure), per_sweep in sorted(values.items()):
        rule = headline_of(figure).rule
        points = []
        for sweep, runs in per_sweep:
            value = headline(runs)[0] if rule == "target" else statistics.median(
                v for v in runs if v is not None
            )  # fmt: skip
            low, high = stats.interval(runs, rule)
            points.append(Point(sweep, value, low, high, len(runs)))
        found = []
        if all(None not in runs for _, runs in per_sweep):
            groups = [runs for _, runs in per_sweep]
            found = find_steps(groups, [s for s, _ in per_sweep], min_change)
        out.append(Series(row, model, figure, points, found))
    return out


def find_steps(groups: list[list[float]], names: list[str], min_change: float = 1.0) -> list[Step]:
    """The steps of a series of groups of runs (binary segmentation: see the module)."""
    found: list[Step] = []

    def search(lo: int, hi: int) -> None:
        if hi - lo < 2:
            return
        tests = stats.split_p_values(groups[lo:hi])
        tried = [(*test, cut) for cut, test in enumerate(tests, start=lo + 1) if test]
        if not tried:
            return
        p, _, cut = min(tried, key=lambda t: (t[0], -t[1]))  # the smallest p, the largest z
        before = statistics.median(v for g in groups[lo:cut] for v in g)
        after = statistics.median(v for g in groups[cut:hi] for v in g)
        change = 100 * (after - before) / abs(before) if before else float("inf")
        if p < ALPHA / len(tried) and abs(change) >= min_change:
            found.append(Step(cut, names[cut - 1], names[cut], round(change, 2), p))
            search(lo, cut)
            search(cut, hi)

    search(0, len(groups))
    return sorted(found, key=lambda step: step.index)


def explain(store: Store, series: list[Series]) -> None:
    """Fill each step's ``differences``: what differs between the provenance of the runs of
    its row and model in the sweep before and in the sweep after (the newest attempt of each
    training job): GPU names, driver, CUDA, cuDNN, torch, the code's commit, and each
    package that changed (name and both versions)."""
    cache: dict[str, dict[tuple[str, str], dict[str, set]]] = {}
    lists: dict[str, dict[str, str]] = {}
    for s in series:
        for step in s.steps:
            gpu = s.row.split(" (", 1)[0]  # "v100 (2 nodes)": the v100 runs
            before, after = (_provenance(store, name, cache).get((gpu, s.model), {})
                             for name in (step.before, step.after))  # fmt: skip
            step.differences = _differences(store, before, after, lists)


def _provenance(store: Store, sweep: str, cache: dict) -> dict[tuple[str, str], dict[str, set]]:
    """(GPU type, model) -> provenance field -> the values its training runs had."""
    if sweep in cache:
        return cache[sweep]
    from records import queries

    jobs = queries.sweep_jobs(store, sweep)
    newest = {row.job_id: row for row in queries.provenance_rows(store, sweep)}
    found: dict[tuple[str, str], dict[str, set]] = {}
    for job_id, row in newest.items():
        job = jobs.get(job_id)
        if job is None or job.stage != "train":
            continue
        side = found.setdefault((job.gpu_type, job.model), {})
        for name in (*EXPLAINED, "packages_sha256"):
            value = getattr(row, name)
            if value not in (None, ""):
                side.setdefault(name, set()).add(str(value))
    cache[sweep] = found
    return found


def _differences(store: Store, before: dict, after: dict, lists: dict) -> list[str]:
    out = []
    for name, label in EXPLAINED.items():
        old, new = before.get(name, set()), after.get(name, set())
        if old != new:
            out.append(f"{label}: {_joined(old)} -> {_joined(new)}")
    old_sets, new_sets = before.get("packages_sha256", set()), after.get("packages_sha256", set())
    if old_sets != new_sets:
        old_packages, new_packages = (
            _packages(store, old_sets, lists),
            _packages(store, new_sets, lists),
        )
        if old_packages is None or new_packages is None:
            out.append("packages: the set differs (its list was not kept)")
        else:
            out.extend(
                f"package {change}" for change in packages.changes(old_packages, new_packages)
            )
    return out


def _packages(store: Store, digests: set[str], lists: dict) -> dict[str, str] | None:
    """Name -> version over the package sets of ``digests`` (several versions of a name
    joined by "|"); None where a set's list was not kept (a store of an older version)."""
    missing = digests - lists.keys()
    if missing:
        lists.update(store.package_lists(sorted(missing)))
    if not digests <= lists.keys():
        return None
    merged: dict[str, set[str]] = {}
    for digest in digests:
        for name, version in lists[digest].items():
            merged.setdefault(name, set()).add(version)
    return {name: "|".join(sorted(versions)) for name, versions in merged.items()}


def _joined(values: set[str]) -> str:
    return ", ".join(sorted(values)) or "(none)"


def as_rows(series: list[Series]) -> list[dict[str, Any]]:
    """A row per step (row, model, figure, the sweeps on its two sides, the change, p and
    what differs): the history's table."""
    return [
        {
            "gpu_type": s.row,
            "model": s.model,
            "figure": s.figure,
            "before": step.before,
            "after": step.after,
            "change %": step.change_pct,
            "p": float(f"{step.p:.3g}"),
            "differences": "; ".join(step.differences) or "(no provenance differs)",
        }
        for s in series
        for step in s.steps
    ]
