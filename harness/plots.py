"""`resnest-bench report`: a static HTML page with PNG plots, readable offline.

Everything comes from the results store: the comparison table, per-epoch rows, telemetry
samples and provenance. Plots are drawn with matplotlib (Agg, no display); the page links them
by relative paths and has no scripts, so the folder can be copied, mailed or served as it is.
"""

from __future__ import annotations

import html
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.render import cell, columns_of
from harness.report import comparison, deployment, per_model_blocks, prices_of, study_tables
from records import queries
from records.store import Store

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str, **grid) -> None:
    """Label a line or bar chart, save it as a PNG and free it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, **grid)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _grouped_bars(plt, path: Path, data, title: str, ylabel: str, errors=None) -> None:
    """``data``: {gpu_type: {model: value}} -> bars grouped by GPU type, one color per model;
    ``errors`` (the same shape): each bar's error bar, the half-width of its interval."""
    gpus = sorted(data)
    models = sorted({m for per in data.values() for m in per})
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(gpus))]
        ys = [data[gpu].get(model, 0) or 0 for gpu in gpus]
        spread = [((errors or {}).get(gpu) or {}).get(model) or 0 for gpu in gpus]
        ax.bar(xs, ys, width, label=model, color=COLORS[i % len(COLORS)],
               yerr=spread if any(spread) else None, capsize=3)  # fmt: skip
    ax.set_xticks(range(len(gpus)), gpus)
    ax.set_xlabel("GPU type")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(title="variant", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def accuracy_curves(rows: list[Any]) -> dict[tuple[str, str], dict[int, list[float]]]:
    """(model, GPU type) -> epoch -> the test accuracies (%) of its training runs (seeds and
    repeats) at that epoch."""
    curves: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.stage == "train" and r.test_acc is not None:
            curves[(r.model, r.gpu_type)][r.epoch].append(100 * r.test_acc)
    return curves


def _plot_accuracy(plt, path: Path, rows: list[Any]) -> bool:
    """Test accuracy per epoch: a line per network and GPU type, the median of its runs, and
    the band from the lowest to the highest run where there are several (a sweep of 1,000
    runs stays a readable plot of a few lines)."""
    curves = accuracy_curves(rows)
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, ((model, gpu), per_epoch) in enumerate(sorted(curves.items())):
        xs = sorted(per_epoch)
        runs = max(len(values) for values in per_epoch.values())
        color = COLORS[i % len(COLORS)]
        label = f"{model} on {gpu}" + (f" (median of {runs} runs)" if runs > 1 else "")
        ax.plot(xs, [statistics.median(per_epoch[x]) for x in xs], color=color,
                marker="o" if len(xs) <= 30 else None, label=label)  # fmt: skip
        if runs > 1:
            ax.fill_between(xs, [min(per_epoch[x]) for x in xs], [max(per_epoch[x]) for x in xs],
                            color=color, alpha=0.15, linewidth=0)  # fmt: skip
    _finish(plt, fig, ax, path, "epoch", "test accuracy (%)",
            "Test accuracy per epoch (training jobs)")  # fmt: skip
    return True


def utilisation_series(samples: list[Any], key: str) -> dict[tuple, list[tuple[float, float]]]:
    """(model, gpu_type, job, attempt, GPU index) -> [(seconds since the job's first sample,
    utilisation)]: a line per attempt and GPU, so that no line bridges the gap between an
    attempt and its rerun, nor mixes the GPUs of a DDP job."""
    first: dict[str, float] = {}
    series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        first.setdefault(s.job_id, s.time)
        if s.sample.get(key) is not None:
            line = (s.model, s.gpu_type, s.job_id, s.attempt, s.gpu_index)
            series[line].append((s.time - first[s.job_id], s.sample[key]))
    return dict(series)


def _plot_utilisation(plt, path: Path, store: Store, sweep: str) -> str | None:
    """GPU utilisation over time (CPU utilisation where the jobs had no NVML): a colour per
    network and GPU type, a line per attempt (dashed after the first) and GPU."""
    samples = queries.telemetry_samples(store, sweep)
    if not samples:
        return None
    gpu = any(s.sample.get("gpu_util") is not None for s in samples)
    series = utilisation_series(samples, "gpu_util" if gpu else "cpu_util")
    groups = sorted({(model, gpu_type) for model, gpu_type, *_ in series})
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    labelled = set()
    for (model, gpu_type, _, attempt, _), points in sorted(series.items()):
        group = groups.index((model, gpu_type))
        label = f"{model} on {gpu_type}" + (f", attempt {attempt + 1}" if attempt else "")
        ax.plot([t for t, _ in points], [v for _, v in points], "--" if attempt else "-",
                label=None if label in labelled else label,
                color=COLORS[group % len(COLORS)], linewidth=1)  # fmt: skip
        labelled.add(label)
    what = "GPU" if gpu else "CPU (no GPU telemetry)"
    _finish(plt, fig, ax, path, "time since the job's first sample (s)",
            f"{what} utilisation (%)", f"{what} utilisation over time")  # fmt: skip
    return what


def _plot_latency(plt, path: Path, store: Store, sweep: str) -> bool:
    """Median latency against batch size, a line per network and runtime (log-log)."""
    series = queries.latencies(store, sweep)
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, (label, points) in enumerate(sorted(series.items())):
        xs = sorted(points)
        style = "-" if i < len(COLORS) else "--"
        ax.plot(xs, [points[x] for x in xs], style, marker="o", label=label,
                color=COLORS[i % len(COLORS)])  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _finish(plt, fig, ax, path, "batch size (images)", "median latency per batch (ms)",
            "Inference latency against batch size, per runtime", which="both")  # fmt: skip
    return True


def _table_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = columns_of(rows)
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(row.get(k)))}</td>" for k in keys) + "</tr>"
        for row in rows
    )
    # A wide table scrolls inside its box on a narrow screen instead of widening the page.
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


