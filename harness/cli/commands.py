"""The commands that plan, run and look after a sweep: models, submit, rerun, logs, and the
jobs run here and now (train, transfer); status is in ``harness.cli.status``, the figures'
commands (table, report, history) in ``harness.cli.tables``. Each is a thin function of its
parsed arguments; the work is done in ``harness.sweep``, ``harness.report`` and the launchers.
Start-up stays light: commands import torch and the model zoo only when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.render import render, wrapped
from records.errors import UserError
from records.schema import ENDED, JobRow

DEFAULT_CONFIG = "cluster.yaml"
WIDTH = 120  # the terminal table's width at most: a wider one is cut into tables one under another


def cmd_models(args: argparse.Namespace) -> None:
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


def cmd_job(args: argparse.Namespace) -> int:
    from jobs.run import run_from_args

    return run_from_args(args, args.command)


def cmd_submit(args: argparse.Namespace) -> int:
    from harness import config as cluster_config
    from harness.planner import plan, select

    config = cluster_config.load(args.config)
    given = [flag for flag, value in (("--budget", args.budget is not None),
             ("--resolve", args.resolve), ("--compare", args.compare),
             ("--min-change", args.min_change != 1.0)) if value]  # fmt: skip
    if given and not args.until_resolved:
        raise UserError(f"{given[0]} goes with --until-resolved")
    if args.until_resolved and args.dry_run:
        raise UserError("--until-resolved runs the sweep: not with --dry-run")
    if args.launcher:
        config = cluster_config.with_launcher(config, args.launcher, args.config)
    if args.dry_run:
        jobs = select(plan(config), args.only)
        print(render([job.row() for job in jobs], args.format))
        stages: dict[str, int] = {}
        for job in jobs:
            stages[job.stage] = stages.get(job.stage, 0) + 1
        summary = ", ".join(f"{n} {stage}" for stage, n in stages.items())
        from harness.sweep import placement

        for line in placement(config, jobs):
            print(line, file=sys.stderr)
        print(
            f"{len(jobs)} jobs ({summary}) for sweep {config.name!r} on the "
            f"{config.launcher.kind} launcher; dry run, nothing submitted",
            file=sys.stderr,
        )
        return 0
    from harness import sweep

    if args.until_resolved:
        return _until_resolved(config, args)
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
        return _queued(config, outcome["launched"], args, outcome["store"])
    return _finish(
        outcome["store"], config.name, outcome["final"], args, skipped=outcome["skipped"]
    )


def _until_resolved(config, args: argparse.Namespace) -> int:
    """``submit --until-resolved``: its options checked before anything runs, the waves
    (``harness.resolve``), what stayed unresolved, and the table."""
    from harness.headlines import with_targets
    from harness.resolve import until_resolved
    from harness.sweep import store_for

    if not args.min_change >= 0:  # NaN too
        raise UserError(f"--min-change {args.min_change:g}: a change in percent, 0 or more")
    if args.budget is not None and args.budget < 0:
        raise UserError(f"--budget {args.budget}: a number of training runs, 0 or more")
    known = with_targets(config.sweep.targets)
    for figure in args.resolve:
        if figure not in known:
            raise UserError(f"--resolve {figure!r}: expected one of {', '.join(known)}")
    if args.compare and args.compare not in store_for(config).sweeps():
        raise UserError(f"--compare {args.compare!r}: no such sweep in the store of {args.config}")
    outcome = until_resolved(config, args)
    for comparison in outcome["unresolved"]:
        print(f"unresolved: {comparison.describe()}", file=sys.stderr)
    resolved = len(outcome["judged"]) - len(outcome["unresolved"])
    why = ""
    if outcome["timed_out"]:
        why = "; the wait timed out (the jobs stay queued: resnest-bench status)"
    elif outcome["unresolved"] and outcome["spent"] >= outcome["budget"]:
        why = f"; the budget of {outcome['budget']} added runs is spent"
    elif outcome["unresolved"]:
        why = "; no more runs could be planned for them"
    print(f"until resolved: {resolved} of {len(outcome['judged'])} comparisons resolved "
          f"after {outcome['waves']} wave(s), {outcome['spent']} run(s) added{why}",
          file=sys.stderr)  # fmt: skip
    return _finish(outcome["store"], config.name, outcome["final"], args)


def _queued(config, launched: list[str], args, store) -> int:
    rows = store.jobs_by_ids(launched)
    waiting = [row for row in rows if row["state"] == "waiting"]
    held = f", {len(waiting)} waiting for room ({waiting[0]['reason']})" if waiting else ""
    then = " (it also submits waiting jobs as room frees)" if waiting else ""
    if waiting:
        from harness import launchers

        then = launchers.get(config.launcher.kind, store, config).waiting_note() or then
    print(
        f"sweep {config.name!r}: {len(launched) - len(waiting)} job(s) queued on "
        f"{config.launcher.kind}{held}; follow with: resnest-bench status {config.name} "
        f"-c {_config_path(args)}{then}",
        file=sys.stderr,
    )
    return 0


def _finish(store, sweep_name: str, final: dict[str, str], args, skipped: int = 0) -> int:
    from harness.report import comparison, prices_of

    counts = {s: list(final.values()).count(s) for s in ENDED}
    print(
        f"sweep {sweep_name!r}: {counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{counts['cancelled']} not run" + (f", {skipped} already done" if skipped else ""),
        file=sys.stderr,
    )
    if counts["failed"] or counts["cancelled"]:
        print(f"see: resnest-bench status {sweep_name} -c {_config_path(args)}", file=sys.stderr)
    print_comparison(comparison(store, sweep_name, prices=prices_of(store, sweep_name)), "table")
    return 1 if counts["failed"] else 0


def print_comparison(rows: list[dict], fmt: str, wide: bool = False) -> None:
    """The wide comparison: md and html whole; for the terminal a table per model, without
    the intervals' columns unless ``wide``."""
    from harness.report import per_model_blocks, without_spreads

    if fmt != "table":
        print(render(rows, fmt))
        return
    rows = rows if wide else without_spreads(rows)
    if not rows:
        print("(no finished training jobs yet)")
    for model, block in per_model_blocks(rows):
        print(f"\n{model}")
        print(wrapped(block, WIDTH))


