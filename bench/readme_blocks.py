"""What each README block of measured figures says, made from its bench's stored result:
``RENDERERS[NAME]`` turns ``bench/results/NAME.json`` into the block's text
(``bench/render_readme.py`` puts it between the block's markers).

Every block starts with where, when and how its figures were measured; a figure that is a
median of repeats carries its range or interval; a sentence that draws a conclusion quotes
the interval or range it rests on, and a target a figure misses is said to be missed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any


def _interval(low: float | None, high: float | None, digits: int = 2) -> str:
    if low is None or high is None:
        return "(no interval)"
    return f"[{low:.{digits}f}-{high:.{digits}f}]"


def _ratio(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return "-"
    said = _interval(row[f"{key}_ci95_low"], row[f"{key}_ci95_high"])
    if row[f"{key}_verdict"] == "same":
        return f"same {said}"
    return f"{row[key]:.2f}x {said}"


# the deployment table's runtimes; the other INT8 schemes have a block of their own
MAIN_RUNTIMES = ("eager", "onnxruntime", "onnxruntime-int8", "caffe2", "eager-torch1.10")
INT8_TARGET = {"speedup": 2.0, "loss_pt": 0.3, "agreement_pct": 99.0}
INT8_WHAT = {
    "onnxruntime-int8": "convolutions; 99.99th-percentile ranges",
    "onnxruntime-int8-all": "every op ORT can; min-max ranges",
    "onnxruntime-int8-nogemm": "every op but the classifier's Gemm; 99.99th-percentile ranges",
    "onnxruntime-int8-s8": "convolutions, s8 activations; 99.99th-percentile ranges",
}


def deploy_int8(result: dict[str, Any]) -> str:
    """Each INT8 scheme against fp32 ONNX Runtime: speed with its interval, the accuracy lost,
    top-1 agreement, what ONNX Runtime runs of the graph, and whether the target is met."""
    c = result["conditions"]
    rows = result["rows"]
    fp32 = {r["model"]: r for r in rows if r["runtime"] == "onnxruntime"}
    lines = [
        f"Measured {c['when'][:10]} with the deployment table above (same run, same weights, "
        f"{c['threads']} threads, batch 1). The target: at least {INT8_TARGET['speedup']:g}x "
        f"fp32 ONNX Runtime, at most {INT8_TARGET['loss_pt']:g} points of accuracy lost and at "
        f"least {INT8_TARGET['agreement_pct']:g}% top-1 agreement with it.",
        "",
        *_weights(result, fp32),
        "",
        "| model | scheme: what is quantized | ms @1 [95%] | vs fp32 ORT [95%] | acc % "
        "(fp32 ORT) | lost pt | agreement % | QLinearConv / float Conv | Q+DQ | Transpose "
        "| float ReduceSum+ReduceMean | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for row in rows:
        if row["runtime"] not in INT8_WHAT or row["model"] not in fp32:
            continue
        base = fp32[row["model"]]
        lost = base["accuracy_pct"] - row["accuracy_pct"]
        agree = row.get("agreement_with_onnxruntime_pct", row["agreement_pct"])
        ops = row.get("graph_ops", {})
        speed_ok = row.get("vs_onnxruntime_ci95_low") or 0
        misses = [what for what, bad in (
            ("speed", speed_ok < INT8_TARGET["speedup"]),
            ("accuracy", lost > INT8_TARGET["loss_pt"]),
            ("agreement", agree < INT8_TARGET["agreement_pct"])) if bad]  # fmt: skip
        latency = _interval(row["latency_ci95_low_ms"], row["latency_ci95_high_ms"])
        lines.append(
            f"| {row['model']} | `{row['runtime']}`: {INT8_WHAT[row['runtime']]} "
            f"| {row['latency_p50_ms']:.2f} {latency} | {_ratio(row, 'vs_onnxruntime')} "
            f"| {row['accuracy_pct']:.2f} ({base['accuracy_pct']:.2f}) | {lost:.2f} "
            f"| {agree:.2f} | {ops.get('QLinearConv', 0)} / {ops.get('Conv', 0)} "
            f"| {ops.get('QuantizeLinear', 0) + ops.get('DequantizeLinear', 0)} "
            f"| {ops.get('Transpose', 0)} "
            f"| {ops.get('ReduceSum', 0) + ops.get('ReduceMean', 0)} "
            f"| {'met' if not misses else 'missed: ' + ', '.join(misses)} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


WEIGHTS_TARGET_PCT = 85.0  # the accuracy the weights INT8 is judged on should reach


def _trained(how: dict[str, Any]) -> str:
    """How the bench trained a network, as its result records it (results from before
    ``epochs`` was recorded trained one epoch, with no warm-up)."""
    epochs = how.get("epochs", 1)
    steps = f"{how['steps']} training steps"
    if epochs != 1:
        steps = f"{epochs} epochs of {steps}"
    lr = f"lr {how['lr']:g}"
    if how.get("warmup_steps"):
        lr += f" after {how['warmup_steps']} warm-up steps"
    also = ", Nesterov momentum" if how.get("nesterov") else ""
    if how.get("last_gamma"):
        also += ", each block's last BN scale from zero"
    return (
        f"{steps} here (batch {how['batch']}, {lr}{also}, cosine; "
        f"{how['seconds'] / 60:.1f} minutes)"
    )


def _weights(result: dict[str, Any], fp32: dict[str, dict[str, Any]]) -> list[str]:
    """What the INT8 schemes were judged on: how each network was trained and what it
    reached in fp32."""
    said = []
    for model, row in fp32.items():
        how = result.get("training", {}).get(model, {})
        trained = (
            _trained(how)
            if "steps" in how
            else f"the weights of {how.get('weights', 'a job folder')}"
        )
        reached = row["accuracy_pct"]
        verdict = "reached" if reached >= WEIGHTS_TARGET_PCT else "not reached"
        said.append(f"- {model}: {trained}, {reached:.2f}% in fp32 ONNX Runtime "
                    f"({WEIGHTS_TARGET_PCT:g}% {verdict}).")  # fmt: skip
    return said


def deploy_latency(result: dict[str, Any]) -> str:
    """The deployment comparison: the conditions, the table, and each comparison the README
    draws a conclusion from, with the interval it rests on."""
    c = result["conditions"]
    flags = "; ".join(result["flags"]) or "none"
    load = f"{c['load_before'][0]:.2f} before, {c['load_after'][0]:.2f} after"
    rounds = max((r["round"] for r in result["rounds"]), default=0)
    lines = [
        f"Measured {c['when'][:10]} on {c['cpu_model']} ({', '.join(c['cpu_flags'])}), "
        f"{c['cores']} cores, {c['threads']} threads, {rounds} interleaved rounds; torch "
        f"{c['torch']}, ONNX Runtime {c['onnxruntime']}; load average {load}"
        + (f"; `{c['command']}` ({c['duration_s'] / 60:.0f} minutes)" if "command" in c else "")
        + f"; flags: {flags}.",
        "",
        "| model | runtime | ms @1 [95%] | vs eager [95%] | vs ONNX Runtime [95%] "
        "| vs torch 1.10 eager [95%] | acc % | agreement % | max logit diff | MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [row for row in result["rows"] if row["runtime"] in MAIN_RUNTIMES]
    for row in rows:
        latency = _interval(row["latency_ci95_low_ms"], row["latency_ci95_high_ms"])
        lines.append(
            f"| {row['model']} | {row['runtime']} | {row['latency_p50_ms']:.2f} {latency} "
            f"| {_ratio(row, 'vs_eager')} | {_ratio(row, 'vs_onnxruntime')} "
            f"| {_ratio(row, 'vs_eager_torch1_10')} "
            f"| {row['accuracy_pct']:.2f} | {row['agreement_pct']:.2f} "
            f"| {row['max_logit_diff']:.1e} | {row['size_mb']:.2f} |"
        )
    for gone in [g for g in result.get("unavailable", []) if g["runtime"] in MAIN_RUNTIMES]:
        lines.append(f"| {gone['model']} | {gone['runtime']} | unavailable: {gone['why']} "
                     "| | | | | | | |")  # fmt: skip
    lines.append("")
    against = (("vs_eager", "eager"), ("vs_eager_torch1_10", "eager in torch 1.10.2"))
    for row in rows:
        for key, what in against:
            if key not in row or (key == "vs_eager_torch1_10" and row["runtime"] != "caffe2"):
                continue
            verdict = row[f"{key}_verdict"]
            ratio = _interval(row[f"{key}_ci95_low"], row[f"{key}_ci95_high"])
            said = "the same speed as" if verdict == "same" else f"{verdict} than"
            caveat = " (in a flagged run: see its flags)" if result["flags"] else ""
            lines.append(f"- {row['model']}: {row['runtime']} is {said} {what} "
                         f"({row[key]:.2f}x, 95% interval {ratio}){caveat}.")  # fmt: skip
    return "\n".join(lines) + "\n"


# -- common ----------------------------------------------------------------------------------


def measured(result: dict[str, Any], what: str = "") -> str:
    """Where, when and how: the date, the commit, the CPU, the command, how long it ran and the
    load average around it."""
    c = result["conditions"]
    minutes = c.get("duration_s", 0) / 60
    took = f"{minutes:.0f} minutes" if minutes >= 1.5 else f"{c.get('duration_s', 0):.0f} s"
    load = f"load average {c['load_before'][0]:.2f} before, {c['load_after'][0]:.2f} after"
    return (f"Measured {c['when'][:10]} at commit {c['commit']} on {c['cpu_model']}, "
            f"{c['cores']} cores{what}: `{c['command']}` ({took}; {load}).")  # fmt: skip


def seconds(figure: dict[str, Any], digits: int = 3, unit: str = " s") -> str:
    """A repeated timing: median (low-high)."""
    return (f"{figure['median']:.{digits}f}{unit} "
            f"({figure['low']:.{digits}f}-{figure['high']:.{digits}f})")  # fmt: skip


def _median_range(values: list[float], digits: int = 1) -> str:
    low, high, mid = min(values), max(values), statistics.median(values)
    if low == high:
        return f"{low:.{digits}f}"
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


# -- harness_scale ---------------------------------------------------------------------------


def harness_scale(result: dict[str, Any]) -> str:
    """The harness's own costs on a store of a lab's sweeps, per backend, against targets."""
    c, figures = result["conditions"], result["figures"]
    kinds = [k for k in ("SQLite", "PostgreSQL") if k in figures]
    missed: list[str] = []

    def cell(kind: str, key: str) -> str:
        figure = figures.get(kind, {}).get(key)
        if figure is None:
            return "-"
        said = seconds(figure)
        if figure["median"] >= figure["target"]:
            missed.append(f"{figure['what']} on {kind}")
            return f"**{said}, missed**"
        return said

    first = figures[kinds[0]]
    rows = [
        (f"`table`, {c['table_jobs']:,} jobs x {c['epochs']} epochs "
         f"({c['table_jobs'] * c['epochs']:,} epoch rows)", "< 2 s", "table"),
        (f"`status` of those {c['table_jobs']:,} ended jobs", "< 2 s", "status_ended"),
        (f"`report` (tables and plots), {c['report_jobs']:,} jobs x {c['epochs']} epochs",
         "< 10 s", "report"),
        (f"`status` of a {c['status_jobs']:,}-job SLURM sweep, one `sacct` call: every job "
         f"changes and every outbox (about {first['status_first']['records']:,} records) is "
         "collected", "< 2 s", "status_first"),
        (f"the same again: {first['status_again']['running']:,} running jobs' outboxes grew",
         "< 2 s", "status_again"),
    ]  # fmt: skip
    lines = [
        measured(result) + f" Each timing is the median of {c['repeats']} run(s) after a "
        "warm-up, with their range.",
        "",
        "| figure | target | " + " | ".join(kinds) + " |",
        "| --- | --- |" + " --- |" * len(kinds),
    ]
    for label, target, key in rows:
        lines.append(f"| {label} | {target} | " + " | ".join(cell(k, key) for k in kinds) + " |")
    lines.append(
        f"| rebuilding {c['table_jobs']:,} jobs' summaries from their epoch rows (what `ingest` "
        "pays once) | | "
        + " | ".join(f"{figures[k]['rebuild']['seconds']:.1f} s" for k in kinds)
        + " |"
    )
    lines.append(
        "| bytes per epoch row / telemetry sample / job summary | | "
        + " | ".join("{epoch_row:,.0f} / {sample:,.0f} / {summary:,.0f}".format(
            **figures[k]["bytes"]) for k in kinds) + " |"
    )  # fmt: skip
    plan = figures["plan"]["plan"]
    lines.append(f"| planning {plan['jobs']:,} jobs (validate cluster.yaml, expand, build every "
                 f"spec) | < 1 s | {cell('plan', 'plan')} |" + " |" * (len(kinds) - 1))  # fmt: skip
    lines.append("")
    year = 365 * 1000 * 250  # a year of daily sweeps of 1,000 training jobs of 250 epochs
    growth = [f"{year * figures[k]['bytes']['epoch_row'] / 1e9:,.1f} GB on {k}" for k in kinds]
    samples = [f"{30 * year * figures[k]['bytes']['sample'] / 1e9:,.0f} GB on {k}" for k in kinds]
    lines.append(f"A year of daily sweeps of 1,000 training jobs of 250 epochs: the epoch rows "
                 f"take {', '.join(growth)}; one telemetry sample a second of 30-second epochs "
                 f"would add {', '.join(samples)}.")  # fmt: skip
    lines.append("")
    if missed:
        lines.append(f"Missed: {'; '.join(missed)}.")
    else:
        lines.append("Every target is met.")
    return "\n".join(lines) + "\n"


# -- time_to_accuracy ------------------------------------------------------------------------


def time_to_accuracy(result: dict[str, Any]) -> str:
    """Each network with the study's recipe and the fast one: the accuracy each reached and
    the time it took, over repeated rounds; then what the fast recipe did against the study's."""
    c, runs = result["conditions"], result["figures"]["runs"]
    targets = [f"s to {100 * t:g}%" for t in c["targets"]]
    lines = [
        measured(result, f", {c['repeats']} rounds (each trains every network with each recipe "
                 "once); timings are the median (range) over the rounds, accuracies the rounds' "
                 "own (one figure where every round gave it)"),
        "",
        "| model | recipe | batch | images | final acc % | " + " | ".join(targets)
        + " | s/epoch | img/s | train s | probe s |",
        "| --- | --- | --- | --- | --- |" + " --- |" * (len(targets) + 4),
    ]  # fmt: skip

    def col(run: dict[str, Any], key: str, digits: int = 1) -> str:
        values = [r[key] for r in run["runs"]]
        if not all(isinstance(v, (int, float)) for v in values):
            return "/".join(dict.fromkeys(str(v) for v in values))
        return _median_range(values, digits)

    for run in runs:
        first = run["runs"][0]
        lines.append(
            f"| {run['model']} | {run['recipe']} | {first['batch']} | {first['images']:,} | "
            f"{col(run, 'final acc %', 2)} | " + " | ".join(col(run, t) for t in targets)
            + f" | {col(run, 's/epoch')} | {col(run, 'img/s', 0)} | {col(run, 'train s')} | "
            f"{col(run, 'probe s')} |"
        )  # fmt: skip
    lines.append("")
    by = {(r["model"], r["recipe"]): r for r in runs}
    for model in dict.fromkeys(r["model"] for r in runs):
        study, fast = by.get((model, "study")), by.get((model, "fast"))
        if not study or not fast:
            continue
        acc = [f["final acc %"] for f in fast["runs"]], [s["final acc %"] for s in study["runs"]]
        above = ("above" if min(acc[0]) > max(acc[1]) else
                 "below" if max(acc[0]) < min(acc[1]) else "level with")  # fmt: skip
        said = [f"- {model}: the fast recipe, on {fast['runs'][0]['images']:,} images against "
                f"the study's {study['runs'][0]['images']:,}, ends {above} the study's final "
                f"accuracy ({col(fast, 'final acc %', 2)}% against "
                f"{col(study, 'final acc %', 2)}%)"]  # fmt: skip
        reach = targets[-1]
        ratios = [
            s[reach] / f[reach]
            for s, f in zip(study["runs"], fast["runs"], strict=False)
            if isinstance(s[reach], (int, float)) and isinstance(f[reach], (int, float))
        ]
        if not ratios and any(isinstance(f[reach], (int, float)) for f in fast["runs"]):
            said.append(f"and reaches {reach[5:]} ({col(fast, reach)} s of training), which "
                        f"the study does not in {len(study['runs'])} round(s)")  # fmt: skip
        elif not ratios and any(isinstance(s[reach], (int, float)) for s in study["runs"]):
            said.append(f"and does not reach {reach[5:]}, which the study does "
                        f"({col(study, reach)} s of training)")  # fmt: skip
        if ratios:
            said.append(f"and the study takes {_median_range(ratios, 2)} times the fast "
                        f"recipe's training time to reach {reach[5:]} (round by round; "
                        f"{col(study, reach)} s against {col(fast, reach)} s)")  # fmt: skip
        lines.append(", ".join(said) + ".")
    return "\n".join(lines) + "\n"


