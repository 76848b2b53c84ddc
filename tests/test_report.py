"""`resnest-bench report`: built from a store filled by a real small sweep, then opened in a
real headless Chromium (Debian's chromium and chromium-driver, through selenium)."""

import io
import json
import os
import re
import shutil
import statistics

import pytest
import yaml
from PIL import Image
from sqlalchemy import select

from records.schema import epochs, jobs, results

from .jobtools import cli, store_of, tiny_sweep, write_cluster

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    path = write_cluster(
        tmp_path,
        "report-test",
        {"kind": "local", "local": {"max_parallel": 2}},
        # v100: asks for a GPU named V100 but runs on this CPU: flagged as a mismatch.
        {
            "cpu-a": {"local": "cpu", "price_per_gpu_hour": 2.5, "peak_tflops": 0.5},
            "v100": {"local": "cpu", "gpu_name": "V100"},
        },
        tiny_sweep(models=["resnest_tiny_basic"], gpu_types=["cpu-a", "v100"], epochs=3),
    )
    result = cli("submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "report"
    result = cli("report", "-c", str(path), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"report: {out / 'index.html'}")
    return tmp_path, path, out


def test_report_files_and_tables(report):
    _, _, out = report
    pngs = sorted(p.name for p in out.glob("*.png"))
    # No GPU here: no energy plot; utilisation falls back to the CPU's.
    assert pngs == ["accuracy.png", "epoch_time.png", "images_per_sec.png", "utilisation.png"]
    page = (out / "index.html").read_text()
    assert "<script" not in page  # static: works offline, nothing to run
    assert "Sweep report-test" in page and "cpu-a" in page and "v100" in page
    assert "1 run(s) ran on a GPU other than the type asked for" in page
    assert "CPU (no GPU telemetry) utilisation" in page
    assert "no GPU: the job ran on the CPU" in page  # provenance says why
    assert "$/run" in page  # cpu-a has a price per GPU-hour
    # Figures as the terminal shows them (2.53, 1,012), not as floats print (2.5299).
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert cells and not [c for c in cells if re.fullmatch(r"-?\d+\.\d{4,}", c)]


def test_achieved_tflops_and_the_fraction_of_peak_follow_from_the_epoch_rows(report):
    """Each epoch's TFLOP/s is its images/s x 3 x the network's forward FLOPs at the job's
    input size (counted here again from the zoo's network); the table's is the median over
    the timed epochs, and its MFU that over the GPU type's ``peak_tflops`` (cpu-a: 0.5). A GPU
    type with no peak of its own and a GPU the known table lacks (this CPU) gets no MFU."""
    import resnest
    from records.schema import provenance
    from resnest.summary import count_flops

    tmp_path, path, _ = report
    flops = count_flops(resnest.create("resnest_tiny_basic", num_classes=10), (1, 3, 32, 32))
    with store_of(tmp_path).begin() as conn:
        recorded = conn.execute(select(provenance.c.forward_flops, provenance.c.math_mode)).all()
        rows = conn.execute(
            select(jobs.c.gpu_type, epochs.c.images_per_sec, epochs.c.tflops)
            .join(jobs, jobs.c.id == epochs.c.job_id)
            .where(jobs.c.stage == "train", epochs.c.warmup.is_(False))
        ).all()
    assert recorded and set(recorded) == {(flops, "fp32")}  # the CPU computes in fp32
    for _, speed, tflops in rows:
        assert tflops == pytest.approx(speed * 3 * flops / 1e12, rel=1e-12)
    table = json.loads(cli("table", "-c", str(path), "--format", "json", cwd=tmp_path).stdout)
    by_gpu = {r["gpu_type"]: r for r in table}
    for gpu in ("cpu-a", "v100"):
        expected = statistics.median([t for g, _, t in rows if g == gpu])
        assert by_gpu[gpu]["tflops"] == round(expected, 3)
    cpu_a = statistics.median([t for g, _, t in rows if g == "cpu-a"])
    assert by_gpu["cpu-a"]["mfu_pct"] == round(100 * cpu_a / 0.5, 2)
    assert by_gpu["v100"]["mfu_pct"] is None
    text = cli("table", "-c", str(path), cwd=tmp_path).stdout
    assert "TFLOP/s" in text and "MFU %" in text


def test_table_telemetry_cost_mismatch_and_the_study_layout(report):
    tmp_path, path, _ = report
    store = store_of(tmp_path)
    rows = json.loads(cli("table", "-c", str(path), "--format", "json", cwd=tmp_path).stdout)
    by_gpu = {r["gpu_type"]: r for r in rows}
    model = "resnest_tiny_basic"
    assert {r["model"] for r in rows} == {model}
    with store.begin() as conn:
        train_time = conn.execute(
            select(results.c.train_time)
            .join(jobs, jobs.c.id == results.c.job_id)
            .where(jobs.c.gpu_type == "cpu-a")
        ).scalar()
        cpu = (
            conn.execute(
                select(epochs.c.cpu_util_mean)
                .join(jobs, jobs.c.id == epochs.c.job_id)
                .where(jobs.c.gpu_type == "cpu-a", epochs.c.warmup.is_(False))
            )
            .scalars()
            .all()
        )
    # cost: training time x 1 GPU x 2.5 per GPU-hour; no price for v100
    assert by_gpu["cpu-a"]["cost_per_run"] == round(train_time / 3600 * 2.5, 4)
    assert by_gpu["v100"]["cost_per_run"] is None
    assert by_gpu["cpu-a"]["cpu_util_pct"] == round(statistics.median(cpu), 1)
    assert by_gpu["cpu-a"]["gpu_util_pct"] is None  # no NVML here
    assert by_gpu["v100"]["gpu_mismatch_runs"] == 1
    assert by_gpu["cpu-a"]["gpu_mismatch_runs"] == 0
    study = cli("table", "-c", str(path), "--layout", "study", "--format", "json", cwd=tmp_path)
    tables = json.loads(study.stdout)
    accuracy = [t for t in tables if t["table"] == "test accuracy % (final)"]
    assert len(accuracy) == 1 and accuracy[0]["variant"] == model
    row = accuracy[0]
    assert row["average"] == pytest.approx((row["cpu-a"] + row["v100"]) / 2, abs=1e-3)
    assert {t["table"] for t in tables} == {"test accuracy % (final)", "seconds per epoch"}
    text = cli("table", "-c", str(path), "--layout", "study", cwd=tmp_path).stdout
    assert "seconds per epoch" in text and "average" in text


def test_report_opens_in_headless_chromium_with_every_image_loaded(report):
    if CHROMEDRIVER is None or CHROMIUM is None:
        message = "no chromium and chromium-driver here (apt-get install them; .ci/run does)"
        if os.environ.get("RESNEST_BENCH_TEST_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _, _, out = report
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,3000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    fits = "return [document.documentElement.scrollWidth, window.innerWidth]"
    widest_image = "return Math.max(...Array.from(document.images).map(i => i.width))"
    try:
        driver.get((out / "index.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map("
            "i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight])"
        )
        shot = driver.get_screenshot_as_png()
        logs = driver.get_log("browser")
        title = driver.title
        desktop = driver.execute_script(fits), driver.execute_script(widest_image)
        driver.set_window_size(390, 844)  # a phone
        driver.get((out / "index.html").as_uri())
        phone = driver.execute_script(fits), driver.execute_script(widest_image)
        phone_shot = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    # At both widths the page is no wider than the window (wide tables scroll in their own
    # box) and the plots are shrunk to fit; at the desktop width they are at full size.
    (page_width, window), image = desktop
    assert page_width <= window and image == 700
    (page_width, window), image = phone
    assert window < 500 and page_width <= window and image <= window
    narrow = Image.open(io.BytesIO(phone_shot)).convert("L")
    assert narrow.size[0] < 1000 and len(narrow.getcolors(maxcolors=1 << 16) or []) > 20
    assert title == "resnest-bench: report-test"
    assert len(images) == 4
    for src, complete, width, height in images:
        assert complete and width == 700 and height == 400, src
    assert [entry for entry in logs if entry["level"] in ("SEVERE", "WARNING")] == []
    picture = Image.open(io.BytesIO(shot)).convert("L")
    assert picture.size[0] >= 1000
    assert len(picture.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # not blank


def test_report_of_a_sweep_without_epochs_is_a_page_that_says_so(tmp_path):
    path = write_cluster(
        tmp_path, "empty", {"kind": "local"}, {"cpu": {"local": "cpu"}},
        tiny_sweep(gpu_types=["cpu"]),
    )  # fmt: skip
    from records.store import open_store

    config = yaml.safe_load(path.read_text())
    store = open_store(None, config["results_dir"])
    store.add_sweep("empty", config)
    result = cli("report", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "results" / "empty" / "report" / "index.html").read_text()
    assert "(no finished training epochs yet)" in page and "(no inference results)" in page
    assert "<img" not in page


def test_each_attempt_and_gpu_of_a_job_is_its_own_utilisation_line():
    from collections import namedtuple

    from harness.plots import utilisation_series

    Sample = namedtuple("Sample", "model gpu_type job_id attempt gpu_index time sample")
    samples = [
        # job a: attempt 0 on two GPUs, then after a 600 s gap its rerun (attempt 1)
        *(Sample("m", "v100", "a", 0, g, 100.0 + t, {"gpu_util": 50 + g}) for t in (0, 1)
          for g in (0, 1)),
        *(Sample("m", "v100", "a", 1, 0, 700.0 + t, {"gpu_util": 90}) for t in (0, 1, 2)),
        Sample("m", "v100", "b", 0, 0, 50.0, {"gpu_util": None}),  # no reading: no point
        Sample("m", "v100", "b", 0, 0, 51.0, {"gpu_util": 10}),
    ]  # fmt: skip
    series = utilisation_series(sorted(samples, key=lambda s: s.time), "gpu_util")
    assert series == {
        ("m", "v100", "a", 0, 0): [(0.0, 50), (1.0, 50)],
        ("m", "v100", "a", 0, 1): [(0.0, 51), (1.0, 51)],
        ("m", "v100", "a", 1, 0): [(600.0, 90), (601.0, 90), (602.0, 90)],
        ("m", "v100", "b", 0, 0): [(1.0, 10)],
    }
