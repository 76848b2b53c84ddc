"""The ``resnest-bench`` command line.

Start-up stays light: subcommands import torch and the model zoo only when they run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from harness import __version__
from harness.errors import UserError
from harness.render import FORMATS, TABLE_FORMATS, render
from jobs.spec import add_job_arguments

DEFAULT_CONFIG = "cluster.yaml"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def _cmd_models(args: argparse.Namespace) -> None:
    from resnest import list_models
    from resnest.summary import summarize

    rows = []
    for name in list_models():
        s = summarize(name, num_classes=args.num_classes)
        rows.append(
            {
                "name": s.name,
                "block": s.block,
                "stages": list(s.stages),
                "radix": s.radix,
                "params": s.parameters,
                "MFLOPs@32": round(s.mflops_32, 1),
                "MFLOPs@224": round(s.mflops_224, 1),
                "fp32 MB": round(s.fp32_mb, 1),
            }
        )
    print(render(rows, args.format))


def _cmd_job(args: argparse.Namespace) -> int:
    from jobs.train import run_from_args

    return run_from_args(args, args.command)


def _cmd_submit(args: argparse.Namespace) -> int:
    from harness import config as cluster_config
    from harness.planner import plan, select

    config = cluster_config.load(args.config)
    if args.launcher:
        config = config.model_copy(
            update={"launcher": config.launcher.model_copy(update={"kind": args.launcher})}
        )
    if args.dry_run:
        jobs = select(plan(config), args.only)
        print(render([job.row() for job in jobs], args.format))
        stages: dict[str, int] = {}
        for job in jobs:
            stages[job.stage] = stages.get(job.stage, 0) + 1
        summary = ", ".join(f"{n} {stage}" for stage, n in stages.items())
        print(
            f"{len(jobs)} jobs ({summary}) for sweep {config.name!r} on the "
            f"{config.launcher.kind} launcher; dry run, nothing submitted",
            file=sys.stderr,
        )
        return 0
    from harness import sweep

    outcome = sweep.submit(
        config, args.only, progress=not args.quiet, wait=args.wait, timeout=args.timeout
    )
    if outcome["in_flight"]:
        print(
            f"{outcome['in_flight']} job(s) still queued or running from an earlier "
            "submission: left as they are",
            file=sys.stderr,
        )
    if outcome["final"] is None:
        return _queued(config, outcome["launched"], args)
    return _finish(
        outcome["store"], config.name, outcome["final"], args, skipped=outcome["skipped"]
    )


def _queued(config, launched: list[str], args) -> int:
    print(
        f"sweep {config.name!r}: {len(launched)} job(s) queued on {config.launcher.kind}; "
        f"follow with: resnest-bench status {config.name} -c {_config_path(args)}",
        file=sys.stderr,
    )
    return 0


def _finish(store, sweep_name: str, final: dict[str, str], args, skipped: int = 0) -> int:
    from harness.report import comparison, prices_of

    counts = {s: list(final.values()).count(s) for s in ("succeeded", "failed", "cancelled")}
    print(
        f"sweep {sweep_name!r}: {counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{counts['cancelled']} not run" + (f", {skipped} already done" if skipped else ""),
        file=sys.stderr,
    )
    if counts["failed"] or counts["cancelled"]:
        print(f"see: resnest-bench status {sweep_name} -c {_config_path(args)}", file=sys.stderr)
    print_comparison(comparison(store, sweep_name, prices=prices_of(store, sweep_name)), "table")
    return 1 if counts["failed"] else 0


def print_comparison(rows: list[dict], fmt: str) -> None:
    from harness.report import per_model_blocks

    if fmt != "table":
        print(render(rows, fmt))
        return
    if not rows:
        print("(no finished training jobs yet)")
    for model, block in per_model_blocks(rows):
        print(f"\n{model}")
        print(render(block, "table"))


def _config_path(args: argparse.Namespace) -> str:
    return args.config or DEFAULT_CONFIG


def _open_store(args: argparse.Namespace, create: bool = False):
    """The store named by --store, or the one of the cluster.yaml given by -c. Only commands
    that write (ingest) may create it; a read that finds nothing says where it looked."""
    from harness import config as cluster_config
    from harness.store import Store, StoreMissing, open_store

    if args.store:
        return None, Store(args.store, create=create)
    path = _config_path(args)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file (give -c CLUSTER_YAML or --store URL)")
    config = cluster_config.load(path)
    try:
        return config, open_store(config.store, config.results_dir, create=create)
    except StoreMissing as exc:
        hint = "" if args.config else "; give -c with the sweep's cluster.yaml, or --store URL"
        raise UserError(
            f"{exc}: the store of {path} (results_dir {config.results_dir}) does not exist: "
            f"nothing was submitted with it from here{hint}"
        ) from None


def _store_and_sweep(args: argparse.Namespace, create: bool = False):
    from harness.store import redact

    config, store = _open_store(args, create)
    known = store.sweeps()
    sweep_name = getattr(args, "sweep", None) or (config.name if config else None)
    if sweep_name is None:
        if not known:
            raise UserError(f"the store {redact(store.url)} holds no sweep yet")
        sweep_name = known[-1]
    if sweep_name not in known:
        where = f"the store of {_config_path(args)}" if config else "the store"
        raise UserError(
            f"no sweep {sweep_name!r} in {where} ({redact(store.url)}); it holds: "
            f"{', '.join(known) or 'no sweep'}"
        )
    return config, store, sweep_name


def _refresh(store, sweep_name: str) -> None:
    """Queue states from the cluster (sacct) before showing them; a machine without the
    cluster's tools shows the states last recorded, and says so."""
    from harness.sweep import refresh

    try:
        refresh(store, store.jobs(sweep_name))
    except UserError as exc:
        print(f"resnest-bench: states as last recorded ({exc})", file=sys.stderr)


