"""A sweep's comparison figures, computed once: a tidy row per GPU type (and node count) and
model, and per network, GPU type and runtime for the deployments.

Names carry their units (``epoch_time_s``, ``final_acc_pct``, ``energy_per_image_mj``);
every value is a number, a boolean or None (not measured), never a formatted string. The
terminal, Markdown and HTML tables (``harness.report``) format these same figures; the
machine formats (``table --format csv|json|parquet``) and ``harness.results`` write them as
they are.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Collection
from typing import Any

from harness import stats
from harness.headlines import target_key, with_targets
from harness.peaks import peak_tflops
from records import queries, summaries
from records.kinds import achieved_tflops
from records.schema import TELEMETRY
from records.spec import RUNTIMES
from records.store import Store

CV_FLAG = 0.05  # runs whose epoch times vary more than this across repeats are flagged
THROTTLE_FLAG = 0.05  # runs throttled in more than this share of their samples are counted
AGREEMENT_FLAG = 0.999  # top-1 agreement with PyTorch eager below this is flagged


def figures(
    store: Store,
    sweep: str,
    reference: str | None = None,
    prices: dict[str, float] | None = None,
    every_model: bool = False,
    exclude_hosts: Collection[str] = (),
) -> list[dict[str, Any]]:
    """A row per GPU type (``gpu_type``, ``nodes``; ``row`` is the table's row label) and
    model, for every pair the sweep trained or transferred (``every_model``: for every model
    on every GPU type, empty figures where a pair did not run, as the wide table shows them).

    Epoch time, images/s and the telemetry figures are medians over the epochs after the
    warm-up one, then medians over repeats and seeds; ``cv_pct`` is across repeats (across
    epochs when there is one run) and ``cv_flag`` says it is above 5%. ``prices`` (GPU type
    -> price per GPU-hour) gives ``cost_per_run``: training time x GPUs x price. Runs whose
    GPU was not the GPU type asked for are counted in ``gpu_mismatch_runs``, and runs whose
    GPUs were throttled (NVML's clock-event reasons) in more than 5% of their telemetry
    samples in ``throttled`` (None: no run had the reasons).

    Time to each target accuracy (the sweep's ``target_accuracy``, else the targets the runs
    were given): a run's training time up to the end of its first epoch at or above the
    target; ``time_to_90pct_s`` is the headline of the runs (``headline``), ``reached_90pct``
    how many got there, ``target_rule`` the rule behind the headline.

    ``queue_wait_s``: the median over the training runs of the time each waited in the queue
    (submission to start, summed over its attempts; ``records.queries.queue_waits``). Time to
    a trained network, ``time_to_trained_90pct_s``: per run, its queue wait plus its time to
    the target, headlined as time to the target is (runs whose wait is not known are left
    out of it).

    ``hosts``: how many hosts the timed runs came from; ``outlier_hosts``: those whose
    runs' epoch times are outliers against the other hosts' (``harness.stats.outlier_hosts``),
    comma-separated. Runs on ``exclude_hosts`` are left out of every figure.
    """
    targets = targets_of(store, sweep)
    groups, shapes = _groups(store, sweep, targets, exclude_hosts)
    labels = sorted(shapes, key=lambda label: shapes[label])
    models = sorted({model for _, model in groups})
    if reference in {gpu for gpu, _ in shapes.values()}:  # a GPU type: its fewest nodes
        reference = next(label for label in labels if shapes[label][0] == reference)
    timed = [label for label in labels if any(groups[(label, m)].get("epoch_time")
                                             for m in models if (label, m) in groups)]  # fmt: skip
    reference = reference or (timed or labels or [None])[0]  # the first with a timed run
    several = len({nodes for _, nodes in shapes.values()}) > 1
    rows = []
    for label in labels:
        gpu, nodes = shapes[label]
        for model in models:
            if (label, model) not in groups and not every_model:
                continue
            g = groups.get((label, model), {})
            ref = groups.get((reference, model), {}).get("epoch_time", [])
            row = {"row": label, "gpu_type": gpu, "nodes": nodes, "model": model,
                   **_figures(g, _median(ref), (prices or {}).get(gpu), targets)}  # fmt: skip
            row.update(_against_reference(g.get("epoch_time", []), ref, label == reference))
            if several:
                row["scaling_efficiency"] = _scaling(groups, shapes, label, model)
            rows.append(row)
    return rows


def _figures(
    g: dict[str, list], ref_time: float | None, price: float | None, targets: list[float]
) -> dict[str, Any]:
    """The figures of one model on one GPU type, from its group of runs."""
    epoch_time = _median(g.get("epoch_time", []))
    runs = len(g.get("epoch_time", []))
    # CV across runs; of one run, across its epochs
    cv = summaries.cv(g["epoch_time"]) if runs > 1 else (g["epoch_time_cv"][0] if runs else 0.0)
    train_times = [t for t in g.get("train_time", []) if t is not None]
    cost = None
    if price is not None and train_times:
        cost = round(statistics.median(train_times) / 3600 * g.get("gpus", [1])[0] * price, 4)
    med = {name: _median(g.get(name, []), None) for name in TELEMETRY}
    med["images_per_sec"] = _median(g.get("images_per_sec", []))
    outliers = stats.outlier_hosts(g.get("epoch_time", []), g.get("host", []))
    return _with_intervals(
        g,
        targets,
        {
            "epoch_time_s": epoch_time,
            "images_per_s": med["images_per_sec"],
            "speedup": round(ref_time / epoch_time, 2) if epoch_time and ref_time else None,
            "final_acc_pct": _pct(_median(g.get("final_acc", []))),
            "best_acc_pct": _pct(_median(g.get("best_acc", []))),
            **_target_figures(g, targets, price),
            "transfer_acc_pct": _pct(_median(g.get("transfer_acc", []))),
            "runs": runs,
            "cv_pct": round(100 * cv, 4),
            "cv_flag": round(100 * cv, 4) > 100 * CV_FLAG,
            "gpu_util_pct": _rounded(med["gpu_util_mean"], 1),
            "gpu_mem_gb": _rounded(med["gpu_mem_peak_bytes"], 3, 1e-9),
            "power_w": _rounded(med["power_mean_w"], 1),
            "energy_per_epoch_j": _rounded(med["energy_j"], 1),
            "energy_per_image_mj": _rounded(med["energy_per_image_j"], 3, 1e3),
            "cpu_util_pct": _rounded(med["cpu_util_mean"], 1),
            "cpu_energy_per_epoch_j": _rounded(med["cpu_energy_j"], 1),  # RAPL: packages
            "dram_energy_per_epoch_j": _rounded(med["dram_energy_j"], 1),
            "tflops": _rounded(_median(g.get("tflops", []), None), 3),
            "mfu_pct": _rounded(_median(g.get("mfu", []), None), 2, 100),
            "cost_per_run": cost,
            "gpu_mismatch_runs": len(g.get("mismatch", [])),
            "throttled": sum(g["throttled"]) if g.get("throttled") else None,
            "hosts": len({host for host in g.get("host", []) if host}) or None,
            "outlier_hosts": ", ".join(outliers) or None,
        },
    )


def _against_reference(times: list[float], ref: list[float], is_reference: bool) -> dict:
    """The speedup's 95% interval (``harness.stats.ratio_interval``), and this GPU type's
    runs tested against the reference's (``harness.stats.verdict``: faster, slower or same,
    a change under 1% being the same); None for the reference itself and where a side has
    no runs."""
    low = high = p = said = None
    if not is_reference and times and ref:
        low, high = stats.ratio_interval(ref, times)
        p, said = stats.verdict(times, ref, lower_is_better=True, min_change_pct=1.0)
    return {"speedup_ci95_low": _rounded(low, 2), "speedup_ci95_high": _rounded(high, 2),
            "speedup_p": _rounded(p, 4), "speedup_verdict": said}  # fmt: skip


def run_values(
    store: Store, sweep: str, exclude_hosts: Collection[str] = ()
) -> dict[tuple[str, str], dict[str, list]]:
    """(row label, model) -> figure -> the per-run values behind it, in the figure's unit,
    for the figures with an interval (time to a target: None for a run that did not get
    there): what a comparison of two sweeps tests."""
    targets = targets_of(store, sweep)
    groups, _ = _groups(store, sweep, targets, exclude_hosts)
    wanted = with_targets(targets)
    return {
        key: {
            figure: [None if v is None else v * factor for v in g.get(values, [])]
            for figure, (values, _, factor, *_) in wanted.items()
        }
        for key, g in groups.items()
    }


def interval_names(figure: str) -> tuple[str, str]:
    return f"{figure}_ci95_low", f"{figure}_ci95_high"


def _with_intervals(g: dict[str, list], targets: list[float], row: dict[str, Any]) -> dict:
    """``row`` with the 95% interval of each figure of ``INTERVALS`` and of the time to each
    target, after the figures (None, None: fewer than two runs, or no figure)."""
    wanted = with_targets(targets)
    for figure, (values, rule, factor, digits, *_) in wanted.items():
        bounds = stats.interval(g.get(values, []), rule) if row[figure] is not None else (None,) * 2
        for name, bound in zip(interval_names(figure), bounds, strict=True):
            row[name] = _rounded(bound, digits, factor)
    return row


def _target_figures(g: dict[str, list], targets: list[float], price: float | None) -> dict:
    """Per target: the headline time to it and how many runs reached it (0 says plainly
    that none did; None: no run to count), the median energy (kJ) and cost (the GPU type's
    price x GPUs x time) to it over the runs that reached it; then the rule behind the
    headlines (every target has the same runs)."""
    out: dict[str, Any] = {}
    rule = None
    gpus = (g.get("gpus") or [1])[0]
    for target in targets:
        times = g.get(f"to {target}", [])
        figure, rule = headline(times)
        key = target_key(target)
        out[f"time_to_{key}_s"] = figure
        out[f"reached_{key}"] = sum(t is not None for t in times) if times else None
    if targets:
        out["target_rule"] = rule if g.get(f"to {targets[0]}") else None
        out["target_runs"] = len(g.get("target_runs", [])) or None  # the n of "reached k/n"
    out["queue_wait_s"] = _rounded(_median(g.get("queue_wait", [])), 1)
    for target in targets:
        trained = g.get(f"trained {target}", [])
        out[f"time_to_trained_{target_key(target)}_s"] = headline(trained)[0] if trained else None
    for target in targets:
        key = target_key(target)
        energy = _median(g.get(f"energy {target}", []), None)
        out[f"energy_to_{key}_kj"] = _rounded(energy, 3, 1e-3)
        reached = [t for t in g.get(f"to {target}", []) if t is not None]
        cost = None if price is None or not reached else statistics.median(reached) / 3600
        out[f"cost_to_{key}"] = None if cost is None else round(cost * gpus * price, 4)
    return out


def _scaling(groups: dict, shapes: dict[str, tuple[str, int]], label: str, model: str):
    """Scaling efficiency on N nodes: images/s on N nodes over N/M times images/s on M, the
    fewest nodes the sweep ran this GPU type and model on (M = 1: over N times one node)."""
    gpu, nodes = shapes[label]
    measured = sorted(
        (shape[1], _median(groups[(name, model)]["images_per_sec"]))
        for name, shape in shapes.items()
        if shape[0] == gpu and groups.get((name, model), {}).get("images_per_sec")
    )
    ips = _median(groups.get((label, model), {}).get("images_per_sec", []))
    if not measured or ips is None or not measured[0][1]:
        return None
    base_nodes, base_ips = measured[0]
    if base_ips is None:
        return None
    return round(ips / (nodes / base_nodes * base_ips), 3)


def targets_of(store: Store, sweep: str) -> list[float]:
    """The target accuracies the table reports time to: the sweep's ``target_accuracy``, else
    those its runs were given (``--target-accuracy``)."""
    configured = ((store.sweep_config(sweep) or {}).get("sweep") or {}).get("target_accuracy")
    if configured is not None:
        return list(configured) if isinstance(configured, list) else [configured]
    given = {r.target_accuracy for r in queries.final_results(store, sweep).values()}
    return sorted(t for t in given if t is not None)


def headline(values: list[float | None]) -> tuple[float | None, str]:
    """The headline figure of several runs' times, and the rule that made it. From five runs
    on, MLPerf's: drop the fastest and the slowest, the mean of the rest; a run that never
    got there counts as the slowest, and a second one leaves no figure. Below five, the median
    of those that got there."""
    n = len(values)
    if n >= 5:
        ordered = sorted(values, key=lambda v: (v is None, v))[1:-1]
        kept = [v for v in ordered if v is not None]
        if len(kept) < len(ordered):
            return None, f"MLPerf (mean of {n - 2} of {n})"
        return round(statistics.fmean(kept), 4), f"MLPerf (mean of {n - 2} of {n})"
    return _median([v for v in values if v is not None]), "median"


def _groups(
    store: Store,
    sweep: str,
    targets: list[float] | None = None,
    exclude_hosts: Collection[str] = (),
):
    """(row label, model) -> lists of per-run figures: each training run's median over its
    timed epochs (and its host), its final result; each transfer run's final accuracy. Also
    row label -> (GPU type, nodes): the label is the GPU type, with the node count where the
    sweep ran several (``v100 (2 nodes)``). Runs on ``exclude_hosts`` are left out."""
    host_of = queries.hosts(store, sweep)
    job_rows = {
        job_id: job
        for job_id, job in queries.sweep_jobs(store, sweep).items()
        if host_of.get(job_id) not in exclude_hosts
    }
    mismatched = queries.mismatched_jobs(store, sweep)
    final = queries.final_results(store, sweep)
    per_node = ((store.sweep_config(sweep) or {}).get("sweep") or {}).get("gpus_per_job") or 1
    nodes_of = {job_id: max(1, (job.gpus or 1) // per_node) for job_id, job in job_rows.items()}
    several = len({nodes_of[i] for i, job in job_rows.items()
                   if job.stage in ("train", "transfer")}) > 1  # fmt: skip
    shapes: dict[str, tuple[str, int]] = {}

    def label(job_id: str) -> str:
        job, nodes = job_rows[job_id], nodes_of[job_id]
        text = f"{job.gpu_type} ({nodes} node{'s' if nodes > 1 else ''})"
        text = text if several else job.gpu_type
        shapes[text] = (job.gpu_type, nodes)
        return text

    waits = queries.queue_waits(store, sweep)
    flops_of = queries.flops_basis(store, sweep)
    peak_of = _peak_of(store, sweep)
    groups: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    trained = queries.train_summaries(store, sweep)
    for job_id in _failed_before_an_epoch(store, job_rows, trained) if targets else []:
        g = groups[(label(job_id), job_rows[job_id].model)]
        _to_targets(g, None, waits.get(job_id), targets or [])
    for job_id, run in trained.items():
        job = job_rows.get(job_id)
        if job is None:
            continue  # on an excluded host
        if targets:
            g = groups[(label(job_id), job.model)]
            _to_targets(g, run, waits.get(job_id), targets)
        if run.epoch_time is None or run.images_per_sec is None:
            continue  # no timed epoch: no time to compare
        g = groups[(label(job_id), job.model)]
        g["gpus"].append(job.gpus or 1)
        g["host"].append(host_of.get(job_id))
        g["epoch_time"].append(run.epoch_time)
        g["epoch_time_cv"].append(run.epoch_time_cv)
        wait = waits.get(job_id)
        if wait is not None:
            g["queue_wait"].append(wait)
        g["images_per_sec"].append(run.images_per_sec)
        if job_id in flops_of:
            _achieved(g, run.images_per_sec, job, flops_of[job_id], peak_of.get(job.gpu_type))
        for name in TELEMETRY:
            if getattr(run, name) is not None:
                g[name].append(getattr(run, name))
        if job_id in mismatched:
            g["mismatch"].append(job_id)
        if run.throttled_pct is not None:
            g["throttled"].append(run.throttled_pct > 100 * THROTTLE_FLAG)
        if job_id in final:
            result = final[job_id]
            g["train_time"].append(result.train_time)
            g["final_acc"].append(result.final_test_acc)
            g["best_acc"].append(result.best_test_acc)
    for job_id, result in final.items():
        job = job_rows.get(job_id)
        if job is not None and job.stage == "transfer":
            groups[(label(job_id), job.model)]["transfer_acc"].append(result.final_test_acc)
    return groups, shapes


def _achieved(g: dict, images_per_sec: float, job: Any, basis: tuple, peak: float | None) -> None:
    """A run's achieved TFLOP/s, and its fraction of the GPUs' peak where that is known (the
    GPU type's own ``peak_tflops``, else the known GPU's in the run's math mode)."""
    flops, mode, gpu_name = basis
    tflops = achieved_tflops(images_per_sec, flops)
    g["tflops"].append(tflops)
    peak = peak or peak_tflops(gpu_name, mode)
    if peak:
        g["mfu"].append(tflops / ((job.gpus or 1) * peak))


def _peak_of(store: Store, sweep: str) -> dict[str, float]:
    """GPU type -> the ``peak_tflops`` its cluster.yaml entry names (the others: the known
    GPUs' figures, ``harness.peaks``)."""
    gpu_types = (store.sweep_config(sweep) or {}).get("gpu_types") or {}
    return {gpu: entry["peak_tflops"] for gpu, entry in gpu_types.items()
            if isinstance(entry, dict) and entry.get("peak_tflops")}  # fmt: skip


def _failed_before_an_epoch(store: Store, job_rows: dict, trained: dict) -> list[str]:
    """Training runs that started and failed before their first epoch record: runs that did
    not reach the targets, which MLPerf counts among the runs, as the slowest. Not those that
    never ran, nor bad input (the run was not made), nor a failure of the host (not the
    run's: the harness retries it, or gave up on the hosts)."""
    failed = [
        job_id
        for job_id, job in job_rows.items()
        if job.stage == "train" and job.state == "failed" and job_id not in trained
    ]
    tries = store.attempts_of(failed) if failed else {}
    counted = []
    for job_id in failed:
        last = (tries.get(job_id) or [{}])[-1]
        started = last.get("started_at") is not None and not last.get("host_failure")
        if started and not (job_rows[job_id].reason or "").startswith("bad input"):
            counted.append(job_id)
    return counted


def _to_targets(g: dict[str, list], run: Any, wait: float | None, targets: list[float]) -> None:
    """A training run's time to each target (None: not reached; ``run`` None: a run that
    never measured an epoch), the energy to it where measured, and with its queue wait, its
    time to a trained network."""
    g["target_runs"].append(1)
    for target in targets:
        to_target = None if run is None else summaries.time_to(run.accuracy_steps, target)
        g[f"to {target}"].append(to_target)
        if to_target is not None:
            energy = summaries.energy_to(run.accuracy_steps, run.energy_steps, target)
            g[f"energy {target}"].append(energy)
        if wait is not None:
            g[f"trained {target}"].append(None if to_target is None else wait + to_target)


def deployment_figures(store: Store, sweep: str) -> list[dict[str, Any]]:
    """A row per network, GPU type and runtime, from the inference jobs: time per image at
    batch 1 (median and p99 latency), the best throughput over the batch sizes measured and
    its batch size, the artifact's size on disk, top-1 agreement with PyTorch eager over the
    whole test set (``agreement_flag``: below 99.9%). An unavailable runtime is a row with
    ``available`` False, empty figures and its ``reason``."""
    by_runtime = queries.inference_measurements(store, sweep)
    order = {name: i for i, name in enumerate(RUNTIMES)}
    rows = []
    for (model, dataset, gpu, runtime), items in sorted(
        by_runtime.items(), key=lambda kv: (*kv[0][:3], order.get(kv[0][3], 99))
    ):
        timed = [m for m in items if m.get("available", True)]
        first = timed[0] if timed else {}
        one = next((m for m in timed if m.get("batch_size") == 1), {})
        rated = [m for m in timed if m.get("images_per_sec") is not None]
        best = max(rated, key=lambda m: m["images_per_sec"]) if rated else {}
        agreement = first.get("top1_agreement_with_eager")
        reason = None if timed else str(items[0].get("reason") or "no reason given")
        rows.append({
            "model": model, "dataset": dataset, "gpu_type": gpu, "runtime": runtime,
            "available": bool(timed),
            "test_acc_pct": _rounded(first.get("test_accuracy"), 2, 100),
            "latency_p50_ms_batch1": _rounded(one.get("latency_p50_ms"), 3, 1),
            "latency_p99_ms_batch1": _rounded(one.get("latency_p99_ms"), 3, 1),
            "best_images_per_s": _rounded(best.get("images_per_sec"), 1, 1),
            "best_batch_size": best.get("batch_size"),
            "size_mb": _rounded(first.get("bytes"), 3, 1e-6),
            "agreement_pct": _rounded(agreement, 2, 100),
            "agreement_flag": agreement is not None and agreement < AGREEMENT_FLAG,
            "provider": first.get("provider"),
            "threads": first.get("threads"),
            "reason": reason,
        })  # fmt: skip
    return rows


def _median(values: list[float | None], digits: int | None = 4) -> float | None:
    """The median of the known values, rounded to ``digits`` (None: not rounded, for a
    figure rounded once where it is shown: rounding twice can move its last digit)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    middle = statistics.median(known)
    return middle if digits is None else round(middle, digits)


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _rounded(value: Any, digits: int, factor: float = 1.0) -> float | None:
    return None if value is None else round(float(value) * factor, digits)
