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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.readme_blocks import RENDERERS, SOURCES  # noqa: E402

BLOCK = re.compile(r"(<!-- render: ([\w-]+) -->[ \t]*\r?\n)(.*?)(<!-- /render -->)", re.DOTALL)
OPENING = re.compile(r"<!-- render:")


class RenderError(Exception):
    pass


def _read(name: str, path: Path) -> Any:
    """A results file's JSON, or a RenderError naming the block and the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RenderError(f"README block {name!r}: no results file {path}") from None
    except ValueError as exc:  # (UnicodeDecodeError and JSONDecodeError both)
        raise RenderError(f"README block {name!r}: {path} is damaged ({exc!r})") from None
    except OSError as exc:
        raise RenderError(f"README block {name!r}: cannot read {path} ({exc})") from None


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
        source = SOURCES.get(name, name)
        if source == "*":  # every results file, by name; a damaged one is named as itself
            stored = {p.stem: _read(name, p) for p in sorted(results.glob("*.json"))}
            where = f"the results in {results}"
        else:
            stored = _read(name, results / f"{source}.json")
            where = str(results / f"{source}.json")
        try:
            body = RENDERERS[name](stored)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise RenderError(f"README block {name!r}: {where} is damaged ({exc!r})") from None
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
            source = args.results / f"{SOURCES.get(name, name)}.json"
            print(f"render_readme: {args.readme}: block {name!r} differs from what {source} "
                  "renders", file=sys.stderr)  # fmt: skip
        return 1 if changed else 0
    if changed:
        args.readme.write_text(rendered)
    print(f"render_readme: {len(changed)} block(s) rendered again: {', '.join(changed) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
