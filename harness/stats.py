"""How sure a figure is: 95% confidence intervals over a figure's runs.

A figure of the tables is a headline of per-run values (the median of the runs' epoch
times; for time to a target, ``harness.figures.headline``: MLPerf's rule from five runs on).
Its interval is a percentile bootstrap over the runs: the runs resampled with replacement
``RESAMPLES`` times (from 100 runs on fewer, ``VALUES`` values in all and at least
``MIN_RESAMPLES``: the interval is narrow there, and a table of 10,000 runs stays quick), the
headline of each resample, and the 2.5th and 97.5th percentiles of those. The resampling is
seeded, so a table printed twice gives the same intervals. Its coverage of a normal
median (``tests/test_stats.py`` prints it) is a little short of 95% from five runs on, and
far short with three.

A run that never reached a target counts in its resamples as MLPerf counts it (the slowest);
a resample whose headline is then "not reached" sits above every reached one, and an upper
bound among those is unbounded (None). One run gives no interval across runs (None, never an
interval of something else). Below five runs a bootstrap interval is narrower than the truth
(with three runs it is the range of the three at best): the table shows the runs beside it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

RESAMPLES = 2000
VALUES = 200_000
MIN_RESAMPLES = 200
LEVEL = 0.95
SEED = 20261207


def interval(values: Sequence[float | None], rule: str = "median") -> tuple[float | None, ...]:
    """The (low, high) 95% bootstrap interval of the headline of ``values``: ``median`` (None
    values left out), or ``target`` (``harness.figures.headline``'s rule, None: a run that
    did not get there). (None, None) with fewer than two runs to resample."""
    import numpy as np

    if rule == "median":
        values = [v for v in values if v is not None]
    if len(values) < 2:
        return (None, None)
    data = np.array([np.inf if v is None else float(v) for v in values])
    picks, picks_sorted = _resample_indices(len(data))
    data.sort()  # the interval does not hang on the order the runs came in
    if rule == "median":  # of sorted values, sorted picks are sorted: the median is the middle
        middle = data[picks_sorted[:, [(len(data) - 1) // 2, len(data) // 2]]]
        heads = middle.sum(axis=1) / 2
    else:
        heads = _target_headlines(data[picks])
    # the resamples' own headlines as bounds (no interpolation: "not reached" is +inf)
    low = np.percentile(heads, 50 * (1 - LEVEL), method="lower")
    high = np.percentile(heads, 50 * (1 + LEVEL), method="higher")
    return (
        float(low) if np.isfinite(low) else None,
        float(high) if np.isfinite(high) else None,
    )


@functools.lru_cache(maxsize=16)
def _resample_indices(n: int):
    """The resamples of ``n`` runs: rows of indices drawn with replacement from the seeded
    generator, and the same rows sorted; read-only, drawn once per ``n`` (a history of many
    sweeps asks for the same ``n`` thousands of times)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    resamples = max(MIN_RESAMPLES, min(RESAMPLES, VALUES // n))
    picks = rng.integers(0, n, (resamples, n))
    picks_sorted = np.sort(picks, axis=1)
    picks.flags.writeable = picks_sorted.flags.writeable = False
    return picks, picks_sorted


def ratio_interval(
    over: Sequence[float], under: Sequence[float]
) -> tuple[float | None, float | None]:
    """The 95% bootstrap interval of median(``over``) / median(``under``), each side's runs
    resampled on their own (a speedup: the reference's s/epoch over this GPU type's); (None,
    None) where a side has fewer than two runs or a resample divides 0 by 0; an upper bound
    of None where more than one resample in forty divides by a median of 0 (unbounded)."""
    import numpy as np

    if len(over) < 2 or len(under) < 2:
        return (None, None)
    rng = np.random.default_rng(SEED)
    medians = []
    for values in (over, under):
        data = np.asarray(values, dtype=float)
        resamples = max(MIN_RESAMPLES, min(RESAMPLES, VALUES // len(data)))
        picks = data[rng.integers(0, len(data), (resamples, len(data)))]
        medians.append(np.median(picks, axis=1))
    count = min(len(medians[0]), len(medians[1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = medians[0][:count] / medians[1][:count]
    if np.isnan(ratios).any():  # 0 / 0: no ratio
        return (None, None)
    low = np.percentile(ratios, 50 * (1 - LEVEL), method="lower")
    high = np.percentile(ratios, 50 * (1 + LEVEL), method="higher")
    # x / 0 is unbounded: an upper bound of None, as a target not reached
    return float(low), float(high) if np.isfinite(high) else None


def _target_headlines(samples):
    """``headline`` of each row, a run that did not get there being +inf: from five runs on,
    the mean without the fastest and the slowest (inf where a run left in did not get
    there: two or more in the row); below five, the median of those that got there (inf
    where none did)."""
    import numpy as np

    n = samples.shape[1]
    if n >= 5:
        finite = np.isfinite(samples)
        missing = n - finite.sum(axis=1)
        total = np.where(finite, samples, 0.0).sum(axis=1)
        low = samples.min(axis=1)
        high = np.where(finite, samples, -np.inf).max(axis=1)  # the slowest that got there
        # one run missing: it is the slowest, dropped; none: drop the slowest that got there
        kept = total - low - np.where(missing == 0, high, 0.0)
        return np.where(missing <= 1, kept / (n - 2), np.inf)
    samples = np.sort(samples, axis=1)
    finite = np.where(np.isfinite(samples), samples, np.nan)
    reached = np.isfinite(samples).any(axis=1)
    heads = np.full(samples.shape[0], np.inf)
    heads[reached] = np.nanmedian(finite[reached], axis=1)
    return heads


def half_width_pct(value: float | None, low: float | None, high: float | None) -> float | None:
    """The interval as one number beside its figure: its larger distance from the figure, in
    percent of it (``0.942 ±3.1%``); None where there is no interval or it is unbounded."""
    if value is None or low is None or high is None or value == 0:
        return None
    return round(100 * max(high - value, value - low) / abs(value), 1)


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The two-sided p-value of the Mann-Whitney U test of samples ``a`` and ``b`` (None with
    an empty side): exact (the distribution of U counted) where there are no ties and
    ``len(a) * len(b) <= 400``; otherwise the normal approximation with the tie correction
    and a continuity correction."""
    n, m = len(a), len(b)
    if not n or not m:
        return None
    pooled = sorted([*a, *b])
    u = _rank_sum(a, pooled) - n * (n + 1) / 2  # pairs with a above b, ties counted half
    return _u_p(u, n, m, pooled)


def split_p_values(groups: Sequence[Sequence[float]]) -> list[tuple[float, float] | None]:
    """For each way to cut ``groups`` (a series, such as the runs of each sweep in turn) in
    two, after group 1, 2, ..., k-1: ``mann_whitney_p`` of the runs before the cut against
    those after it, with the size of U's departure from its mean in standard deviations
    (which tells cuts apart where p underflows to 0); None where a side has no runs. The
    values are ranked once, so a series of many runs is tested at every cut in one pass."""
    import math
    from collections import Counter

    pooled = sorted(v for group in groups for v in group)
    sums = [_rank_sum(group, pooled) for group in groups]
    tie_term = sum(t**3 - t for t in Counter(pooled).values())
    total = len(pooled)
    out: list[tuple[float, float] | None] = []
    n = 0
    rank_sum = 0.0
    for group, group_sum in zip(groups[:-1], sums[:-1], strict=True):
        n += len(group)
        rank_sum += group_sum
        m = total - n
        if not n or not m:
            out.append(None)
            continue
        u = rank_sum - n * (n + 1) / 2
        variance = n * m / 12 * ((total + 1) - tie_term / (total * (total - 1)))
        z = abs(u - n * m / 2) / math.sqrt(variance) if variance > 0 else 0.0
        out.append((_u_p(u, n, m, pooled, tie_term), z))
    return out


def _u_p(u: float, n: int, m: int, pooled: list[float], tie_term: int | None = None) -> float:
    """The two-sided p-value of U for samples of ``n`` and ``m`` (``pooled``: both, sorted;
    ``tie_term``: the sum of t^3 - t over its runs of t equal values, where known)."""
    from collections import Counter

    if tie_term is None:
        tie_term = sum(t**3 - t for t in Counter(pooled).values())
    if not tie_term and n * m <= 400:
        counts = _u_counts(n, m)
        total = sum(counts)
        below = sum(counts[: int(u) + 1]) / total
        above = sum(counts[int(u) :]) / total
        return min(1.0, 2 * min(below, above))
    import math

    mean = n * m / 2
    variance = n * m / 12 * ((n + m + 1) - tie_term / ((n + m) * (n + m - 1)))
    if variance <= 0:
        return 1.0
    z = (abs(u - mean) - 0.5) / math.sqrt(variance)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def _rank_sum(a: Sequence[float], pooled: list[float]) -> float:
    """The sum of ``a``'s ranks (1-based; tied values share their mean rank) among the sorted
    ``pooled`` values of both samples."""
    import bisect

    return sum((bisect.bisect_left(pooled, x) + bisect.bisect_right(pooled, x) + 1) / 2 for x in a)


@functools.lru_cache(maxsize=64)
def _u_counts(n: int, m: int) -> list[int]:
    """How many orderings of ``n`` and ``m`` distinct values give U = 0, 1, ..., n * m."""
    # f[i][j][u]: rows of sizes i and j; the largest value is in the first sample (adds j to
    # U) or in the second (adds nothing).
    table: dict[tuple[int, int], list[int]] = {}
    for i in range(n + 1):
        for j in range(m + 1):
            if i == 0 or j == 0:
                table[i, j] = [1]
                continue
            with_a, with_b = table[i - 1, j], table[i, j - 1]
            size = i * j + 1
            row = [0] * size
            for k, c in enumerate(with_a):
                row[k + j] += c
            for k, c in enumerate(with_b):
                row[k] += c
            table[i, j] = row
    return table[n, m]


def verdict(
    this: Sequence[float], other: Sequence[float], lower_is_better: bool | None,
    min_change_pct: float = 0.0, alpha: float = 0.05,
) -> tuple[float | None, str | None]:  # fmt: skip
    """(p, verdict) of this sweep's runs against the other's: ``faster``/``slower`` for a
    figure of speed (``lower_is_better``: a time; False: a rate), ``higher``/``lower`` for
    another (None); ``same`` where the Mann-Whitney p is not below ``alpha`` or the medians
    differ by less than ``min_change_pct`` percent; None without runs on both sides."""
    import statistics

    p = mann_whitney_p(this, other)
    if p is None:
        return None, None
    here, there = statistics.median(this), statistics.median(other)
    change = 100 * (here - there) / abs(there) if there else float("inf")
    if p >= alpha or abs(change) < min_change_pct or here == there:
        return p, "same"
    if lower_is_better is None:
        return p, "higher" if here > there else "lower"
    better = (here < there) == lower_is_better
    return p, "faster" if better else "slower"


# Iglewicz and Hoaglin's rule for a modified z-score; at 3.0, one GPU type in twenty of four
# alike hosts had one flagged (tests/test_hosts.py prints the rates)
OUTLIER_MADS = 3.5
MAD_FLOOR_PCT = 1.0


def outlier_hosts(values: Sequence[float], hosts: Sequence[str | None]) -> list[str]:
    """The hosts whose runs are outliers against the other hosts': the median of a host's
    runs more than ``OUTLIER_MADS`` scaled MADs (1.4826 x the median absolute deviation, an
    estimate of sigma that a few slow runs do not inflate) from the median of the runs on
    every other host. The spread is at least ``MAD_FLOOR_PCT`` percent of that median, so
    that hosts of near-identical runs do not flag a difference of 0.1%. Needs three hosts:
    with two, which one is off cannot be told. ``values`` and ``hosts`` pair up, a run of an
    unknown host (None) being left out."""
    import statistics

    by_host: dict[str, list[float]] = {}
    for value, host in zip(values, hosts, strict=True):
        if host is not None and value is not None:
            by_host.setdefault(host, []).append(value)
    if len(by_host) < 3:
        return []
    flagged = []
    for host, mine in by_host.items():
        others = [v for other, vs in by_host.items() if other != host for v in vs]
        center = statistics.median(others)
        mad = 1.4826 * statistics.median(abs(v - center) for v in others)
        spread = max(mad, MAD_FLOOR_PCT / 100 * abs(center))
        if abs(statistics.median(mine) - center) > OUTLIER_MADS * spread:
            flagged.append(host)
    return sorted(flagged)