# -- profile_overhead ------------------------------------------------------------------------


def profile_overhead(result: dict[str, Any]) -> str:
    """What the profiler's hooks cost a step with profiling off."""
    c, f = result["conditions"], result["figures"]
    paired = f["paired_pct"]
    low, high = paired["ci95_low"], paired["ci95_high"]
    if low is None or high is None:
        verdict = "too few pairs for an interval"
    elif low <= 0 <= high:
        verdict = "an interval that holds 0: no cost these blocks can see"
    else:
        verdict = (
            f"an interval that excludes 0: the blocks {'with' if low > 0 else 'without'} "
            "the hooks were slower"
        )
    interval = "" if low is None else f"95% interval {low:+.2f}% to {high:+.2f}%, "
    return (
        measured(result, f", {c['threads']} threads")
        + f" On {c['device']}, `{c['model']}`, batch {c['batch']}, {c['pairs']} blocks of "
        f"{c['steps']} steps each way, interleaved: a block took {seconds(f['without_s'])} "
        f"without the hooks and {seconds(f['with_s'])} with them; the paired difference has a "
        f"median of {paired['median']:+.2f}% ({interval}bootstrap over the pairs; range "
        f"{paired['low']:+.2f}% to {paired['high']:+.2f}%), {verdict}. The hooks alone, timed "
        f"over a million calls: {f['hooks_us_per_step']:.2f} us per step, "
        f"{f['hooks_pct_of_step']:.4f}% of a {f['step_ms']:.1f} ms step.\n"
    )


