"""The ``resnest-bench`` command line.

Start-up stays light: subcommands import torch and the model zoo only when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from harness import __version__
from harness.errors import UserError
from harness.render import FORMATS, render
from jobs.spec import add_job_arguments


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
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
    jobs = select(plan(config), args.only)
    if not args.dry_run:
        raise UserError(
            "submitting needs the results store and launchers, which are not built yet; "
            "use --dry-run to see the plan"
        )
    print(render([job.row() for job in jobs], args.format))
    stages = {}
    for job in jobs:
        stages[job.stage] = stages.get(job.stage, 0) + 1
    summary = ", ".join(f"{n} {stage}" for stage, n in stages.items())
    print(
        f"{len(jobs)} jobs ({summary}) for sweep {config.name!r} on the "
        f"{config.launcher.kind} launcher; dry run, nothing submitted",
        file=sys.stderr,
    )
    return 0


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
    submit.set_defaults(func=_cmd_submit)

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
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
