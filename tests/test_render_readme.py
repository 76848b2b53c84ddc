"""``bench/render_readme.py``: the README's measured blocks rendered from the stored bench
results; ``--check`` fails naming a stale block; a changed results file renders again; a
missing or damaged one, or an unknown block, is a one-line error. And the real README matches
its stored results (CI runs this)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RENDER = ROOT / "bench" / "render_readme.py"


def renders(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RENDER), *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def a_result(eager_ms: float = 16.0) -> dict:
    """A result of bench/deploy_latency.py in its JSON layout (two runtimes, one network)."""
    row = {"model": "resnest50_basic", "accuracy_pct": 77.92, "agreement_pct": 100.0,
           "max_logit_diff": 0.0, "size_mb": 134.2}  # fmt: skip
    return {
        "conditions": {
            "when": "2026-12-07T12:00:00Z",
            "cpu_model": "Some CPU",
            "cpu_flags": ["avx2"],
            "cores": 2,
            "threads": 2,
            "torch": "2.14.1",
            "onnxruntime": "1.32.0",
            "load_before": [0.1, 0.2, 0.3],
            "load_after": [0.4, 0.5, 0.6],
        },
        "rounds": [{"model": "resnest50_basic", "round": n, "busy": False} for n in (1, 2, 3)],
        "flags": [],
        "rows": [
            {
                **row,
                "runtime": "eager",
                "latency_p50_ms": eager_ms,
                "latency_ci95_low_ms": 15.5,
                "latency_ci95_high_ms": 16.5,
                "vs_onnxruntime": 0.25,
                "vs_onnxruntime_ci95_low": 0.24,
                "vs_onnxruntime_ci95_high": 0.26,
                "vs_onnxruntime_verdict": "slower",
            },
            {
                **row,
                "runtime": "onnxruntime",
                "latency_p50_ms": 4.0,
                "latency_ci95_low_ms": 3.9,
                "latency_ci95_high_ms": 4.2,
                "vs_eager": 4.0,
                "vs_eager_ci95_low": 0.97,
                "vs_eager_ci95_high": 4.1,
                "vs_eager_verdict": "same",
                "max_logit_diff": 2e-4,
            },
        ],
    }


@pytest.fixture
def site(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "deploy_latency.json").write_text(json.dumps(a_result()))
    readme = tmp_path / "README.md"
    readme.write_text("# A project\n\nBefore.\n\n<!-- render: deploy_latency -->\nold\n"
                      "<!-- /render -->\n\nAfter.\n")  # fmt: skip
    return readme, results


def test_a_block_renders_from_its_results_and_then_checks_clean(site):
    readme, results = site
    stale = renders("--check", "--readme", str(readme), "--results", str(results))
    assert stale.returncode == 1 and stale.stdout == ""
    assert f"{readme}: block 'deploy_latency' differs from what" in stale.stderr
    assert renders("--readme", str(readme), "--results", str(results)).returncode == 0
    text = readme.read_text()
    assert text.startswith("# A project\n\nBefore.\n") and text.endswith("\nAfter.\n")
    assert "| resnest50_basic | onnxruntime | 4.00 [3.90-4.20] | same [0.97-4.10] |" in text
    assert "| resnest50_basic | eager | 16.00 [15.50-16.50] | - | 0.25x [0.24-0.26] |" in text
    assert "onnxruntime is the same speed as eager (4.00x, 95% interval [0.97-4.10])" in text
    assert "load average 0.10 before, 0.40 after; flags: none." in text
    assert renders("--check", "--readme", str(readme), "--results", str(results)).returncode == 0
    # Rendering again changes nothing.
    again = renders("--readme", str(readme), "--results", str(results))
    assert "0 block(s) rendered again" in again.stdout and readme.read_text() == text


def test_a_changed_result_or_a_hand_edited_figure_fails_the_check(site):
    readme, results = site
    renders("--readme", str(readme), "--results", str(results))
    rendered = readme.read_text()
    readme.write_text(rendered.replace("16.00 [15.50-16.50]", "14.00 [15.50-16.50]"))
    edited = renders("--check", "--readme", str(readme), "--results", str(results))
    assert edited.returncode == 1 and "'deploy_latency'" in edited.stderr
    readme.write_text(rendered)
    (results / "deploy_latency.json").write_text(json.dumps(a_result(eager_ms=17.25)))
    assert renders("--check", "--readme", str(readme), "--results", str(results)).returncode == 1
    assert renders("--readme", str(readme), "--results", str(results)).returncode == 0
    assert "| eager | 17.25 [15.50-16.50] |" in readme.read_text()


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("missing", "README block 'deploy_latency': no results file "),
        ("damaged", "README block 'deploy_latency': "),
        ("unknown", "README block 'nothing_such': no renderer (known: deploy_latency, "),
        ("unclosed", "README block 'deploy_latency' has no <!-- /render --> of its own"),
        ("glued", "a <!-- render: NAME --> marker is not followed by a line break"),
    ],
)
def test_a_block_that_cannot_render_is_one_line_and_nothing_changes(site, change, said):
    readme, results = site
    if change == "missing":
        (results / "deploy_latency.json").unlink()
    elif change == "damaged":
        (results / "deploy_latency.json").write_text('{"rows": [')
    elif change == "unknown":
        text = readme.read_text()
        readme.write_text(text.replace("render: deploy_latency", "render: nothing_such"))
    elif change == "unclosed":  # a first block left open: it would swallow the second
        text = readme.read_text()
        readme.write_text(text.replace("<!-- /render -->\n", "\n", 1) + text[text.index("<!--") :])
    else:
        readme.write_text(readme.read_text().replace("deploy_latency -->\n", "deploy_latency -->"))
    before = readme.read_text()
    for args in ((), ("--check",)):
        result = renders(*args, "--readme", str(readme), "--results", str(results))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"render_readme: error: {said}")
        assert result.stderr.count("\n") == 1
    assert readme.read_text() == before


def test_a_marker_line_in_windows_line_ends_renders_and_a_flagged_run_says_so(site):
    readme, results = site
    readme.write_text(readme.read_text().replace("\n", "\r\n"))
    flagged = a_result()
    flagged["flags"] = ["resnest50_basic eager: rounds differ by 13.2% (over 10%)"]
    (results / "deploy_latency.json").write_text(json.dumps(flagged))
    assert renders("--readme", str(readme), "--results", str(results)).returncode == 0
    text = readme.read_text()
    assert "flags: resnest50_basic eager: rounds differ by 13.2% (over 10%)." in text
    assert "[0.97-4.10]) (in a flagged run: see its flags)." in text
    assert renders("--check", "--readme", str(readme), "--results", str(results)).returncode == 0


def test_the_readme_matches_its_stored_results_and_renders_every_bench_it_quotes():
    result = renders("--check")
    assert result.returncode == 0, result.stderr
    text = (ROOT / "README.md").read_text()
    names = {path.stem for path in (ROOT / "bench" / "results").glob("*.json")}
    assert {
        "deploy_latency",
        "harness_scale",
        "time_to_accuracy",
        "multinode_overhead",
        "slurm_submit",
        "profile_overhead",
        "train_throughput",
        "quickstart_time",
    } <= names
    for name in names:  # every stored result is quoted, once
        assert text.count(f"<!-- render: {name} -->") == 1, name
    assert text.count("<!-- render: deploy_int8 -->") == 1  # from deploy_latency's result


def test_a_damaged_file_among_every_result_is_named_as_itself(site):
    """The block that reads every results file (how long the refresh takes) names the one
    that is damaged, not a pattern."""
    readme, results = site
    readme.write_text(readme.read_text() + "\n<!-- render: refresh_readme -->\n<!-- /render -->\n")
    (results / "harness_scale.json").write_text("{not json")
    result = renders("--readme", str(readme), "--results", str(results))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    damaged = results / "harness_scale.json"
    assert result.stderr.startswith(
        f"render_readme: error: README block 'refresh_readme': {damaged} is damaged"
    )
