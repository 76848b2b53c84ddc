"""The README's measured figures, rendered from the bench results kept in ``bench/results``.

Every README block of measured figures lies between two markers::

    <!-- render: NAME -->
    ...what ``RENDERERS[NAME]`` makes of bench/results/NAME.json...
    <!-- /render -->

``python bench/render_readme.py`` rewrites each block from its results file; ``--check``
changes nothing and exits 1, naming each block that differs from what its stored results
render (the test suite runs it on the README). A block whose results file is missing or
damaged, or an unknown NAME, is a one-line error naming it (exit 2).

    python bench/render_readme.py [--check] [--readme README.md] [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- render: ([\w-]+) -->[ \t]*\r?\n)(.*?)(<!-- /render -->)", re.DOTALL)
OPENING = re.compile(r"<!-- render:")


class RenderError(Exception):
    pass


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
        f"{c['torch']}, ONNX Runtime {c['onnxruntime']}; load average {load}; flags: {flags}.",
        "",
        "| model | runtime | ms @1 [95%] | vs eager [95%] | vs ONNX Runtime [95%] "
        "| vs torch 1.10 eager [95%] | acc % | agreement % | max logit diff | MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        latency = _interval(row["latency_ci95_low_ms"], row["latency_ci95_high_ms"])
        lines.append(
            f"| {row['model']} | {row['runtime']} | {row['latency_p50_ms']:.2f} {latency} "
            f"| {_ratio(row, 'vs_eager')} | {_ratio(row, 'vs_onnxruntime')} "
            f"| {_ratio(row, 'vs_eager_torch1_10')} "
            f"| {row['accuracy_pct']:.2f} | {row['agreement_pct']:.2f} "
            f"| {row['max_logit_diff']:.1e} | {row['size_mb']:.2f} |"
        )
    for gone in result.get("unavailable", []):
        lines.append(f"| {gone['model']} | {gone['runtime']} | unavailable: {gone['why']} "
                     "| | | | | | | |")  # fmt: skip
    lines.append("")
    against = (("vs_eager", "eager"), ("vs_eager_torch1_10", "eager in torch 1.10.2"))
    for row in result["rows"]:
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


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {"deploy_latency": deploy_latency}


def render(text: str, results: Path) -> tuple[str, list[str]]:
    """``text`` with every block rendered from its results, and the names of the blocks that
    changed."""
    changed: list[str] = []
    blocks = list(BLOCK.finditer(text))
    for match in blocks:  # an opening marker inside a block: the one before it never closed
        if OPENING.search(match[3]):
            raise RenderError(f"README block {match[2]!r} has no <!-- /render --> of its own")
    if len(OPENING.findall(text)) != len(blocks):
        raise RenderError("a <!-- render: NAME --> marker is not followed by a line break and "
                          "a <!-- /render --> of its own")  # fmt: skip

    def one(match: re.Match) -> str:
        name = match[2]
        if name not in RENDERERS:
            raise RenderError(f"README block {name!r}: no renderer (known: {', '.join(RENDERERS)})")
        path = results / f"{name}.json"
        try:
            stored = json.loads(path.read_text())
            body = RENDERERS[name](stored)
        except FileNotFoundError:
            raise RenderError(f"README block {name!r}: no results file {path}") from None
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise RenderError(f"README block {name!r}: {path} is damaged ({exc!r})") from None
        except OSError as exc:
            raise RenderError(f"README block {name!r}: cannot read {path} ({exc})") from None
        if body != match[3]:
            changed.append(name)
        return match[1] + body + match[4]

    return BLOCK.sub(one, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 naming each block that differs")  # fmt: skip
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_text()
        rendered, changed = render(text, args.results)
    except (OSError, RenderError) as exc:
        print(f"render_readme: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for name in changed:
            print(f"render_readme: {args.readme}: block {name!r} differs from what "
                  f"{args.results / (name + '.json')} renders", file=sys.stderr)  # fmt: skip
        return 1 if changed else 0
    if changed:
        args.readme.write_text(rendered)
    print(f"render_readme: {len(changed)} block(s) rendered again: {', '.join(changed) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