# -- quickstart_time -------------------------------------------------------------------------


def quickstart_time(result: dict[str, Any]) -> str:
    """How long the quickstart takes."""
    f = result["figures"]["seconds"]
    return (f"On {result['conditions']['cores']} CPU cores the quickstart takes "
            f"{f['median']:.0f} s (median of {f['n']} runs, {f['low']:.0f}-{f['high']:.0f} s). "
            + measured(result) + "\n")  # fmt: skip


# -- train_throughput ------------------------------------------------------------------------


def train_throughput(result: dict[str, Any]) -> str:
    """The fast path's memory formats against each other, per network, round by round."""
    c, f = result["conditions"], result["figures"]
    batch = {r["batch_size"] for r in f["rows"] if r["configuration"].startswith("fast")}
    lines = [measured(result, f", {c['device']}, batch {', '.join(map(str, sorted(batch)))}, "
                      f"{c['rounds']} interleaved rounds of {c['blocks']} blocks of "
                      f"{c['steps']} steps each") + " Images/s are medians over the rounds; "
             "NHWC's ratio to NCHW is the median of the rounds' paired ratios with its 95% "
             "bootstrap interval.", ""]  # fmt: skip
    for v in f["verdicts"]:
        interval = " (fewer than five rounds: no interval)"
        if v["ci95_low"] is not None:
            interval = f" [95%: {v['ci95_low']:.2f}-{v['ci95_high']:.2f}]"
        won = ("neither wins, the interval holds 1" if v["winner"] == "same" else
               f"{v['winner']} wins")  # fmt: skip
        lines.append(f"- `{v['model']}`, {v['precision']}: {won}: NCHW "
                     f"{v['nchw_images_per_sec']:,.0f} img/s, NHWC "
                     f"{v['nhwc_images_per_sec']:,.0f} img/s, NHWC at "
                     f"{v['nhwc_over_nchw']:.2f}x{interval}.")  # fmt: skip
    return "\n".join(lines) + "\n"