def _cmd_status(args: argparse.Namespace) -> int:
    from harness.report import status_rows

    _, store, sweep_name = _store_and_sweep(args)
    _refresh(store, sweep_name)
    counts, rows = status_rows(store, sweep_name)
    print(f"sweep {sweep_name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    print(render(rows, args.format))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from harness.report import comparison, prices_of

    _, store, sweep_name = _store_and_sweep(args)
    _refresh(store, sweep_name)
    if args.deploy:
        from harness.report import deployment

        rows = deployment(store, sweep_name)
        if not rows:
            print("(no inference results yet)")
        else:
            print(render(rows, args.format))
        if args.format == "table":
            print(
                "ms/image @1: median latency at batch 1; best img/s over the batch sizes; "
                "agreement: top-1 agreement with PyTorch eager on the whole test set, ! below "
                "99.9%",
                file=sys.stderr,
            )
        return 0
    rows = comparison(store, sweep_name, args.reference, prices=prices_of(store, sweep_name))
    measured = [row["gpu_type"] for row in rows]
    if args.reference and args.reference not in measured:
        raise UserError(
            f"--reference {args.reference!r}: no finished run on that GPU type in sweep "
            f"{sweep_name!r} (it has: {', '.join(measured) or 'none yet'})"
        )
    if args.layout == "study":
        from harness.report import study_tables

        tables = study_tables(rows)
        if args.format != "table":
            print(
                render([{"table": title, **row} for title, t in tables for row in t], args.format)
            )
        for title, table in tables if args.format == "table" else []:
            print(f"\n{title}")
            print(render(table, "table"))
    else:
        print_comparison(rows, args.format)
    if args.format == "table":
        print(
            "epoch times, images/s and telemetry: medians over the epochs after the first "
            "(warm-up) epoch, then over runs; CV across runs, ! above 5%; gpu mismatch: runs "
            "whose GPU was not the GPU type asked for",
            file=sys.stderr,
        )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.plots import build

    config, store, sweep_name = _store_and_sweep(args)
    _refresh(store, sweep_name)
    if args.out:
        out = Path(args.out)
    elif config is not None:
        out = Path(config.results_dir) / sweep_name / "report"
    else:
        out = Path(f"report-{sweep_name}")
    page = build(store, sweep_name, out)
    print(f"report: {page} (open it in a browser; the folder works offline)")
    return 0


def _cmd_rerun(args: argparse.Namespace) -> int:
    from harness import sweep

    config, _, sweep_name = _store_and_sweep(args)
    if config is None:
        raise UserError("rerun needs the sweep's cluster.yaml (-c)")
    if not args.job_ids and not args.failed:
        raise UserError("name the jobs to rerun, or give --failed")
    outcome = sweep.rerun(
        config,
        args.job_ids,
        args.failed,
        progress=not args.quiet,
        wait=args.wait,
        timeout=args.timeout,
    )
    if not outcome["launched"]:
        print(f"nothing to rerun: no failed or not-run job in sweep {sweep_name!r}")
        return 0
    if outcome["final"] is None:
        return _queued(config, outcome["launched"], args)
    return _finish(outcome["store"], sweep_name, outcome["final"], args)


def _cmd_logs(args: argparse.Namespace) -> int:
    from pathlib import Path

    _, store, _ = _store_and_sweep(args)
    job = store.job(args.job_id)
    if job is None:
        raise UserError(f"no job {args.job_id!r} in the store")
    if job["state"] != "pending" and not Path(job["job_dir"]).is_dir():
        raise UserError(
            f"job {job['id']}: its folder {job['job_dir']} does not exist (moved or deleted); "
            f"run it again with: resnest-bench rerun {job['id']}"
        )
    paths = [Path(job["job_dir"]) / name for name in ("stdout.log", "stderr.log")]
    if (job["launcher_job_id"] or "").startswith("slurm:"):
        from harness.launchers.slurm import log_paths

        paths = log_paths(job)
    for path in paths:
        print(f"==> {path} <==")
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            print("\n".join(lines[-args.lines :]))
        else:
            print("(not written yet)")
    return 0


UNFINISHED = ("pending", "submitted", "running")


def _cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel the named jobs, or a whole sweep when asked for it by name (--sweep) or with
    --all; a target that matches no job is an error and nothing is cancelled."""
    if args.job_ids and (args.sweep or args.all):
        raise UserError("name jobs, or a whole sweep with --sweep NAME / --all, not both")
    if not args.job_ids and not (args.sweep or args.all):
        raise UserError(
            "name the jobs to cancel (JOB_ID ...), or cancel a whole sweep with --sweep NAME "
            "or --all (the sweep of -c)"
        )
    _, store, sweep_name = _store_and_sweep(args)
    if args.job_ids:
        targets = []
        for job_id in args.job_ids:
            job = store.job(job_id)
            if job is None:
                raise UserError(f"no job {job_id!r} in the store: nothing cancelled")
            targets.append(job)
        what = f"{len(targets)} named job(s)"
    else:
        targets = store.jobs(sweep_name)
        what = f"sweep {sweep_name!r}"
    unfinished = [job for job in targets if job["state"] in UNFINISHED]
    for job in targets:
        if job["state"] not in UNFINISHED:
            print(f"  {job['id']}  already {job['state']}: left as it is", file=sys.stderr)
    if not unfinished:
        print(f"nothing to cancel in {what}: no job is pending, queued or running")
        return 0
    for job in unfinished:
        print(
            f"cancelling {job['id']}  {job['stage']} {job['model']} on {job['gpu_type']} "
            f"({job['state']})"
        )
    _cancel_jobs(store, unfinished)
    print(f"cancelled {len(unfinished)} job(s) of {what}")
    return 0


def _cancel_jobs(store, jobs: list[dict]) -> None:
    import signal

    on_slurm = []
    for job in jobs:
        launcher_id = job["launcher_job_id"] or ""
        if job["state"] == "running" and launcher_id.startswith("pid:"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(launcher_id[4:]), signal.SIGTERM)
        if launcher_id.startswith("slurm:"):
            on_slurm.append(launcher_id.removeprefix("slurm:"))
        store.set_state(job["id"], "cancelled", reason="cancelled by the user")
    if on_slurm:
        from harness.launchers.slurm import cancel

        cancel(on_slurm)


def _cmd_ingest(args: argparse.Namespace) -> int:
    """Replay outboxes into the store (creating it if it is gone). With the sweep's
    cluster.yaml, the sweep is planned into the store again and every job takes the state its
    outbox ended in, so that tables after a lost store are the tables from before."""
    from pathlib import Path

    from harness.store import redact
    from jobs.reporter import OutboxError, read_outbox

    path = Path(args.path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    config, store = _open_store(args, create=True)
    outboxes = [path] if path.is_file() else sorted(path.rglob("outbox.jsonl"))
    planned: set[str] = set()
    sweep_name = args.sweep
    if config is not None and not args.sweep:
        from harness import sweep as sweeps

        planned = sweeps.record_plan(config, store)
        sweep_name = config.name
    total = outside = 0
    for outbox in outboxes:
        try:
            records = read_outbox(outbox)
            total += store.write_records(records)
        except OutboxError as exc:
            raise UserError(str(exc)) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{outbox}: not an outbox: a record lacks {exc}") from None
        job_id = next((r.get("job_id") for r in records if r.get("kind") == "start"), None)
        if job_id and job_id in planned:
            _restore_state(store, job_id, records)
        elif args.sweep:
            _adopt(store, args.sweep, outbox, records)
        elif config is not None:
            outside += 1
    into = f" (sweep {sweep_name!r})" if sweep_name else ""
    print(
        f"ingested {total} records from {len(outboxes)} outbox file(s) into "
        f"{redact(store.url)}{into}"
    )
    if outside:
        print(
            f"{outside} outbox(es) belong to no job of sweep {sweep_name!r}: their records are "
            "stored; to show them in a sweep's tables, ingest them with --sweep NAME",
            file=sys.stderr,
        )
    return 0


def _restore_state(store, job_id: str, records: list[dict]) -> None:
    """A planned job's state from its outbox: the last attempt's final record, if any."""
    attempt = max(r.get("attempt", 0) for r in records)
    final = next(
        (r for r in reversed(records) if r["kind"] == "final" and r.get("attempt") == attempt),
        None,
    )
    row = store.job(job_id)
    if final is None:
        if row["state"] in ("pending",):
            store.set_state(job_id, "failed", attempt=attempt, reason="ended without a final "
                            "record (found by ingest)")  # fmt: skip
        return
    status = final.get("status")
    state = status if status in ("succeeded", "failed") else "failed"
    store.set_state(job_id, state, attempt=attempt, reason=final.get("reason"))


def _adopt(store, sweep: str, outbox, records: list[dict]) -> None:
    """Record a job run outside any sweep (by hand, on another machine) as a job of ``sweep``,
    from its outbox's start record, so that tables and reports include it."""
    start = next((r for r in records if r["kind"] == "start"), None)
    if start is None:
        raise UserError(f"{outbox}: no start record, so no job to add to sweep {sweep!r}")
    spec = start["spec"]
    job_id = start["job_id"]
    if not job_id:
        raise UserError(f"{outbox}: the job has no id (run it again with a current version)")
    final = next((r for r in reversed(records) if r["kind"] == "final"), None)
    if sweep not in store.sweeps():
        store.add_sweep(sweep, {"adopted": True})
    store.add_jobs(
        sweep,
        [
            {
                "id": job_id,
                "stage": spec["stage"],
                "model": spec["model"],
                "dataset": spec["dataset"],
                "gpu_type": spec.get("gpu_type") or spec.get("expect_gpu") or "unknown",
                "gpus": start.get("world_size", 1),
                "seed": spec.get("seed", 0),
                "repeat": 0,
                "spec": spec,
                "depends_on": [],
                "job_dir": str(outbox.parent.resolve()),
            }
        ],
    )
    state = final["status"] if final else "running"
    store.set_state(job_id, state if state in ("succeeded", "failed") else "running",
                    attempt=start.get("attempt", 0))  # fmt: skip


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

    models = sub.add_parser(
        "models",
        help="list the named network configurations with their size and compute",
        description=(
            "List the model zoo's named configurations: block style, stage depths, radix, "
            "parameters, FLOPs (2 x multiply-adds, convolutions and linear layers) for one "
            "image at 32x32 and 224x224, and the size of the fp32 weights."
        ),
    )
    models.add_argument(
        "--num-classes",
        type=_positive_int,
        default=10,
        help="classes of the classifier head (default: 10, as for CIFAR-10)",
    )
    models.add_argument(
        "--format", choices=FORMATS, default="table", help="output format (default: table)"
    )
    models.set_defaults(func=_cmd_models)

    def wait_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--wait",
            action="store_true",
            help="slurm: follow the jobs (sacct, polled with backoff) until they end and print "
            "the table; without it the command returns once the jobs are queued. The local "
            "launcher always waits.",
        )
        p.add_argument(
            "--timeout",
            type=_positive_seconds,
            metavar="S",
            help="with --wait: give up following after S seconds (the jobs stay queued)",
        )

    submit = sub.add_parser(
        "submit",
        help="plan a sweep from cluster.yaml and submit it",
        description=(
            "Validate cluster.yaml, expand the sweep's axes into jobs (train -> transfer -> "
            "export -> infer, each with an id hashed from its spec) and submit them. "
            "--dry-run prints the plan and submits nothing."
        ),
    )
    submit.add_argument("config", help="the sweep and site description (cluster.yaml)")
    submit.add_argument(
        "--launcher", choices=("local", "slurm", "ray"), help="override launcher.kind"
    )
    submit.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    submit.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only jobs matching (stage, model, dataset, gpu_type, seed, repeat or id), with "
        "the jobs they depend on; repeatable",
    )
    submit.add_argument("--format", choices=FORMATS, default="table", help="plan output format")
    submit.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    wait_options(submit)
    submit.set_defaults(func=_cmd_submit)

    def store_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            help="the sweep's cluster.yaml, to find its store (default: ./cluster.yaml)",
        )
        p.add_argument("--store", help="results store URL instead (password from PGPASSWORD)")

    status = sub.add_parser(
        "status",
        help="jobs of a sweep by state, failures with reasons",
        description="Counts by state and a table of the sweep's jobs; "
        "failed jobs with their reason and log path.",
    )
    status.add_argument(
        "sweep", nargs="?", help="sweep name (default: the config's, or the newest in the store)"
    )
    store_options(status)
    status.add_argument("--format", choices=FORMATS, default="table")
    status.set_defaults(func=_cmd_status)

    table = sub.add_parser(
        "table",
        help="the GPU comparison table of a sweep",
        description="Rows: GPU types; per model: median epoch time (warm-up "
        "excluded), images/s, speedup against the reference GPU type, final "
        "and best test accuracy, time to target, transfer accuracy, runs, CV.",
    )
    table.add_argument("sweep", nargs="?")
    store_options(table)
    table.add_argument("--format", choices=TABLE_FORMATS, default="table")
    table.add_argument("--reference", help="GPU type for the speedup column (default: first)")
    table.add_argument(
        "--deploy",
        action="store_true",
        help="the deployment table instead: per network and runtime, test accuracy, time per "
        "image at batch 1, best throughput, size on disk, top-1 agreement with PyTorch eager",
    )
    table.add_argument(
        "--layout",
        choices=("gpu", "study"),
        default="gpu",
        help="gpu: a row per GPU type, a column group per model (default); study: the "
        "study's tables, a row per variant and a column per GPU type with the average "
        "(test accuracy, seconds per epoch, transfer accuracy)",
    )
    table.set_defaults(func=_cmd_table)

    report = sub.add_parser(
        "report",
        help="a static HTML report with plots of a sweep",
        description="Write an HTML page with PNG plots (seconds per epoch, throughput, "
        "energy per image, accuracy curves, utilisation over time), the comparison tables "
        "and each run's provenance. No scripts, relative links: the folder works offline.",
    )
    report.add_argument("sweep", nargs="?")
    store_options(report)
    report.add_argument(
        "--out", help="folder for index.html and the plots (default: RESULTS/SWEEP/report)"
    )
    report.set_defaults(func=_cmd_report)

    rerun = sub.add_parser(
        "rerun",
        help="run chosen jobs again (new attempt), nothing else",
        description="Resubmit exactly the named jobs, or every failed and "
        "not-run job with --failed, as new attempts; other results stay.",
    )
    rerun.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    rerun.add_argument("--failed", action="store_true", help="all failed and not-run jobs")
    rerun.add_argument("--sweep", help="sweep name (default: the config's)")
    store_options(rerun)
    rerun.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    wait_options(rerun)
    rerun.set_defaults(func=_cmd_rerun)

    logs = sub.add_parser("logs", help="a job's stdout and stderr")
    logs.add_argument("job_id", metavar="JOB_ID", help="job id (a unique prefix will do)")
    logs.add_argument("-n", "--lines", type=_positive_int, default=50)
    store_options(logs)
    logs.set_defaults(func=_cmd_logs, sweep=None)

    cancel = sub.add_parser(
        "cancel",
        help="cancel named jobs, or a whole sweep with --sweep NAME / --all",
        description="Cancel the named jobs (ids or unique prefixes; every one must exist, or "
        "nothing is cancelled). A whole sweep is cancelled only when asked for explicitly: "
        "--sweep NAME, or --all for the sweep of -c. Prints each job it cancels. Jobs that "
        "already ended are left as they are; a cancelled job can be run again with rerun.",
    )
    cancel.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    cancel.add_argument("--sweep", help="cancel every unfinished job of this sweep")
    cancel.add_argument(
        "--all", action="store_true", help="cancel every unfinished job of the sweep of -c"
    )
    store_options(cancel)
    cancel.set_defaults(func=_cmd_cancel)

    ingest = sub.add_parser(
        "ingest",
        help="replay job outboxes into the results store",
        description="Write the records of outbox.jsonl files (a file, or "
        "every one under a folder) into the store; idempotent. With the sweep's "
        "cluster.yaml (-c) the sweep is planned into the store and each job takes the state "
        "its outbox ended in: after a lost or damaged store, `ingest RESULTS_DIR -c "
        "CLUSTER_YAML` brings back the tables it showed. A store that is gone is created.",
    )
    ingest.add_argument("path", help="an outbox.jsonl or a folder to search")
    ingest.add_argument(
        "--sweep",
        help="also record each outbox's job (run by hand or elsewhere) as a job of this "
        "sweep, so that table and report show it",
    )
    store_options(ingest)
    ingest.set_defaults(func=_cmd_ingest)

    for stage, summary in (
        ("train", "train one network on one dataset, here and now"),
        ("transfer", "fine-tune a trained network on another dataset, here and now"),
    ):
        job = sub.add_parser(
            stage,
            help=summary,
            description=(
                f"Run one {stage} job in this process: a progress bar while it runs, a line per "
                "epoch, checkpoints and outbox.jsonl in the --out folder; rerunning the same "
                "command resumes from the latest valid checkpoint. For DDP on N devices: "
                f"torchrun --nproc_per_node=N -m jobs.{stage} with the same options. "
                "Exit codes: 0 done, 2 bad input, 3 diverged, 75 stopped by SIGTERM/SIGUSR1 "
                "after a checkpoint (requeue)."
            ),
        )
        add_job_arguments(job, stage)
        job.set_defaults(func=_cmd_job)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnest-bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except OSError as exc:  # a file or folder the user named or made: say which and why
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"resnest-bench: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not any(c.__module__.startswith("sqlalchemy") for c in type(exc).__mro__):
            raise
        from harness.store import store_problem

        print(f"resnest-bench: error: results store: {store_problem(exc)}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