STYLE = """
body { font-family: sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1100px;
       color: #222; }
.scroll { overflow-x: auto; max-width: 100%; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em 0; max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; max-width: 700px; }
.flag { color: #b00; }
"""


CHARTS = (
    ("epoch_time.png", "s/epoch", "Seconds per epoch (median, warm-up epoch excluded)",
     "seconds per epoch"),
    ("images_per_sec.png", "img/s", "Training throughput (median, warm-up excluded)",
     "images per second"),
    ("energy_per_image.png", "mJ/img", "Energy per training image (median)",
     "energy per image (mJ)"),
)  # fmt: skip


def _figures(out: Path, store: Store, sweep: str, table: list[dict]) -> list[tuple[str, str]]:
    """Draw every plot the sweep has data for; return (file name, caption) of each."""
    plt = _pyplot()
    figures: list[tuple[str, str]] = []
    for name, key, title, ylabel in CHARTS:
        data = {
            row["gpu_type"]: {
                k.rsplit(f" {key}", 1)[0]: value
                for k, value in row.items()
                if k.endswith(f" {key}") and value is not None
            }
            for row in table
        }
        errors = {
            gpu: {model: value * _percent(row.get(f"{model} {key} ±")) / 100
                  for model, value in per.items() if row.get(f"{model} {key} ±")}
            for row in table for gpu, per in [(row["gpu_type"], data[row["gpu_type"]])]
        }  # fmt: skip
        if any(data.values()):
            _grouped_bars(plt, out / name, data, title, ylabel, errors)
            figures.append((name, f"{title}, by GPU type and network variant; error bars: "
                                  "the 95% interval over the runs, as its larger distance "
                                  "from the figure on both sides."))  # fmt: skip
    if _plot_accuracy(plt, out / "accuracy.png", queries.epoch_curves(store, sweep)):
        figures.append(
            ("accuracy.png", "Test accuracy after each epoch, one line per training job.")
        )
    what = _plot_utilisation(plt, out / "utilisation.png", store, sweep)
    if what:
        figures.append(("utilisation.png", f"{what} utilisation sampled during training."))
    if _plot_latency(plt, out / "latency.png", store, sweep):
        figures.append(("latency.png", "Median inference latency per batch, per runtime."))
    return figures


def _percent(shown: str | None) -> float:
    """The number of an interval column's "±3.1%"."""
    return float(shown.strip("±%")) if shown else 0.0


def _provenance_rows(prov: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "job": p.job_id,
            "attempt": p.attempt,
            "host": p.host,
            "GPU": p.gpu_name or "(CPU)",
            "asked for": p.expected_gpu,
            "mismatch": "yes" if p.gpu_mismatch else "",
            "driver": p.driver,
            "CUDA": p.cuda,
            "torch": p.torch,
            "telemetry": p.telemetry,
        }
        for p in prov
    ]


def build(store: Store, sweep: str, out: Path) -> Path:
    """Write ``out/index.html`` and its PNGs; return the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    table = comparison(store, sweep, prices=prices_of(store, sweep))
    figures = _figures(out, store, sweep, table)
    prov = queries.provenance_rows(store, sweep)
    prov_rows = _provenance_rows(prov)
    blocks = "".join(
        f"<h3>{html.escape(model)}</h3>{_table_html(block)}"
        for model, block in per_model_blocks(table)
    )
    study = "".join(
        f"<h3>{html.escape(title)}</h3>{_table_html(t)}" for title, t in study_tables(table)
    )
    deployed = deployment(store, sweep)
    images = _images(figures, 700)
    mismatches = sum(1 for p in prov if p.gpu_mismatch)
    flag = (
        f'<p class="flag">{mismatches} run(s) ran on a GPU other than the type asked for: see '
        "Provenance.</p>"
        if mismatches
        else ""
    )
    body = f"""<h1>Sweep {html.escape(sweep)}</h1>