def _config_path(args: argparse.Namespace) -> str:
    return args.config or DEFAULT_CONFIG


def open_store_of(args: argparse.Namespace, create: bool = False):
    """The store named by --store, or the one of the cluster.yaml given by -c. Only commands
    that write (ingest) may create it; a read that finds nothing says where it looked."""
    from harness import config as cluster_config
    from records.store import Store, StoreMissing, open_store

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


def store_and_sweep(args: argparse.Namespace, create: bool = False):
    from records.store import redact

    config, store = open_store_of(args, create)
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


def _refresh(store, sweep_name: str, rows: list[JobRow] | None = None) -> list[JobRow]:
    """Queue states from the cluster (sacct) and the jobs' new records from their outboxes
    before showing them; a machine without the cluster's tools shows the states last
    recorded, and says so. Returns the rows as they are now (the sweep's, or those given)."""
    from harness.sweep import refresh

    current = store.jobs(sweep_name) if rows is None else rows
    try:
        changed = refresh(store, current)
    except UserError as exc:
        print(f"resnest-bench: states as last recorded ({exc})", file=sys.stderr)
        changed = True
    if not changed:
        return current
    return store.reread(current)


def cmd_rerun(args: argparse.Namespace) -> int:
    from harness import sweep

    config, _, sweep_name = store_and_sweep(args)
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
        return _queued(config, outcome["launched"], args, outcome["store"])
    return _finish(outcome["store"], sweep_name, outcome["final"], args)


def cmd_logs(args: argparse.Namespace) -> int:

    _, store, _ = store_and_sweep(args)
    job = store.job(args.job_id)
    if job is None:
        raise UserError(f"no job {args.job_id!r} in the store")
    _refresh(store, job["sweep"], [job])
    job = store.job(job["id"])
    from harness import launchers
    from harness.launchers.base import folder_logs

    name = launchers.launcher_of(job)
    paths = launchers.get(name, store).logs(job) if name else folder_logs(job)
    # A job's folder is made when it starts (a SLURM job's on its node, which keeps its logs
    # elsewhere): a job that ran and has neither is one whose folder went.
    ran = job["state"] in ("running", "succeeded", "failed")
    if ran and not Path(job["job_dir"]).is_dir() and not any(p.is_file() for p in paths):
        raise UserError(
            f"job {job['id']}: its folder {job['job_dir']} does not exist (moved or deleted); "
            f"run it again with: resnest-bench rerun {job['id']}"
        )
    for path in paths:
        print(f"==> {path} <==")
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            print("\n".join(lines[-args.lines :]))
        else:
            print("(not written yet)")
    return 0
