"""The regression gate: a sweep's figures against the references of its cluster.yaml
(``table --check``), or against another sweep (``table --compare OTHER
--fail-on-regression``), with one line per regression and, on demand, JUnit XML.

A figure regresses from its reference when it is worse than the reference beyond the
tolerance and that is not down to noise: the whole of its 95% interval over the runs
(``harness.stats.interval``) lies beyond the reference's bound (the reference's value
moved by its tolerance, the worse way). With one run there is no interval, and the run's
value is held to the bound alone: the line says so. A reference whose figure the sweep did
not measure fails too, so that a gate never passes on nothing.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.figures import headline, interval_names
from harness.headlines import headline_of
from records.errors import UserError

PASSED, REGRESSED, NOT_MEASURED = "passed", "regressed", "not measured"


@dataclass(frozen=True)
class Outcome:
    """One reference checked (or one compared figure, with ``--compare``)."""

    row: str  # the table's row: the GPU type (and node count)
    model: str
    figure: str
    result: str  # PASSED, REGRESSED or NOT_MEASURED
    line: str  # what the terminal prints for it

    @property
    def failed(self) -> bool:
        return self.result != PASSED


def check(
    rows: list[dict[str, Any]],
    references: dict[str, Any],
    planned: set[tuple[str, str]],
    counts: dict[tuple[str, str], dict[str, int]] | None = None,
) -> list[Outcome]:
    """Each reference (GPU type -> model -> figure -> ``{value, tolerance_pct}``) against
    the tidy rows of ``harness.figures.figures``: on a GPU type's row of the fewest nodes
    (its other node counts have figures of their own). References of a GPU type and model
    that the sweep did not plan (``planned``: its training jobs' (GPU type, model)) are not
    checked; one it planned but has no figures of is not measured. ``counts``: (row, model)
    -> figure -> how many runs measured it (the line's run count)."""
    outcomes = []
    for gpu, models in sorted(references.items()):
        shapes = [r for r in rows if r["gpu_type"] == gpu]
        fewest = min((r["nodes"] for r in shapes), default=1)
        for model, wanted in sorted(models.items()):
            row = next((r for r in shapes if r["nodes"] == fewest and r["model"] == model), None)
            if row is None and (gpu, model) not in planned:
                continue
            row = row or {"row": gpu, "gpu_type": gpu, "model": model, "runs": 0}
            measured = (counts or {}).get((row["row"], model), {})
            for figure, ref in sorted(wanted.items()):
                outcomes.append(_judge(row, figure, float(ref["value"]), ref["tolerance_pct"],
                                       measured.get(figure)))  # fmt: skip
    return outcomes


def _judge(
    row: dict[str, Any], figure: str, ref: float, tolerance: float, measured: int | None
) -> Outcome:
    better = headline_of(figure).better
    value = row.get(figure)
    low, high = (row.get(name) for name in interval_names(figure))
    where = f"{row['row']} {row['model']} {figure}"

    def outcome(result: str, text: str) -> Outcome:
        return Outcome(row["row"], row["model"], figure, result, f"{result}: {where} {text}")

    bound = ref * (1 + tolerance / 100) if better == "lower" else ref * (1 - tolerance / 100)
    limits = f"against the reference {ref:g} ± {tolerance:g}%"
    to_target = headline_of(figure).rule == "target"
    runs = row.get("target_runs") if to_target else row.get("runs")
    if measured is not None and not to_target:  # this figure's own runs (accuracy: finished)
        runs = measured
    if not runs or (value is None and not to_target):
        return outcome(NOT_MEASURED, f"was not measured: nothing to hold {limits}")
    if value is None:  # a time to a target that the runs' headline did not reach
        return outcome(REGRESSED, f"not reached (headline of {runs} runs) {limits}")
    change = f"{100 * (value - ref) / abs(ref):+.1f}%" if ref else "n/a"
    if low is None and high is None:  # one run: no interval, the value alone
        worse = value > bound if better == "lower" else value < bound
        said = f"{value:g} ({change}; 1 run, no interval) {limits}"
    else:  # the interval's better end: beyond the bound only if the whole interval is
        best = low if better == "lower" else high
        worse = best is not None and (best > bound if better == "lower" else best < bound)
        span = f"{_bound(low)}-{_bound(high)}"
        said = f"{value:g} ({change}; 95% interval {span} over {runs} runs) {limits}"
    return outcome(REGRESSED if worse else PASSED, said)


def _bound(value: float | None) -> str:
    return "open" if value is None else f"{value:g}"


def compared(
    table: list[dict[str, Any]],
    names: dict[str, tuple[str, str]],
    runs: dict[tuple[str, str], dict[str, list]],
    other_runs: dict[tuple[str, str], dict[str, list]],
    other: str,
) -> list[Outcome]:
    """The figures of ``harness.report.side_by_side`` that were tested, as outcomes: a
    verdict the worse way (slower; lower accuracy, higher energy) is a regression. ``names``:
    the table's figure column -> (model, tidy figure name). Also, from the two sweeps' runs
    (``harness.figures.run_values``): a target the other sweep's runs reached and this
    sweep's did not is a regression, and a GPU type and model the other sweep measured and
    this one did not is not measured."""
    outcomes = []
    for item in table:
        said = item.get("verdict")
        if said is None or item["figure"] not in names:
            continue
        model, figure = names[item["figure"]]
        better = headline_of(figure).better
        worse = said == "slower" or (said in ("higher", "lower") and said != better)
        change = item.get("change %")
        how = f"{change:+.1f}%, " if change is not None else ""
        text = f"{item['gpu_type']} {item['figure']} {how}p={item['p']:.3g}: {said}"
        result = REGRESSED if worse else PASSED
        outcomes.append(Outcome(item["gpu_type"], model, figure, result, f"{result}: {text}"))
    for (row, model), theirs in sorted(other_runs.items()):
        mine = runs.get((row, model))
        if mine is None or not mine.get("epoch_time_s"):
            line = f"{NOT_MEASURED}: {row} {model} was measured in {other}, not in this sweep"
            outcomes.append(Outcome(row, model, "runs", NOT_MEASURED, line))
            continue
        for figure, values in theirs.items():
            if headline_of(figure).rule != "target" or not values:
                continue
            here, there = headline(mine.get(figure) or [])[0], headline(values)[0]
            if here is None and there is not None and mine.get(figure):
                line = (f"{REGRESSED}: {row} {model} {figure}: not reached (headline of "
                        f"{len(mine[figure])} runs), {there:g} s in {other}")  # fmt: skip
                outcomes.append(Outcome(row, model, figure, REGRESSED, line))
    return outcomes


def write_junit(outcomes: list[Outcome], path: str, suite: str) -> None:
    """JUnit XML of the outcomes: a test case per reference (class: the row and model,
    name: the figure), a failure element for each regression or figure not measured. Written
    whole next to ``path`` and renamed."""
    target = Path(path)
    if not target.parent.is_dir():
        raise UserError(f"--junit {path}: no folder {str(target.parent)!r}")
    failures = sum(o.failed for o in outcomes)
    root = ET.Element("testsuites", name="resnest-bench", tests=str(len(outcomes)),
                      failures=str(failures))  # fmt: skip
    cases = ET.SubElement(root, "testsuite", name=suite, tests=str(len(outcomes)),
                          failures=str(failures))  # fmt: skip
    for o in outcomes:
        case = ET.SubElement(cases, "testcase", classname=f"{o.row}.{o.model}", name=o.figure)
        if o.failed:
            ET.SubElement(case, "failure", message=o.line, type=o.result.replace(" ", "_"))
        else:
            ET.SubElement(case, "system-out").text = o.line
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, target)
    except OSError as exc:
        raise UserError(f"--junit {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
