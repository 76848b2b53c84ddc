"""The commands that plan, run and read a sweep: models, submit, status, table, report,
rerun, logs, and the jobs run here and now (train, transfer). Each is a thin function of its
parsed arguments; the work is done in ``harness.sweep``, ``harness.report`` and the launchers.
Start-up stays light: commands import torch and the model zoo only when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.render import render
from records.errors import UserError
from records.schema import ENDED, JobRow

DEFAULT_CONFIG = "cluster.yaml"


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
        print(render(block, "table"))


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
    return store.jobs(sweep_name) if rows is None else store.jobs_by_ids([r["id"] for r in rows])


MACHINE_FORMATS = ("csv", "json", "parquet")


def cmd_table(args: argparse.Namespace) -> int:
    from harness.report import comparison, prices_of

    config, store, sweep_name = store_and_sweep(args)
    _gate_flags(args)
    if args.format == "parquet" and not args.out:
        raise UserError("--format parquet writes a file: name it with --out FILE")
    if args.out and args.format == "table":
        raise UserError("--out writes md, csv, json, html or parquet: add --format")
    _refresh(store, sweep_name)
    if args.deploy:
        return _deploy_table(store, sweep_name, args)
    prices = prices_of(store, sweep_name)
    excluded = _excluded_hosts(store, sweep_name, args.exclude_host)
    rows = comparison(store, sweep_name, args.reference, prices, excluded)
    if args.compare:
        from harness.report import side_by_side

        if not args.min_change >= 0:  # NaN too
            raise UserError(f"--min-change {args.min_change:g}: a change in percent, 0 or more")
        if args.compare not in store.sweeps():
            raise UserError(f"--compare {args.compare!r}: no such sweep in {store.url}")
        from harness.figures import run_values

        other = comparison(store, args.compare, prices=prices_of(store, args.compare))
        runs = run_values(store, sweep_name, excluded)
        table = side_by_side(rows, other, sweep_name, args.compare, runs,
                             run_values(store, args.compare), args.min_change)  # fmt: skip
        if args.fail_on_regression:
            from harness.references import compared
            from harness.report import tested_columns

            outcomes = compared(table, tested_columns(runs))
            return _gate(outcomes, args, f"{sweep_name} against {args.compare}")
        if table or args.format in MACHINE_FORMATS:
            return emit(table, args)
        print("(no figure measured in both sweeps)")
        return 0
    if args.check:
        return _check(store, sweep_name, config, args, prices, excluded)
    measured = [row["gpu_type"] for row in rows]
    types = {label.split(" (", 1)[0] for label in measured}  # "v100 (2 nodes)": a v100 row
    if args.reference and args.reference not in {*measured, *types}:
        raise UserError(
            f"--reference {args.reference!r}: no finished run on that GPU type in sweep "
            f"{sweep_name!r} (it has: {', '.join(measured) or 'none yet'})"
        )
    if args.layout == "study":
        from harness.report import study_tables

        tables = study_tables(rows)
        if args.format != "table":
            return emit([{"table": title, **row} for title, t in tables for row in t], args)
        for title, table in tables:
            print(f"\n{title}")
            print(render(table, "table"))
    elif args.format in MACHINE_FORMATS:  # the tidy figures, a row per GPU type and model
        from harness import figures

        return emit(figures.figures(store, sweep_name, args.reference, prices, False, excluded),
                    args)  # fmt: skip
    elif args.out:
        return emit(rows, args)  # md or html: the wide table
    else:
        print_comparison(rows, args.format, wide=args.wide)
    if args.format == "table":
        print(
            "epoch times, images/s and telemetry: medians over the epochs after the first "
            "(warm-up) epoch, then over runs; CV across runs, ! above 5%; gpu mismatch: runs "
            "whose GPU was not the GPU type asked for; ±: the 95% interval over the runs "
            "(percentile bootstrap), as its larger distance from the figure, with --wide; "
            "hosts: how many the runs came from, ! naming one whose runs are outliers against "
            "the other hosts' (over 3.5 MADs from their median; --exclude-host HOST)",
            file=sys.stderr,
        )
    return 0


def _excluded_hosts(store, sweep_name: str, hosts: list[str]) -> set[str]:
    """``--exclude-host``'s hosts, each one that ran a job of the sweep."""
    if not hosts:
        return set()
    from records.queries import hosts as hosts_of

    known = set(hosts_of(store, sweep_name).values())
    for host in hosts:
        if host not in known:
            raise UserError(
                f"--exclude-host {host!r}: no job of sweep {sweep_name!r} ran there (its "
                f"hosts: {', '.join(sorted(known)) or 'none recorded'})"
            )
    return set(hosts)