# -- multinode_overhead ----------------------------------------------------------------------


def multinode_overhead(result: dict[str, Any]) -> str:
    """What the harness adds to a job of one node and of two."""
    c, f = result["conditions"], result["figures"]
    lines = [measured(result, f", the two-node SLURM of `scripts/slurm-local.sh up --nodes 2`; "
                      f"medians (min-max) of {c['repeats']} jobs each, one of each a round"),
             "", "| nodes | `submit` | submit to first step | rendezvous | `status` |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for nodes in sorted(f, key=int):
        row = f[nodes]
        cells = [seconds(row[k], 2) if k in row else "-"
                 for k in ("submit", "to start", "rendezvous", "status")]  # fmt: skip
        lines.append(f"| {nodes} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- slurm_submit ----------------------------------------------------------------------------


def slurm_submit(result: dict[str, Any]) -> str:
    """Time from ``submit`` to every job queued on a real SLURM, per sweep."""
    c, f = result["conditions"], result["figures"]
    labels = {
        "arrays": "training only, one array per GPU type",
        "pipeline": "train and transfer, arrays chained with `aftercorr`",
        "lab": "the lab sweep: train, transfer, export, infer",
        "limited": f"the lab sweep under a limit of {c['limit']:,} queued jobs per user (its "
                   f"first {c['limit'] - 1:,} queued; the job holding the node is the other)",
    }  # fmt: skip
    lines = [measured(result, f", the single-node SLURM of `scripts/slurm-local.sh up` with "
                      f"its node held; medians (min-max) of {c['repeats']} rounds, each sweep "
                      "once a round"), "",
             "| sweep | jobs | sbatch calls | `submit` | all queued | `status` after |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for key, label in labels.items():
        if key in f:
            r = f[key]
            lines.append(f"| {label} | {r['jobs']:,} | {r['sbatch']} | "
                         f"{seconds(r['submit_s'], 2)} | {seconds(r['queued_s'], 2)} | "
                         f"{seconds(r['status_s'], 2)} |")  # fmt: skip
    lines.append("")
    for key in ("lab", "limited"):
        if key in f:
            median = f[key]["queued_s"]["median"]
            met = "met" if median < c["target_s"] else "**missed**"
            what = "the lab sweep" + (" under the limit" if key == "limited" else "")
            lines.append(f"- Target < {c['target_s']:g} s for {what}: {met} "
                         f"({seconds(f[key]['queued_s'], 2)}).")  # fmt: skip
    return "\n".join(lines) + "\n"


# -- refresh_readme --------------------------------------------------------------------------

REFRESHED = ("quickstart_time", "profile_overhead", "train_throughput", "time_to_accuracy",
             "harness_scale", "deploy_latency", "slurm_submit", "multinode_overhead")  # fmt: skip


def refresh_readme(results: dict[str, dict[str, Any]]) -> str:
    """How long ``bench/refresh_readme.sh`` takes: the stored results' own durations."""
    took = {n: results[n]["conditions"].get("duration_s") for n in REFRESHED if n in results}
    known = {n: s for n, s in took.items() if s is not None}
    parts = ", ".join(f"{n} {s / 60:.1f}" for n, s in known.items())
    return (f"The runs stored now took {sum(known.values()) / 60:.0f} minutes together "
            f"({parts} minutes), on the machine each result names.\n")  # fmt: skip


# a block rendered from another block's results file; "*": from every results file
SOURCES = {"deploy_int8": "deploy_latency", "refresh_readme": "*"}
RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "deploy_latency": deploy_latency,
    "deploy_int8": deploy_int8,
    "harness_scale": harness_scale,
    "time_to_accuracy": time_to_accuracy,
    "profile_overhead": profile_overhead,
    "quickstart_time": quickstart_time,
    "train_throughput": train_throughput,
    "multinode_overhead": multinode_overhead,
    "slurm_submit": slurm_submit,
    "refresh_readme": refresh_readme,
}
