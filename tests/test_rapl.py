"""The CPU's energy from RAPL. This machine has no powercap tree, so these tests build one
in the sysfs layout (``intel-rapl:N`` packages, their ``dram`` and ``core`` subzones, a
``psys`` zone) and point the job at it with ``RESNEST_BENCH_POWERCAP``; the real tree is
read where the machine has one."""

import os
import threading
import time
from pathlib import Path

import pytest

from jobs.rapl import ROOT, Rapl
from jobs.telemetry import CpuSource, Sampler

from .jobtools import TINY, records, run_job


def zone(path: Path, name: str, energy_uj: int, wraps_at: int | None = 262143328850) -> Path:
    path.mkdir(parents=True)
    (path / "name").write_text(f"{name}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    if wraps_at is not None:
        (path / "max_energy_range_uj").write_text(f"{wraps_at}\n")
    return path


def powercap(root: Path) -> Path:
    """Two packages, each with a DRAM zone; package 0 with a core zone; a psys zone."""
    zone(root / "intel-rapl:0", "package-0", 1_000_000)
    zone(root / "intel-rapl:0" / "intel-rapl:0:0", "core", 500_000)
    zone(root / "intel-rapl:0" / "intel-rapl:0:1", "dram", 2_000_000)
    zone(root / "intel-rapl:1", "package-1", 999_000_000, wraps_at=1_000_000_000)
    zone(root / "intel-rapl:1" / "intel-rapl:1:0", "dram", 0)
    zone(root / "intel-rapl:2", "psys", 0)
    return root


def set_counter(path: Path, value: int) -> None:
    """As the kernel's counter changes: a reader sees the old value or the new, whole."""
    spare = path.with_name("energy_uj.new")
    spare.write_text(f"{value}\n")
    os.replace(spare, path)


def test_packages_and_dram_are_summed_core_and_psys_are_not_and_a_wrap_counts_once(tmp_path):
    root = powercap(tmp_path / "powercap")
    rapl = Rapl(root)
    assert rapl.method == "rapl: package-0, package-0/dram, package-1, package-1/dram"
    before = rapl.read()
    set_counter(root / "intel-rapl:0" / "energy_uj", 1_000_000 + 30_000_000)  # +30 J
    set_counter(root / "intel-rapl:0" / "intel-rapl:0:0" / "energy_uj", 99_000_000)  # core
    set_counter(root / "intel-rapl:0" / "intel-rapl:0:1" / "energy_uj", 2_000_000 + 4_000_000)
    set_counter(root / "intel-rapl:1" / "energy_uj", 19_000_000)  # wrapped: +20 J
    set_counter(root / "intel-rapl:1" / "intel-rapl:1:0" / "energy_uj", 1_500_000)
    set_counter(root / "intel-rapl:2" / "energy_uj", 77_000_000)  # psys
    energy = rapl.energy(before, rapl.read())
    assert energy["cpu_energy_j"] == pytest.approx(30.0 + 20.0)
    assert energy["dram_energy_j"] == pytest.approx(4.0 + 1.5)
    assert rapl.energy(before, None) == {"cpu_energy_j": None, "dram_energy_j": None}


def test_a_cpu_without_a_dram_zone_reports_packages_alone(tmp_path):
    root = tmp_path / "powercap"
    zone(root / "intel-rapl:0", "package-0", 10)
    rapl = Rapl(root)
    assert rapl.method == "rapl: package-0"
    before = rapl.read()
    set_counter(root / "intel-rapl:0" / "energy_uj", 10 + 2_500_000)
    assert rapl.energy(before, rapl.read()) == {"cpu_energy_j": 2.5, "dram_energy_j": None}


def test_an_unreadable_or_missing_tree_says_why_and_measures_nothing(tmp_path):
    assert Rapl(tmp_path / "nothing").method.startswith("none: no RAPL zones")
    root = tmp_path / "powercap"
    package = zone(root / "intel-rapl:0", "package-0", 10)
    # Root-only counters (Linux >= 5.10) cannot be made unreadable to these tests, which may
    # run as root: a counter that is a folder fails to read the same way, with an OSError.
    (package / "energy_uj").unlink()
    (package / "energy_uj").mkdir()
    rapl = Rapl(root)
    assert rapl.zones == [] and rapl.method.startswith("none: RAPL unreadable (is a directory: ")
    assert str(package / "energy_uj") in rapl.method
    sampler = Sampler(CpuSource(), rapl=rapl)
    sampler.begin_epoch()
    figures, _ = sampler.end_epoch()
    assert "cpu_energy_j" not in figures and sampler.rapl_method == rapl.method


def test_the_real_tree_where_this_machine_has_one():
    rapl = Rapl(ROOT)
    if not Path(ROOT).exists():
        assert rapl.method == "none: no RAPL zones (no powercap/intel-rapl here)"
    else:
        assert rapl.method.startswith(("rapl: package", "none: "))


def test_only_one_process_per_host_counts_the_cpus_energy(tmp_path):
    root = powercap(tmp_path / "powercap")
    counting = Sampler(CpuSource(), rapl=Rapl(root))
    other = Sampler(CpuSource(), rapl=Rapl(root), rapl_share=False)
    for sampler in (counting, other):
        sampler.begin_epoch()
    set_counter(root / "intel-rapl:0" / "energy_uj", 1_000_000 + 8_000_000)
    (mine, _), (theirs, _) = counting.end_epoch(), other.end_epoch()
    assert mine["cpu_energy_j"] == pytest.approx(8.0) and mine["dram_energy_j"] == 0.0
    assert theirs["cpu_energy_j"] == 0.0 and theirs["dram_energy_j"] == 0.0


def test_a_training_job_records_the_cpus_energy_per_epoch_and_its_method(tmp_path):
    """A real job on the CPU while the test plays the kernel: package 0 draws 10 W and its DRAM
    2 W, the counters advancing every 5 ms."""
    root = powercap(tmp_path / "powercap")
    package = root / "intel-rapl:0" / "energy_uj"
    dram = root / "intel-rapl:0" / "intel-rapl:0:1" / "energy_uj"
    done = threading.Event()

    def kernel() -> None:
        start = time.monotonic()
        while not done.is_set():
            elapsed = time.monotonic() - start
            set_counter(package, 1_000_000 + int(elapsed * 10e6))
            set_counter(dram, 2_000_000 + int(elapsed * 2e6))
            time.sleep(0.005)

    thread = threading.Thread(target=kernel, daemon=True)
    thread.start()
    began = time.monotonic()
    try:
        result = run_job(tmp_path / "job", *TINY, "--epochs", "2", "--max-steps", "3",
                         "--telemetry-interval", "0.1",
                         env={"RESNEST_BENCH_POWERCAP": str(root)})  # fmt: skip
    finally:
        done.set()
        thread.join()
    wall = time.monotonic() - began
    assert result.returncode == 0, result.stderr[-3000:]
    (prov,) = records(tmp_path / "job", "provenance")
    assert prov["cpu_energy"] == "rapl: package-0, package-0/dram, package-1, package-1/dram"
    rows = records(tmp_path / "job", "epoch")
    assert len(rows) == 2
    for row in rows:
        assert row["cpu_energy_j"] > 0 and row["dram_energy_j"] > 0
        assert row["dram_energy_j"] / row["cpu_energy_j"] == pytest.approx(0.2, abs=0.03)
    assert sum(row["cpu_energy_j"] for row in rows) <= 10 * wall


def test_an_epoch_sums_the_readings_deltas_so_counters_may_wrap_many_times(tmp_path):
    """An epoch longer than a counter's range (minutes of a busy package on AMD): each
    sample's reading adds its delta, so three wraps within the epoch are all counted."""
    root = tmp_path / "powercap"
    counter = zone(root / "intel-rapl:0", "package-0", 0, wraps_at=1_000_000) / "energy_uj"
    sampler = Sampler(CpuSource(), rapl=Rapl(root))
    sampler.begin_epoch()
    value = 0
    for _ in range(7):  # 0.6 J a reading: three wraps of 1 J over 4.2 J
        value = (value + 600_000) % 1_000_000
        set_counter(counter, value)
        sampler.take()
    figures, _ = sampler.end_epoch()
    assert figures["cpu_energy_j"] == pytest.approx(4.2)


def test_a_counter_that_goes_back_without_a_range_is_unknown_not_wrong(tmp_path):
    root = tmp_path / "powercap"
    counter = zone(root / "intel-rapl:0", "package-0", 5_000_000, wraps_at=None) / "energy_uj"
    rapl = Rapl(root)
    assert rapl.zones[0].wraps_at is None
    sampler = Sampler(CpuSource(), rapl=rapl)
    sampler.begin_epoch()
    set_counter(counter, 1_000_000)  # back: a wrap of a range nobody gave
    figures, _ = sampler.end_epoch()
    assert figures["cpu_energy_j"] is None and figures["dram_energy_j"] is None
    sampler.begin_epoch()  # the next epoch measures again
    set_counter(counter, 3_000_000)
    assert sampler.end_epoch()[0]["cpu_energy_j"] == pytest.approx(2.0)