def _gate_flags(args: argparse.Namespace) -> None:
    if args.junit and not (args.check or args.fail_on_regression):
        raise UserError(
            "--junit FILE writes the gate's outcome: add --check or --fail-on-regression"
        )
    if args.fail_on_regression and not args.compare:
        raise UserError(
            "--fail-on-regression needs --compare OTHER_SWEEP (against references: --check)"
        )
    if args.check and (args.compare or args.deploy):
        raise UserError(
            "--check holds this sweep to its references: not with --compare or --deploy"
        )


def _check(store, sweep_name: str, config, args: argparse.Namespace, prices, excluded) -> int:
    """``table --check``: the sweep's figures against the references of the cluster.yaml
    given (else of the sweep as submitted)."""
    from harness import figures
    from harness.references import check

    if config is not None:
        references = {gpu: {model: {figure: ref.model_dump() for figure, ref in by_figure.items()}
                            for model, by_figure in by_model.items()}
                      for gpu, by_model in config.references.items()}  # fmt: skip
        where = _config_path(args)
    else:
        references = (store.sweep_config(sweep_name) or {}).get("references") or {}
        where = f"sweep {sweep_name!r} as submitted"
    if not references:
        raise UserError(f"--check: no references in {where} (cluster.yaml's references:)")
    rows = figures.figures(store, sweep_name, prices=prices, exclude_hosts=excluded)
    outcomes = check(rows, references)
    if not outcomes:
        raise UserError(
            f"--check: none of the references in {where} is for a GPU type and model that "
            f"sweep {sweep_name!r} ran"
        )
    return _gate(outcomes, args, f"{sweep_name} against its references")


def _gate(outcomes: list, args: argparse.Namespace, suite: str) -> int:
    """One line per outcome (regressions on stderr), a count, JUnit XML with --junit; 1 when
    a figure regressed or a reference had nothing to check."""
    from harness.references import write_junit

    for outcome in outcomes:
        print(outcome.line, file=sys.stderr if outcome.failed else sys.stdout)
    failed = sum(outcome.failed for outcome in outcomes)
    print(f"{suite}: {len(outcomes) - failed} of {len(outcomes)} figures passed")
    if args.junit:
        write_junit(outcomes, args.junit, suite)
    return 1 if failed else 0


def _deploy_table(store, sweep_name: str, args: argparse.Namespace) -> int:
    if args.format in MACHINE_FORMATS:
        from harness.figures import deployment_figures

        return emit(deployment_figures(store, sweep_name), args)
    from harness.report import deployment

    rows = deployment(store, sweep_name)
    if not rows:
        print("(no inference results yet)")
        return 0
    if args.out:
        return emit(rows, args)
    print(render(rows, args.format))
    if args.format == "table":
        print(
            "ms/image @1: median latency at batch 1; best img/s over the batch sizes; "
            "agreement: top-1 agreement with PyTorch eager on the whole test set, ! below "
            "99.9%",
            file=sys.stderr,
        )
    return 0


def emit(rows: list[dict], args: argparse.Namespace) -> int:
    """Rows in ``args.format``, on stdout or into ``args.out``: written whole next to it and
    renamed, so a failed write leaves no half file (and an earlier file stays as it was)."""
    if not args.out:
        print(render(rows, args.format))
        return 0
    path = Path(args.out)
    if not path.parent.is_dir():
        raise UserError(f"--out {args.out}: no folder {str(path.parent)!r}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if args.format == "parquet":
            _parquet(rows, tmp)
        else:
            tmp.write_text(render(rows, args.format) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot write it ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{len(rows)} row(s) written to {path}", file=sys.stderr)
    return 0


def _parquet(rows: list[dict], path: Path) -> None:
    try:
        import pyarrow  # noqa: F401  (pandas writes Parquet through it)
    except ImportError as exc:
        raise UserError(
            f"--format parquet needs {exc.name}: pip install 'resnest-bench[parquet]'"
        ) from None
    from harness.results import frame

    frame(rows).to_parquet(path, index=False)


def cmd_report(args: argparse.Namespace) -> int:
    from harness.plots import build

    config, store, sweep_name = store_and_sweep(args)
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
    from pathlib import Path

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