<p>Generated {time.strftime("%Y-%m-%d %H:%M:%S")} from {html.escape(store.url.split("://")[0])}
store. Epoch times, throughput and telemetry are medians over the epochs after the first
(warm-up) epoch, then over runs; CV is across runs and flagged (!) above 5%.</p>
{flag}
<h2>GPU comparison</h2>
{blocks or "<p>(no finished training epochs yet)</p>"}
<h2>The study's layout</h2>
{study or "<p>(no finished training runs yet)</p>"}
<h2>Deployment</h2>
{_table_html(deployed) if deployed else "<p>(no inference results)</p>"}
<h2>Plots</h2>
{images or "<p>(nothing measured yet)</p>"}
<h2>Provenance</h2>
{_table_html(prov_rows)}
"""
    return _page(out, sweep, body)


def _page(out: Path, title: str, body: str) -> Path:
    """``out/index.html`` with ``body``, written whole and renamed; its path."""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>resnest-bench: {html.escape(title)}</title>
<style>{STYLE}</style></head>
<body>
{body}</body></html>
"""
    path = out / "index.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page)
    os.replace(tmp, path)
    return path


def _images(images: list[tuple[str, str]], width: int) -> str:
    return "".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}" width="{width}" height="400">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in images
    )


def build_history(store: Store, series: list, out: Path) -> Path:
    """``resnest-bench history --out``: a page with a plot per figure over the store's sweeps
    (a line per GPU type and model, each point with its 95% interval, a dashed line at each
    step) and the table of steps with what changed; returns the page's path."""
    from harness.history import as_rows
    from harness.report import _column

    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    by_figure: dict[str, list] = defaultdict(list)
    for s in series:
        by_figure[s.figure].append(s)
    order = {name: i for i, name in enumerate(store.sweeps())}
    images = []
    for i, (figure, lines) in enumerate(sorted(by_figure.items())):
        sweeps = sorted({p.sweep for s in lines for p in s.points}, key=order.__getitem__)
        x_of = {name: x for x, name in enumerate(sweeps)}
        fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
        for k, s in enumerate(lines):
            shown = [p for p in s.points if p.value is not None]
            xs = [x_of[p.sweep] for p in shown]
            ys = [p.value for p in shown]
            below = [p.value - p.low if p.low is not None else 0 for p in shown]
            above = [p.high - p.value if p.high is not None else 0 for p in shown]
            color = COLORS[k % len(COLORS)]
            ax.errorbar(xs, ys, yerr=[below, above], marker="o", ms=3, capsize=2,
                        color=color, label=f"{s.row} {s.model}")  # fmt: skip
            open_ = [(x, p.value) for x, p in zip(xs, shown, strict=True) if p.high is None]
            if open_:  # an interval unbounded above (a target some resamples never reach)
                ax.plot(*zip(*open_, strict=True), "^", color=color, ms=7, fillstyle="none")
            for step in s.steps:
                ax.axvline(x_of[step.after] - 0.5, color=color, linestyle="--", alpha=0.6)
        ax.set_xticks(range(len(sweeps)), sweeps, rotation=60, ha="right", fontsize=7)
        name = f"history_{i}.png"
        _finish(plt, fig, ax, out / name, "sweep (in the order submitted)", _column(figure),
                f"{_column(figure)} across sweeps")  # fmt: skip
        images.append((name, f"{_column(figure)} ({figure}) per GPU type and network, each "
                             "point the sweep's figure with its 95% interval over the runs "
                             "(an open triangle: the interval is unbounded above); dashed: a "
                             "step"))  # fmt: skip
    body = f"""<h1>History across {len(order)} sweeps</h1>
<p>Generated {time.strftime("%Y-%m-%d %H:%M:%S")} from {html.escape(store.url.split("://")[0])}
store. A step: the level of a figure changed between two sweeps (Mann-Whitney U over the
runs on either side, p below 0.01 over the cuts tried, and a change of the median at least the
minimum), with what differs in the runs' provenance across it.</p>
<h2>Steps</h2>
{_table_html(as_rows(series))}
<h2>Plots</h2>
{_images(images, 900) or "<p>(nothing measured yet)</p>"}
"""
    return _page(out, "history", body)
