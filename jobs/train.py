"""The training and transfer job: one code path from one CPU process to multi-node DDP.

Run directly (``python -m jobs.train --model ... --dataset ... --out DIR``), under
``torchrun --nproc_per_node=N -m jobs.train ...``, as SLURM tasks, or from a Ray Train worker
(all through ``jobs.run``). The job forms the process group, picks the reporter (rank 0
reports), runs the ``Trainer`` and maps how it ended to an exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from jobs import data, distributed
from jobs.checkpoint import CheckpointError
from jobs.device import resolve
from jobs.recipe import RecipeError
from jobs.reporter import NullReporter, Reporter, reporter_for
from jobs.stage import guarded, main_for
from jobs.stopping import Diverged, Requeue, StopFlag
from jobs.trainer import Trainer
from records.spec import EXIT_DIVERGED, EXIT_FAILED, EXIT_OK, EXIT_REQUEUE, TrainSpec


def run(spec: TrainSpec, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run one job to the end. Raises Diverged, Requeue, or a user error."""
    env = distributed.detect()
    device = resolve(spec.device, env.local_rank)
    rendezvous_s = distributed.init_process_group(env, device)
    if reporter is None:
        reporter = (
            reporter_for(Path(spec.out_dir), spec.job_id, spec.attempt, spec.store)
            if env.is_main
            else NullReporter()
        )
    stop = StopFlag()
    stop.install()
    # Ends every rank agrees on (success, divergence, requeue) leave through a barrier;
    # an unexpected error leaves at once, since the other ranks may never reach one.
    agreed = False
    try:
        try:
            summary = Trainer(spec, env, device, reporter, stop, rendezvous_s).run()
        except Diverged as exc:
            agreed = True
            if env.is_main:
                reporter.report(
                    "final", {"status": "failed", "reason": "diverged", "detail": str(exc)}
                )
            raise
        except Requeue:
            agreed = True
            raise
        agreed = True
        return summary
    finally:
        if agreed:
            distributed.shutdown(env)
        elif env.distributed and dist.is_initialized() and env.source != "preinitialised":
            dist.destroy_process_group()


USER_ERRORS = (data.DataError, CheckpointError, RecipeError)


def execute(spec: TrainSpec) -> tuple[int, int | None]:
    """Run a training or transfer job and map its end to an exit code; also the signal that
    stopped it, if any. Each rank of a DDP job holds its own lock on the folder."""
    return guarded(spec, _execute, USER_ERRORS, rank=distributed.detect().rank)


def _execute(spec: TrainSpec) -> tuple[int, int | None]:
    try:
        run(spec)
    except Requeue as exc:
        print(f"resnest-bench: {exc}; exiting for requeue", file=sys.stderr)
        return EXIT_REQUEUE, exc.signal
    except Diverged as exc:
        print(f"resnest-bench: diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED, None
    except KeyboardInterrupt:
        return EXIT_FAILED, None
    return EXIT_OK, None


def main(argv: Sequence[str] | None = None, stage: str = "train") -> int:
    description = f"Run one {stage} job (also under torchrun or as SLURM tasks)."
    return main_for(stage, description, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
