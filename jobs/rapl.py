"""The CPU's energy from RAPL, through Linux's powercap sysfs (``/sys/class/powercap``).

Each package zone (``intel-rapl:N``, named ``package-N``; AMD's since Zen appear the same way)
has a cumulative ``energy_uj`` counter that wraps at ``max_energy_range_uj``; its ``dram``
subzone, where the CPU has one, counts the memory's. An epoch's energy is the sum of the
counters' deltas between the sampler's readings (about one a second, so that a counter wraps
at most once between two: Intel's wrap after some 262 kJ, minutes of a busy package), over
the packages (and over their DRAM zones). The other
subzones (``core``, ``uncore``) lie inside their package and are not added again; ``psys``
(the whole platform) is not a CPU's.

Since Linux 5.10 ``energy_uj`` is readable by root alone (a side channel: CVE-2020-8694), so
on most clusters a job cannot read it: the job then records why, never a zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Zone:
    name: str  # package-0, dram
    kind: str  # package | dram
    counter: Path
    wraps_at: int | None  # µJ; None where the zone does not say (a wrap is then unknown)


class Rapl:
    """The readable package and DRAM zones under ``root``; ``method`` says what is measured
    ("rapl: package-0, package-0/dram") or why nothing is ("none: ...")."""

    def __init__(self, root: Path | str = ROOT) -> None:
        self.zones: list[Zone] = []
        self.method = "none: no RAPL zones (no powercap/intel-rapl here)"
        root = Path(root)
        packages = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
        found: list[Zone] = []
        for package in packages:
            package_name = _text(package / "name") or package.name
            if not package_name.startswith("package"):
                continue  # psys: the platform, not the CPU
            found.append(_zone(package, package_name, "package"))
            for sub in sorted(package.glob(f"{package.name}:*")):
                if _text(sub / "name") == "dram":
                    found.append(_zone(sub, f"{package_name}/dram", "dram"))
        if not found:
            return
        try:
            for zone in found:
                int(zone.counter.read_text())
        except OSError as exc:  # PermissionError: root only since Linux 5.10
            why = exc.strerror or type(exc).__name__
            self.method = f"none: RAPL unreadable ({why.lower()}: {exc.filename})"
            return
        self.zones = found
        self.method = "rapl: " + ", ".join(zone.name for zone in found)

    def read(self) -> dict[str, int] | None:
        """Each zone's counter now (µJ); None if one could not be read."""
        try:
            return {zone.name: int(zone.counter.read_text()) for zone in self.zones}
        except (OSError, ValueError):
            return None

    def delta(
        self, before: dict[str, int] | None, after: dict[str, int] | None
    ) -> dict[str, float] | None:
        """The joules between two readings by kind (``package``, ``dram``), a counter that
        wrapped counted once round; None if a reading is missing, or a counter went back
        where its zone gives no range."""
        if not self.zones or before is None or after is None:
            return None
        sums: dict[str, float] = {}
        for zone in self.zones:
            change = after[zone.name] - before[zone.name]
            if change < 0:  # wrapped
                if zone.wraps_at is None:
                    return None
                change += zone.wraps_at
            sums[zone.kind] = sums.get(zone.kind, 0.0) + change / 1e6
        return sums

    def energy(self, before: dict[str, int] | None, after: dict[str, int] | None) -> dict:
        """``delta`` as an epoch record's ``cpu_energy_j`` (packages) and ``dram_energy_j``
        (None where the CPU has no DRAM zone); both None where the delta is unknown."""
        return as_record(self.delta(before, after))


def as_record(sums: dict[str, float] | None) -> dict[str, float | None]:
    sums = sums or {}
    return {"cpu_energy_j": sums.get("package"), "dram_energy_j": sums.get("dram")}


def _zone(path: Path, name: str, kind: str) -> Zone:
    wraps = _text(path / "max_energy_range_uj")
    return Zone(name, kind, path / "energy_uj", int(wraps) if wraps.isdigit() else None)


def _text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
