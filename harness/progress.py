"""Where a sweep's jobs are: each job's epoch k of N, its last epoch's seconds and ETA, how
long it waited in the queue; and an ETA for the sweep.

- **epoch k of N**: k is the newest epoch the store holds of the job (a resumed attempt goes
  on counting from where it resumed); N is the epochs its recipe plans (the recipe named in
  its spec, with the sweep's overrides).
- **s/epoch**: the wall time between the job's last two epoch records of its current attempt
  (evaluation, checkpoints and data loading included: what the next epoch will take), or,
  after its first epoch only, that epoch's measured training and evaluation seconds.
  An ended job's figures come from its summary (``records.summaries.last_epoch``: the
  last two of its epochs per epoch number, newest attempt's), so that status of a finished
  sweep reads a row per job, not every epoch row (from its epoch rows where a summary from
  before schema 6 lacks them).
- **ETA**: the epochs left times that s/epoch, from the last epoch's record.
- **queue wait**: from submission to start, of the job's current attempt: SLURM's own Submit
  and Start (sacct) where SLURM ran it, the harness's submission and the job's first record
  elsewhere. A job still in the queue shows how long it has waited so far.
- **the sweep's ETA**: the work left, the running jobs' ETAs plus, for each job not yet
  started, its planned epochs times the median s/epoch measured for its stage, model and GPU
  type, shared among as many jobs as run now (at least one), and no sooner than the running
  job that ends last. Jobs of a kind with no epoch measured yet make it a lower bound, and
  the line says how many.
"""

from __future__ import annotations

import json
import statistics
import time
from functools import lru_cache
from typing import Any

from records import queries
from records.errors import UserError
from records.schema import ENDED, HELD_BACK, NOT_STARTED, UNFINISHED, JobRow
from records.store import Store


@lru_cache(maxsize=256)
def _planned(recipe: str, stage: str, overrides: str) -> int | None:
    from jobs.recipe import get_recipe

    try:
        return get_recipe(recipe, stage, json.loads(overrides) or None).epochs
    except (UserError, ValueError, KeyError, TypeError):
        return None


def planned_epochs(row: JobRow) -> int | None:
    """The epochs a training or transfer job's recipe plans (None for other stages)."""
    spec = row.get("spec") or {}
    if row.get("stage") not in ("train", "transfer"):
        return None
    overrides = json.dumps(spec.get("overrides") or {}, sort_keys=True)
    return _planned(spec.get("recipe") or "study", row["stage"], overrides)


def job_progress(
    rows: list[JobRow], store: Store, now: float | None = None
) -> dict[str, dict[str, Any]]:
    """job id -> {epoch, epochs, epoch_s, eta_s, queue_wait_s, queued_now} (None where not
    known)."""
    now = time.time() if now is None else now
    ids = [row["id"] for row in rows]
    started = [
        row
        for row in rows
        if row["stage"] in ("train", "transfer") and row["state"] not in NOT_STARTED
    ]
    ended = queries.last_epochs(store, [row["id"] for row in started if row["state"] in ENDED])
    ended = {job_id: last for job_id, last in ended.items() if last[0] is not None}
    measured = queries.progress_of(store, [row["id"] for row in started if row["id"] not in ended])
    tries = queries.queue_times(store, ids)
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        planned = planned_epochs(row)
        k, epoch_s = ended.get(row["id"], (None, None))
        if row["id"] not in ended:
            epochs = measured.get(row["id"], [])
            current = [e for e in epochs if e[0] == row["attempt"]] or epochs
            k = max((e[1] for e in epochs), default=0)
            if len(current) >= 2 and current[-1][2] and current[-2][2]:
                epoch_s = current[-1][2] - current[-2][2]
            elif current:
                epoch_s = current[-1][3] or None
        k = k or 0
        eta = None
        if row["state"] == "running" and planned and epoch_s:
            last = current[-1][2] or now
            eta = max(0.0, (planned - k) * epoch_s - (now - last))
        submitted_at, started_at = tries.get((row["id"], row["attempt"]), (None, None))
        submitted = submitted_at or row.get("submitted_at")
        wait, queued_now = None, row["state"] == "submitted"
        if queued_now and submitted:
            wait = max(0.0, now - submitted)
        elif submitted and row["state"] not in HELD_BACK:
            began = started_at or row.get("started_at")
            wait = max(0.0, began - submitted) if began else None
        out[row["id"]] = {"epoch": k if planned else None, "epochs": planned,
                          "epoch_s": epoch_s, "eta_s": eta, "queue_wait_s": wait,
                          "queued_now": queued_now}  # fmt: skip
    return out


def sweep_eta(rows: list[JobRow], progress: dict[str, dict[str, Any]]) -> str:
    """The sweep's ETA as a line for status (see the module's note for how it is made)."""
    unfinished = [row for row in rows if row["state"] in UNFINISHED]
    if not unfinished:
        return "sweep ETA: ended"
    typical: dict[tuple, list[float]] = {}
    for row in rows:
        figure = progress[row["id"]]["epoch_s"]
        if figure:
            typical.setdefault((row["stage"], row["model"], row["gpu_type"]), []).append(figure)
    running = [row for row in unfinished if row["state"] == "running"]
    left, longest, unknown = 0.0, 0.0, 0
    for row in unfinished:
        mine = progress[row["id"]]
        if row["state"] == "running" and mine["eta_s"] is not None:
            left += mine["eta_s"]
            longest = max(longest, mine["eta_s"])
            continue
        alike = typical.get((row["stage"], row["model"], row["gpu_type"]))
        planned = mine["epochs"]
        if row["stage"] not in ("train", "transfer"):
            continue  # export and inference: seconds to minutes, not estimated
        if alike and planned:
            left += (planned - (mine["epoch"] or 0)) * statistics.median(alike)
        else:
            unknown += 1
    eta = max(longest, left / max(1, len(running)))
    if eta == 0 and unknown:
        return f"sweep ETA: not known until an epoch of each kind of job has ended ({unknown} jobs)"
    text = f"sweep ETA: {'at least ' if unknown else ''}{duration(eta)}"
    detail = f"{len(running)} running, {len(unfinished) - len(running)} not started"
    if unknown:
        detail += f"; {unknown} with no epoch of their kind measured yet"
    return f"{text} ({detail})"


def duration(seconds: float | None) -> str:
    """12s, 4m05s, 2h03m: a duration as a reader takes it in."""
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
