"""The ``resnest-bench`` parser, built from one table of commands (``COMMANDS``).

Each command names its function (in ``harness.cli.commands`` or ``harness.cli.recovery``),
its help, and its arguments; options several commands share (where the store is, waiting
for a queue, output formats) are named groups. Nothing is imported here that a command
needs only when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from harness import __version__
from harness.launchers import MODULES
from harness.render import FORMATS, TABLE_FORMATS
from records.options import add_arguments


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def arg(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, options


# Options several commands share.
GROUPS = {
    "store": [
        arg("-c", "--config",
            help="the sweep's cluster.yaml, to find its store (default: ./cluster.yaml)"),
        arg("--store", help="results store URL instead (password from PGPASSWORD)"),
    ],
    "wait": [
        arg("--wait", action="store_true",
            help="slurm: follow the jobs (sacct, polled with backoff) until they end and print "
            "the table; without it the command returns once the jobs are queued. The local "
            "launcher always waits."),
        arg("--timeout", type=positive_seconds, metavar="S",
            help="with --wait: give up following after S seconds (the jobs stay queued)"),
    ],
    "quiet": [arg("-q", "--quiet", action="store_true", help="no progress bar")],
}  # fmt: skip

JOB_HELP = (
    "Run one {stage} job in this process: a progress bar while it runs, a line per epoch, "
    "checkpoints and outbox.jsonl in the --out folder; rerunning the same command resumes "
    "from the latest valid checkpoint. For DDP on N devices: torchrun --nproc_per_node=N -m "
    "jobs.{stage} with the same options. Exit codes: 0 done, 2 bad input, 3 diverged, 75 "
    "stopped by SIGTERM/SIGUSR1 after a checkpoint (requeue)."
)

# name, function, help, description, arguments, shared groups
COMMANDS: list[dict[str, Any]] = [
    dict(
        name="models", func="harness.cli.commands:cmd_models",
        help="list the named network configurations with their size and compute",
        description="List the model zoo's named configurations: block style, stage depths, "
        "radix, parameters, FLOPs (2 x multiply-adds, convolutions and linear layers) for one "
        "image at 32x32 and 224x224, and the size of the fp32 weights.",
        args=[
            arg("--num-classes", type=positive_int, default=10,
                help="classes of the classifier head (default: 10, as for CIFAR-10)"),
            arg("--format", choices=FORMATS, default="table",
                help="output format (default: table)"),
        ],
    ),
    dict(
        name="submit", func="harness.cli.commands:cmd_submit",
        help="plan a sweep from cluster.yaml and submit it",
        description="Validate cluster.yaml, expand the sweep's axes into jobs (train -> "
        "transfer -> export -> infer, each with an id hashed from its spec) and submit them. "
        "--dry-run prints the plan and submits nothing.",
        args=[
            arg("config", help="the sweep and site description (cluster.yaml)"),
            arg("--launcher", choices=tuple(MODULES), help="override launcher.kind"),
            arg("--dry-run", action="store_true",
                help="print the plan, and per GPU type the sbatch options, Ray resources or "
                "device its jobs get (with its job environment); submit nothing"),
            arg("--only", action="append", default=[], metavar="KEY=VALUE",
                help="only jobs matching (stage, model, dataset, gpu_type, seed, repeat or "
                "id), with the jobs they depend on; repeatable"),
            arg("--format", choices=FORMATS, default="table", help="plan output format"),
            arg("--until-resolved", action="store_true",
                help="wait for the sweep, then add runs (one more repeat of each seed) only "
                "for the cells whose comparisons are still unclear (models on a GPU type, "
                "each GPU type against the first, this sweep against --compare), wave after "
                "wave, until every one is resolved or --budget is spent: a comparison is "
                "resolved when its ratio's 95%% interval lies wholly beyond 1 +- PCT/100 "
                "(with a Mann-Whitney p below 0.05) or wholly within it"),
            arg("--min-change", metavar="PCT", type=float, default=1.0,
                help="with --until-resolved: the smallest change, in percent, that counts "
                "(default 1)"),
            arg("--budget", metavar="N", type=int,
                help="with --until-resolved: the most training runs to add in all (default: "
                "as many training runs as the sweep has)"),
            arg("--resolve", metavar="FIGURE", action="append", default=[],
                help="with --until-resolved: a figure to resolve (epoch_time_s, "
                "images_per_s, final_acc_pct, energy_per_image_mj, time_to_93pct_s); "
                "repeatable (default: epoch_time_s)"),
            arg("--compare", metavar="OTHER_SWEEP",
                help="with --until-resolved: also resolve each GPU type and model against "
                "the same in OTHER_SWEEP of the store"),
        ],
        groups=["quiet", "wait"],
    ),
    dict(
        name="status", func="harness.cli.status:cmd_status",
        help="jobs of a sweep by state, failures with reasons",
        description="Counts by state, where the store is and how it is written, an ETA for "
        "the sweep, and a table of its jobs: per running training job epoch k of N, the last "
        "epoch's seconds and an ETA; per job its queue wait (submission to start; SLURM's own "
        "times where SLURM ran it); failed jobs with their reason and log path. New records "
        "are collected from the jobs' outboxes first. --job ID: one job's attempts, with the "
        "hosts each ran on.",
        args=[
            arg("sweep", nargs="?",
                help="sweep name (default: the config's, or the newest in the store)"),
            arg("--format", choices=FORMATS, default="table"),
            arg("--job", metavar="ID",
                help="one job (its id, or the start of it): its attempts, hosts and times"),
            arg("--watch", action="store_true",
                help="redraw in place until every job of the sweep has ended (Ctrl-C stops "
                "watching; the jobs go on)"),
            arg("--every", type=positive_seconds, default=10.0, metavar="S",
                help="with --watch: seconds between redraws (default: 10)"),
            arg("--all", action="store_true",
                help="list every job: the table of a sweep of more than 100 jobs leaves out "
                "those that succeeded (counted above it; csv and json have every job)"),
        ],
        groups=["store"],
    ),
    dict(
        name="table", func="harness.cli.tables:cmd_table",
        help="the GPU comparison table of a sweep",
        description="Rows: GPU types (per node count, where the sweep ran several); per "
        "model: median epoch time (warm-up excluded), images/s, speedup against the reference "
        "GPU type, scaling efficiency (several node counts: images/s on N nodes over N times "
        "one node), final and best test accuracy, time to target, transfer accuracy, runs, CV.",
        args=[
            arg("sweep", nargs="?"),
            arg("--format", choices=TABLE_FORMATS, default="table",
                help="table, md and html: the table as printed; csv, json and parquet: tidy "
                "rows, a row per GPU type (and node count) and model with every figure a "
                "number and its unit in its name, the CV's flag a column of its own (with "
                "--deploy: a row per network, GPU type and runtime; --layout study and "
                "--compare: their rows as shown)"),
            arg("--out", metavar="FILE",
                help="write the table into FILE instead of stdout (needed for parquet); an "
                "earlier FILE is replaced whole or not at all"),
            arg("--reference", help="GPU type (or row, such as 'v100 (2 nodes)') for the "
                "speedup column (default: the first row)"),
            arg("--deploy", action="store_true",
                help="the deployment table instead: per network and runtime, test accuracy, "
                "time per image at batch 1, best throughput, size on disk, top-1 agreement "
                "with PyTorch eager"),
            arg("--layout", choices=("gpu", "study"), default="gpu",
                help="gpu: a row per GPU type, a column group per model (default); study: "
                "the study's tables, a row per variant and a column per GPU type with the "
                "average (test accuracy, seconds per epoch, transfer accuracy)"),
            arg("--wide", action="store_true",
                help="the terminal table with a ± column after each figure that has one: its "
                "95%% interval over the runs (seeds x repeats; a percentile bootstrap of the "
                "figure's rule), as its larger distance from the figure in percent; md and "
                "html always have them, csv, json and parquet as FIGURE_ci95_low and _high"),
            arg("--compare", metavar="OTHER_SWEEP",
                help="this sweep beside another of the same store (a new driver, torch or "
                "recipe against the last sweep): a row per GPU type and figure, both values, "
                "their ratio and the change in percent; for s/epoch, img/s, final accuracy, "
                "energy per image and time to a target, the two-sided Mann-Whitney U p-value "
                "over the two sweeps' runs and a verdict: faster, slower or same (higher or "
                "lower for accuracy and energy)"),
            arg("--min-change", metavar="PCT", type=float, default=1.0,
                help="with --compare: the smallest change of the median, in percent, that "
                "counts as faster or slower (default 1; p must also be below 0.05)"),
            arg("--exclude-host", action="append", default=[], metavar="HOST",
                help="leave the runs of HOST out of every figure (a host flagged in the hosts "
                "column: its runs are outliers against the other hosts of their GPU type); "
                "repeatable"),
            arg("--check", action="store_true",
                help="hold the sweep's figures to the references of its cluster.yaml "
                "(references: GPU type -> model -> figure -> {value, tolerance_pct}): a line "
                "per reference, exit 1 when a figure's whole 95%% interval is worse than the "
                "reference beyond its tolerance (one run: its value), or nothing measured it"),
            arg("--fail-on-regression", action="store_true",
                help="with --compare: a line per figure tested, exit 1 when one is worse "
                "(slower, lower accuracy, more energy) with p below 0.05 by at least "
                "--min-change percent"),
            arg("--junit", metavar="FILE",
                help="with --check or --fail-on-regression: also write the outcome as JUnit "
                "XML into FILE (a test case per figure), for a CI system to show"),
        ],
        groups=["store"],
    ),
    dict(
        name="report", func="harness.cli.tables:cmd_report",
        help="a static HTML report with plots of a sweep",
        description="Write an HTML page with PNG plots (seconds per epoch, throughput, energy "
        "per image, accuracy curves, utilisation over time), the comparison tables and each "
        "run's provenance. No scripts, relative links: the folder works offline.",
        args=[
            arg("sweep", nargs="?"),
            arg("--out",
                help="folder for index.html and the plots (default: RESULTS/SWEEP/report)"),
        ],
        groups=["store"],
    ),
    dict(
        name="history", func="harness.cli.tables:cmd_history",
        help="each figure across the sweeps of a store, its steps, and what changed at each",
        description="Per GPU type, model and figure with an interval (s/epoch, img/s, final "
        "accuracy, energy per image, time to a target), the sweeps of the store in the "
        "order they were submitted. Lists the steps: where the figure's level changed "
        "significantly (binary segmentation, Mann-Whitney U over the runs on either side), "
        "and for each what differs in the runs' provenance between the sweeps on its two "
        "sides (GPU, driver, CUDA, cuDNN, torch, the code's commit, packages with both "
        "versions). --out DIR also plots each figure with its intervals.",
        args=[
            arg("--out", metavar="DIR",
                help="write DIR/index.html: a plot per figure across the sweeps, with the "
                "intervals and the steps, and the table of steps"),
            arg("--format", choices=("table", "md", "csv", "json"), default="table",
                help="the steps' table format (default: table)"),
            arg("--min-change", metavar="PCT", type=float, default=1.0,
                help="the smallest change of the median, in percent, that is a step "
                "(default 1)"),
        ],
        groups=["store"],
    ),
    dict(
        name="provenance", func="harness.cli.provenance:cmd_provenance",
        help="what differs between two attempts' provenance",
        description="Compare where and with what two attempts ran: host, GPU and its "
        "settings (power limits, ECC, MIG, persistence, PCIe link), driver, CUDA, cuDNN, "
        "NCCL, torch, the CPU, the code's commit, the job environment, and every package "
        "whose version differs. JOB is a job id (or the start of one), its newest attempt, "
        "or JOB:ATTEMPT.",
        args=[
            arg("first", metavar="JOB_A", help="a job id or its start, optionally :ATTEMPT"),
            arg("second", metavar="JOB_B", help="the other attempt, likewise"),
        ],
        groups=["store"],
    ),
    dict(
        name="rerun", func="harness.cli.commands:cmd_rerun",
        help="run chosen jobs again (new attempt), nothing else",
        description="Resubmit exactly the named jobs, or every failed and not-run job with "
        "--failed, as new attempts; other results stay.",
        args=[
            arg("job_ids", nargs="*", metavar="JOB_ID"),
            arg("--failed", action="store_true", help="all failed and not-run jobs"),
            arg("--sweep", help="sweep name (default: the config's)"),
        ],
        groups=["store", "quiet", "wait"],
    ),
    dict(
        name="logs", func="harness.cli.commands:cmd_logs", help="a job's stdout and stderr",
        args=[
            arg("job_id", metavar="JOB_ID", help="job id (a unique prefix will do)"),
            arg("-n", "--lines", type=positive_int, default=50),
        ],
        groups=["store"], defaults={"sweep": None},
    ),
    dict(
        name="cancel", func="harness.cli.recovery:cmd_cancel",
        help="cancel named jobs, or a whole sweep with --sweep NAME / --all",
        description="Cancel the named jobs (ids or unique prefixes; every one must exist, or "
        "nothing is cancelled). A whole sweep is cancelled only when asked for explicitly: "
        "--sweep NAME, or --all for the sweep of -c. Prints each job it cancels. Jobs that "
        "already ended are left as they are; a cancelled job can be run again with rerun.",
        args=[
            arg("job_ids", nargs="*", metavar="JOB_ID"),
            arg("--sweep", help="cancel every unfinished job of this sweep"),
            arg("--all", action="store_true",
                help="cancel every unfinished job of the sweep of -c"),
        ],
        groups=["store"],
    ),
    dict(
        name="ingest", func="harness.cli.recovery:cmd_ingest",
        help="replay job outboxes into the results store",
        description="Write the records of outbox.jsonl files (a file, or every one under a "
        "folder) into the store; idempotent. With the sweep's cluster.yaml (-c) the sweep is "
        "planned into the store and each job takes the state its outbox ended in: after a "
        "lost or damaged store, `ingest RESULTS_DIR -c CLUSTER_YAML` brings back the tables "
        "it showed. A store that is gone is created.",
        args=[
            arg("path", help="an outbox.jsonl or a folder to search"),
            arg("--sweep",
                help="also record each outbox's job (run by hand or elsewhere) as a job of "
                "this sweep, so that table and report show it"),
        ],
        groups=["store"],
    ),
    dict(
        name="thin", func="harness.cli.recovery:cmd_thin",
        help="drop a sweep's telemetry samples, keep its per-epoch figures",
        description="Delete the per-second telemetry samples of a sweep's finished jobs "
        "(succeeded, failed or cancelled), which are most of a store's size. What the tables "
        "show stays: GPU utilisation, memory, power and energy are kept per epoch in the "
        "epoch rows. The report loses its utilisation-over-time plot for those jobs. Jobs "
        "still queued or running keep theirs.",
        args=[
            arg("sweep", nargs="?"),
            arg("--dry-run", action="store_true",
                help="say how many samples of how many jobs would go, delete nothing"),
        ],
        groups=["store"],
    ),
    dict(
        name="train", func="harness.cli.commands:cmd_job", job=True,
        help="train one network on one dataset, here and now",
        description=JOB_HELP.format(stage="train"),
    ),
    dict(
        name="transfer", func="harness.cli.commands:cmd_job", job=True,
        help="fine-tune a trained network on another dataset, here and now",
        description=JOB_HELP.format(stage="transfer"),
    ),
    dict(
        name="export", func="harness.cli.commands:cmd_job", job=True,
        help="export a trained network (ONNX, AOTInductor, Caffe2's ONNX), here and now",
        description="Run one export job in this process: from a training or transfer job's "
        "folder (or the best of several), write the state dict, ONNX (opset 18), the opset-11 "
        "file Caffe2 reads and an AOTInductor package into --out/artifacts, each checked "
        "against eager PyTorch on real test images. Exit codes: 0 done, 2 bad input, 4 an "
        "artifact off by more than --tolerance.",
    ),
    dict(
        name="infer", func="harness.cli.commands:cmd_job", job=True,
        help="measure an exported network in every runtime, here and now",
        description="Run one inference job in this process: the export's network in PyTorch "
        "eager, torch.compile, AOTInductor, ONNX Runtime (and its INT8) and Caffe2, at each "
        "batch size: latency percentiles, throughput, accuracy over the test set and "
        "agreement with eager. A runtime that cannot run here is a row with the reason. Exit "
        "codes: 0 done, 2 bad input.",
    ),
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnest-bench",
        description=(
            "Benchmark split-attention networks (ResNeSt) across GPU types: train each block "
            "variant on each GPU type, export and deploy it, and compare the results."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(
            command["name"], help=command["help"], description=command.get("description")
        )
        for flags, options in command.get("args", []):
            p.add_argument(*flags, **options)
        for group in command.get("groups", []):
            for flags, options in GROUPS[group]:
                p.add_argument(*flags, **options)
        if command.get("job"):
            add_arguments(p, command["name"])
        p.set_defaults(func=command["func"], **command.get("defaults", {}))
    return parser
