"""The figures with a 95% interval over their runs, declared once: where each one's per-run
values are, the rule of its headline, its unit and digits, and which way is better. The
tables' intervals (``harness.figures``), the comparisons' verdicts (``harness.report``), the
references of cluster.yaml (``harness.config``, ``harness.references``) and the history
(``harness.history``) all read them here."""

from __future__ import annotations

import re
from typing import NamedTuple


def target_key(target: float) -> str:
    """The name part of a target accuracy: 0.9 -> "90pct", 0.925 -> "92.5pct"."""
    return f"{round(100 * target, 2):g}pct"


class Headline(NamedTuple):
    """A figure with a 95% interval over its runs: where its per-run values are in a group
    of runs (``harness.figures``), the headline's rule (``median``, or ``target``: MLPerf's), the
    factor to the figure's unit and its digits; which way is better, and whether it is a
    speed (its verdicts say faster or slower, others higher or lower)."""

    values: str
    rule: str
    factor: float
    digits: int
    better: str  # "lower" or "higher"
    speed: bool

    @property
    def lower_is_better(self) -> bool | None:
        """``harness.stats.verdict``'s direction: for a speed, whether lower is better;
        None for another figure (its verdicts are higher or lower)."""
        return self.better == "lower" if self.speed else None


# The figures with an interval, which comparisons test and references check (with the time
# to each of the sweep's targets: ``with_targets``).
INTERVALS = {
    "epoch_time_s": Headline("epoch_time", "median", 1.0, 4, "lower", True),
    "images_per_s": Headline("images_per_sec", "median", 1.0, 4, "higher", True),
    "final_acc_pct": Headline("final_acc", "median", 100.0, 2, "higher", False),
    "energy_per_image_mj": Headline("energy_per_image_j", "median", 1e3, 3, "lower", False),
}


def with_targets(targets: list[float]) -> dict[str, Headline]:
    """``INTERVALS``, and the time to each target (its runs' times, the headline's rule)."""
    wanted = dict(INTERVALS)
    for target in targets:
        wanted[f"time_to_{target_key(target)}_s"] = Headline(
            f"to {target}", "target", 1.0, 4, "lower", True
        )
    return wanted


def headline_of(figure: str) -> Headline:
    """The ``Headline`` of a figure with an interval (``time_to_90pct_s`` included); KeyError
    for another."""
    if figure in INTERVALS:
        return INTERVALS[figure]
    found = re.fullmatch(r"time_to_(\d+(?:\.\d+)?)pct_s", figure)
    if found is None:
        raise KeyError(figure)
    return with_targets([float(found[1]) / 100])[figure]
