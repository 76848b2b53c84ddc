"""An environment's installed packages, kept whole: the sorted ``name==version`` list, zlib
compressed and base64 encoded (text, for an outbox's JSON line), keyed in the store by its
sha256 (``records.schema.package_lists``: one copy per environment, however many attempts ran
in it). What ``history`` diffs between two sweeps."""

from __future__ import annotations

import base64
import hashlib
import zlib


def digest(names: list[str]) -> str:
    """The sha256 of a sorted ``name==version`` list (the provenance's packages_sha256)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def pack(names: list[str]) -> str:
    return base64.b64encode(zlib.compress("\n".join(names).encode(), 9)).decode("ascii")


def unpack(text: str) -> dict[str, str]:
    """Package name -> version, from ``pack``'s text."""
    lines = zlib.decompress(base64.b64decode(text)).decode().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs, one item per package in name order: ``numpy 2.1.0 -> 2.2.0``, ``+ name
    1.0`` (added), ``- name 1.0`` (removed)."""
    out = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            out.append(f"+ {name} {new}")
        elif new is None:
            out.append(f"- {name} {old}")
        else:
            out.append(f"{name} {old} -> {new}")
    return out
