"""The commands that read a sweep's figures: table (with its gate: --check,
--fail-on-regression, --junit), report and history. Each formats what ``harness.figures``,
``harness.report``, ``harness.references`` and ``harness.history`` compute.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.cli.commands import (
    _config_path,
    _refresh,
    open_store_of,
    print_comparison,
    store_and_sweep,
)
from harness.render import render
from records.errors import UserError

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
    excluded = _excluded_hosts(store, [sweep_name, args.compare], args.exclude_host)
    rows = comparison(store, sweep_name, args.reference, prices, excluded)
    if args.compare:
        from harness.report import side_by_side

        if not args.min_change >= 0:  # NaN too
            raise UserError(f"--min-change {args.min_change:g}: a change in percent, 0 or more")
        if args.compare not in store.sweeps():
            raise UserError(f"--compare {args.compare!r}: no such sweep in {store.url}")
        from harness.figures import run_values

        other = comparison(store, args.compare, None, prices_of(store, args.compare), excluded)
        runs = run_values(store, sweep_name, excluded)
        other_runs = run_values(store, args.compare, excluded)
        table = side_by_side(rows, other, sweep_name, args.compare, runs, other_runs,
                             args.min_change)  # fmt: skip
        if args.fail_on_regression:
            from harness.references import compared
            from harness.report import tested_columns

            outcomes = compared(table, tested_columns(runs), runs, other_runs, args.compare)
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


def _excluded_hosts(store, sweeps: list[str | None], hosts: list[str]) -> set[str]:
    """``--exclude-host``'s hosts, each one that ran a job of the sweeps (this one, and the
    one it is compared with)."""
    if not hosts:
        return set()
    from records.queries import hosts as hosts_of

    names = [name for name in sweeps if name]
    known = {host for name in names for host in hosts_of(store, name).values()}
    for host in hosts:
        if host not in known:
            raise UserError(
                f"--exclude-host {host!r}: no job of sweep {' or '.join(map(repr, names))} ran "
                f"there (hosts: {', '.join(sorted(known)) or 'none recorded'})"
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
    from records.queries import sweep_jobs

    rows = figures.figures(store, sweep_name, prices=prices, exclude_hosts=excluded)
    planned = {(job.gpu_type, job.model) for job in sweep_jobs(store, sweep_name).values()
               if job.stage == "train"}  # fmt: skip
    counts = {key: {figure: sum(v is not None for v in values) for figure, values in by.items()}
              for key, by in figures.run_values(store, sweep_name, excluded).items()}  # fmt: skip
    outcomes = check(rows, references, planned, counts)
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
    if not outcomes:  # a gate that passes on nothing would hide a broken sweep
        print(f"{suite}: no figure was measured in both: nothing to hold", file=sys.stderr)
        failed = 1
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


def cmd_history(args: argparse.Namespace) -> int:
    from harness import history
    from records.store import redact

    if not args.min_change >= 0:  # NaN too
        raise UserError(f"--min-change {args.min_change:g}: a change in percent, 0 or more")
    _, store = open_store_of(args)
    sweeps = store.sweeps()
    if len(sweeps) < 2:
        raise UserError(
            f"history: the store {redact(store.url)} holds {len(sweeps)} sweep(s); a history "
            "needs two or more"
        )
    series = history.series_of(store, sweeps, args.min_change)
    history.explain(store, series)
    rows = history.as_rows(series)
    if args.out:
        from harness.plots import build_history

        page = build_history(store, series, Path(args.out))
        print(f"history: {page} (open it in a browser; the folder works offline)")
    elif rows or args.format in MACHINE_FORMATS:
        if args.format not in MACHINE_FORMATS:  # a p of 1e-12 is not "0"
            rows = [{**row, "p": f"{row['p']:.2g}"} for row in rows]
        print(render(rows, args.format))
    else:
        print(f"(no step in {len(series)} series over {len(sweeps)} sweeps)")
    if args.format == "table" and not args.out:
        print(
            f"{len(sweeps)} sweeps, in the order submitted; a step: the figure's level "
            "changed (Mann-Whitney U over the runs either side, p below 0.01 over the cuts "
            f"tried, and the median by {args.min_change:g}% or more), with what differs in "
            "the runs' provenance across it",
            file=sys.stderr,
        )
    return 0
