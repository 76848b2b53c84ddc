"""``resnest-bench status``: a sweep's jobs by state, with their progress, ETAs and queue
waits (``harness.progress``), redrawn with ``--watch``; one job's attempts with ``--job``.
Waiting SLURM jobs are submitted as room frees, and host failures retried
(``slurm.look_after``)."""

from __future__ import annotations

import argparse
import sys
import time

from harness.cli.commands import _refresh, store_and_sweep
from harness.render import render
from records.errors import UserError
from records.schema import ENDED, JobRow


def cmd_status(args: argparse.Namespace) -> int:
    config, store, sweep_name = store_and_sweep(args)
    if args.job:
        return _job_status(store, args)
    if not args.watch:
        rows = _look_after(config, store, sweep_name, _refresh(store, sweep_name))
        print(_status_text(store, sweep_name, args.format, rows, args.all), end="")
        return 0
    # --watch: redrawn in place (on a terminal) until every job has ended
    tty = sys.stdout.isatty()
    try:
        while True:
            rows = _look_after(config, store, sweep_name, _refresh(store, sweep_name))
            text = _status_text(store, sweep_name, args.format, rows, args.all)
            stamp = time.strftime("%H:%M:%S")
            if tty:
                sys.stdout.write("\x1b[H\x1b[J")
            print(f"{stamp} (every {args.every:g} s; Ctrl-C stops watching, not the jobs)")
            print(text, end="", flush=True)
            if all(row["state"] in ENDED for row in rows):
                return 0
            time.sleep(args.every)
    except KeyboardInterrupt:
        return 0


def _look_after(config, store, sweep_name: str, rows: list[JobRow]) -> list[JobRow]:
    """For a sweep whose jobs wait in a queue: the launcher tends them (``look_after``: for
    SLURM, retry host failures and submit waiting jobs that have room now); without the
    sweep's cluster.yaml (``--store``) there is nothing to submit them with: say so. Returns
    the sweep's rows as they are now."""
    from harness.launchers.base import needs_care

    if not any(needs_care(row) for row in rows):
        return rows
    from harness import launchers

    launcher = None
    if config is not None and config.name == sweep_name:
        launcher = launchers.get(config.launcher.kind, store, config)
    if launcher is None or not launcher.queued:
        if any(row["state"] == "waiting" for row in rows):
            print(
                "resnest-bench: jobs wait for room in the queue; `status -c CLUSTER_YAML` or "
                "`submit CLUSTER_YAML` submits them as room frees",
                file=sys.stderr,
            )
        return rows
    try:
        changed = launcher.look_after(rows)
    except UserError as exc:
        print(f"resnest-bench: waiting jobs left waiting ({exc})", file=sys.stderr)
        changed = True
    return store.jobs(sweep_name) if changed else rows


# A table of more jobs than this lists those that have not succeeded (``--all``: every job).
LIST_ALL_UP_TO = 100


def _status_text(
    store, sweep_name: str, fmt: str, rows: list[JobRow] | None = None, every: bool = False
) -> str:
    """What status prints: for a reader the counts, the store and the ETA head the table;
    csv and json leave stdout to the rows alone, for a program to parse, and those go to
    stderr. A reader's table of a large sweep leaves out the succeeded jobs (counted in the
    head), unless ``every``; csv and json have every job."""
    from harness.report import status_rows

    counts, table, eta = status_rows(store, sweep_name, human=fmt == "table", rows=rows)
    summary = f"sweep {sweep_name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    head = [summary, store.describe(), eta]
    if fmt == "table" and not every and len(table) > LIST_ALL_UP_TO and counts["succeeded"]:
        table = [row for row in table if row["state"] != "succeeded"]
        head.append(f"the {counts['succeeded']} succeeded jobs are not listed (--all lists them)")
    if fmt != "table":
        print("\n".join(head), file=sys.stderr)
        return render(table, fmt) + "\n"
    return "\n".join([*head, render(table, fmt)]) + "\n"


def _job_status(store, args: argparse.Namespace) -> int:
    """status --job ID: the job's row and each of its attempts, where and when it ran."""
    from harness.progress import duration
    from records.store import StoreError, redact

    try:
        job = store.job(args.job)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    if job is None:
        raise UserError(f"no job {args.job!r} in the store {redact(store.url)}")
    _refresh(store, job["sweep"], [job])
    job = store.job(job["id"])
    head = sys.stdout if args.format == "table" else sys.stderr  # csv, json: rows alone
    print(f"job {job['id']}: {job['stage']} {job['model']} {job['dataset']} on "
          f"{job['gpu_type']}, seed {job['seed']}: {job['state']}"
          + (f" ({job['reason']})" if job["reason"] else ""), file=head)  # fmt: skip
    rows = []
    for attempt in store.attempts(job["id"]):
        start, end = attempt["started_at"], attempt["ended_at"]
        submitted = attempt["submitted_at"]
        rows.append({
            "attempt": attempt["attempt"], "hosts": attempt["hosts"] or "",
            "launcher id": attempt["launcher_job_id"] or "", "state": attempt["state"] or "",
            "queue wait": duration(start - submitted) if start and submitted else "",
            "ran": duration(end - start) if start and end else "",
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)) if start else "",
            "reason": attempt["reason"] or "",
        })  # fmt: skip
    if not rows:
        print("no attempt has started yet", file=head)
        return 0
    print(render(rows, args.format))
    for line in _throttling(store, job["id"]):
        print(line, file=head)
    return 0


def _throttling(store, job_id: str) -> list[str]:
    """A line per attempt whose GPUs were throttled (the epochs, their share of throttled
    samples and NVML's reasons), and one per attempt whose GPUs reported XIDs."""
    from records.queries import troubled_epochs

    throttled: dict[int, list[str]] = {}
    xids: dict[int, list[str]] = {}
    for attempt, epoch, share, reasons, xid in troubled_epochs(store, job_id):
        if share:
            throttled.setdefault(attempt, []).append(
                f"epoch {epoch} {share:.0f}% ({reasons or '?'})"
            )
        if xid:
            xids.setdefault(attempt, []).append(f"epoch {epoch} {xid}")
    return [f"attempt {a} throttled: " + "; ".join(parts) for a, parts in throttled.items()] + [
        f"attempt {a} XIDs: " + "; ".join(parts) for a, parts in xids.items()
    ]
