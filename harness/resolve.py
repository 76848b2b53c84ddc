"""``submit --until-resolved``: more runs only where a comparison is still unclear.

The comparisons a sweep asks for, on each figure to resolve (``--resolve``, by default
s/epoch): each pair of models on each GPU type (variant against variant), each GPU type
against the reference (the table's: its first row) per model, and with ``--compare OTHER``
each GPU type and model of this sweep against the same in the other sweep. A comparison is:

- ``different`` where the Mann-Whitney U test of the two sides' runs gives p below
  ``ALPHA`` and the 95% interval of the ratio of their medians (``harness.stats.
  ratio_interval``) lies wholly beyond the minimum change (outside 1 ± PCT/100);
- ``same`` where that interval lies wholly within 1 ± PCT/100: whatever the difference
  is, it is smaller than the minimum change;
- ``unresolved`` otherwise: the interval straddles the minimum change (or a side has fewer
  than two runs, and no interval).

After each wave the unresolved comparisons' cells (GPU type and model of this sweep) get one
more repeat of each seed; the hashed job ids make this cheap, as only the new repeats are
planned anew and run. It stops when every comparison is resolved, or when the budget of
added training jobs is spent (the last wave cut to fit it, cells in turn), and says which
comparisons remain unresolved.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from harness import stats
from harness.config import ClusterConfig
from harness.figures import run_values
from harness.headlines import headline_of
from harness.planner import JobPlan, plan
from records.store import Store

ALPHA = 0.05
DIFFERENT, SAME, UNRESOLVED = "different", "same", "unresolved"


@dataclass(frozen=True)
class Comparison:
    figure: str
    this: tuple[str, str]  # (row, model)
    that: tuple[str, str]
    this_sweep: str
    that_sweep: str
    low: float | None  # the 95% interval of median(this) / median(that)
    high: float | None
    p: float | None
    state: str

    def describe(self) -> str:
        def side(cell: tuple[str, str], sweep: str) -> str:
            return f"{cell[1]} on {cell[0]}" + (f" ({sweep})" if sweep != self.this_sweep else "")

        if self.low is None:
            interval = "no interval (fewer than 2 runs a side, or a ratio of 0 to 0)"
        else:
            top = "unbounded" if self.high is None else f"{self.high:.3f}"
            interval = f"ratio 95% interval {self.low:.3f}-{top}, p={self.p:.3g}"
        return (
            f"{self.figure}: {side(self.this, self.this_sweep)} vs "
            f"{side(self.that, self.that_sweep)}: {self.state} ({interval})"
        )


def judge(this: list[float], that: list[float], figure: str, min_change: float) -> tuple:
    """(low, high, p, state) of one comparison (see the module)."""
    if len(this) < 2 or len(that) < 2:
        return None, None, None, UNRESOLVED
    low, high = stats.ratio_interval(this, that)
    p, said = stats.verdict(this, that, headline_of(figure).lower_is_better, min_change, ALPHA)
    if low is None:
        return low, high, p, UNRESOLVED
    top = float("inf") if high is None else high  # unbounded above: "that" had medians of 0
    band = (1 - min_change / 100, 1 + min_change / 100)
    if said != "same" and (top < band[0] or low > band[1]):
        return low, high, p, DIFFERENT
    if band[0] <= low and top <= band[1]:
        return low, high, p, SAME
    return low, high, p, UNRESOLVED


def comparisons(
    store: Store,
    sweep: str,
    figures: list[str],
    min_change: float,
    compare: str | None = None,
) -> list[Comparison]:
    """Every comparison the sweep asks for, judged on its runs so far."""
    runs = run_values(store, sweep)
    other = run_values(store, compare) if compare else {}
    cells = sorted(runs)  # by row and model: the reference is the table's, its first row
    pairs: list[tuple[tuple[str, str], tuple[str, str], str]] = []
    for i, a in enumerate(cells):  # variant against variant, on one GPU type
        pairs += [(a, b, sweep) for b in cells[i + 1 :] if b[0] == a[0]]
    if cells:  # each GPU type against the reference, the first
        reference = cells[0][0]
        pairs += [(a, (reference, a[1]), sweep) for a in cells
                  if a[0] != reference and (reference, a[1]) in runs]  # fmt: skip
    if compare:
        pairs += [(a, a, compare) for a in cells if a in other]
    out = []
    for this, that, that_sweep in pairs:
        source = other if that_sweep != sweep else runs
        for figure in figures:
            # a run that did not reach a target is the slowest, as the table counts it
            mine = [_reached(v) for v in runs[this].get(figure, [])]
            theirs = [_reached(v) for v in source[that].get(figure, [])]
            judged = judge(mine, theirs, figure, min_change)
            out.append(Comparison(figure, this, that, sweep, that_sweep or sweep, *judged))
    return out


def _reached(value: float | None) -> float:
    return float("inf") if value is None else value


def next_wave(config: ClusterConfig, repeats: dict[tuple[str, str], int],
              cells: list[tuple[str, str]], budget: int) -> list[JobPlan]:  # fmt: skip
    """One more repeat of every seed of each cell (GPU type, model) in ``cells``: the
    training jobs only, at most ``budget`` of them (cells in turn)."""
    most = max(repeats.get(cell, config.sweep.repeats) for cell in cells) + 1
    planned = plan(config.model_copy(update={"sweep": config.sweep.model_copy(
        update={"repeats": most, "stages": ["train"]})}))  # fmt: skip
    per_cell = []
    for cell in cells:
        wanted = repeats.get(cell, config.sweep.repeats)
        per_cell.append([job for job in planned
                         if job.stage == "train" and (job.gpu_type, job.model) == cell
                         and job.repeat == wanted])  # fmt: skip
    # every cell has the sweep's seeds (datasets, node counts): as many jobs each
    order = [job for turn in zip(*per_cell, strict=True) for job in turn]
    return order[:budget]


def until_resolved(config: ClusterConfig, args: Any) -> dict[str, Any]:
    """Submit the sweep and wait, then more runs for the unresolved comparisons, wave after
    wave (see the module); the last wave's outcome, with ``unresolved`` and ``waves``."""
    from harness import sweep

    figures = args.resolve or ["epoch_time_s"]
    outcome = sweep.submit(config, args.only, progress=not args.quiet, wait=True,
                           timeout=args.timeout)  # fmt: skip
    store = outcome["store"]
    trained = [row for row in store.jobs(config.name) if row["stage"] == "train"]
    budget = args.budget
    if budget is None:  # at most as many training runs again as the sweep has
        budget = max(1, len(trained))
    final = dict(outcome["final"] or {})
    spent, waves = 0, 1
    repeats: dict[tuple[str, str], int] = {}  # each cell's next repeat: after those stored
    for row in trained:
        cell = (row["gpu_type"], row["model"])
        repeats[cell] = max(repeats.get(cell, 0), row["repeat"] + 1)
    while True:
        judged = comparisons(store, config.name, figures, args.min_change, args.compare)
        unresolved = [c for c in judged if c.state == UNRESOLVED]
        print(f"wave {waves}: {len(judged) - len(unresolved)} of {len(judged)} comparisons "
              f"resolved; {spent} of {budget} added runs spent", file=sys.stderr)  # fmt: skip
        if not unresolved or spent >= budget or outcome["final"] is None:
            break
        cells: list[tuple[str, str]] = []
        for c in unresolved:
            for cell, where in ((c.this, c.this_sweep), (c.that, c.that_sweep)):
                gpu = cell[0].split(" (", 1)[0]
                if where == config.name and (gpu, cell[1]) not in cells:
                    cells.append((gpu, cell[1]))
        wave = next_wave(config, repeats, cells, budget - spent)
        if not wave:
            break
        for job in wave:
            repeats[(job.gpu_type, job.model)] = job.repeat + 1
        waves += 1
        outcome = sweep.submit(config, [], progress=not args.quiet, wait=True,
                               timeout=args.timeout, jobs=wave)  # fmt: skip
        spent += len(outcome["launched"])
        final.update(outcome["final"] or {})
    return {**outcome, "final": final, "judged": judged, "unresolved": unresolved,
            "waves": waves, "spent": spent, "budget": budget,
            "timed_out": outcome["final"] is None}  # fmt: skip
