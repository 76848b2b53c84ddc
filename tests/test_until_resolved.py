"""`submit --until-resolved` on the local launcher with real jobs: a comparison whose
difference is clear resolves in the first wave; one whose two sides are the same stops at the
budget and says so.

The comparisons are made on final test accuracy, which the tiny networks' training gives
exactly again for a seed on any machine (epoch times on a loaded 2-core machine are not a
figure a test can rest on): the same seed on two GPU types of one CPU gives the same
accuracy, and a sweep trained 15 times longer learns the synthetic set far better."""

import subprocess

import pytest
import yaml

from .jobtools import EXE, store_of

pytestmark = pytest.mark.slow


def cluster(tmp_path, name: str, max_steps: int, gpu_types: list[str], seeds: list[int]) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "results_dir": str(tmp_path / "results"),
        "launcher": {"kind": "local"},
        "gpu_types": {"v100": {"local": "cpu", "cpus_per_gpu": 1},
                      "a100": {"local": "cpu", "cpus_per_gpu": 1}},
        "sweep": {"models": ["resnest_tiny_basic"], "datasets": ["synthetic"],
                  "gpu_types": gpu_types, "recipe": "fast", "epochs": 1,
                  "max_steps": max_steps, "overrides": {"batch_size": 32}, "seeds": seeds},
    }))  # fmt: skip
    return str(path)


def submit(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), "submit", *args, "-q"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=900)  # fmt: skip


def test_a_clear_difference_resolves_at_once_and_a_tie_stops_at_the_budget(tmp_path):
    seeds = [0, 1, 2, 3]
    short = submit(tmp_path, cluster(tmp_path, "short", 2, ["v100"], seeds))
    assert short.returncode == 0, short.stderr
    longer = cluster(tmp_path, "longer", 30, ["v100", "a100"], seeds)
    result = submit(tmp_path, longer, "--until-resolved", "--resolve", "final_acc_pct",
                    "--compare", "short", "--budget", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    # v100 against a100, the reference (the same seeds: the same accuracies), can never be
    # told apart; v100 against the short sweep's v100 is clearly higher
    assert "wave 1: 1 of 2 comparisons resolved; 0 of 2 added runs spent" in lines, lines
    assert "wave 2: 1 of 2 comparisons resolved; 2 of 2 added runs spent" in lines, lines
    (unresolved,) = [line for line in lines if line.startswith("unresolved: ")]
    assert unresolved.startswith(
        "unresolved: final_acc_pct: resnest_tiny_basic on v100 vs resnest_tiny_basic on "
        "a100: unresolved (ratio 95% interval "
    ), unresolved
    assert (
        "until resolved: 1 of 2 comparisons resolved after 2 wave(s), 2 run(s) added; the "
        "budget of 2 added runs is spent"
    ) in lines
    # only the unresolved cells got runs: one more repeat of seed 0 on each GPU type
    jobs = store_of(tmp_path).jobs("longer")
    added = sorted((j["gpu_type"], j["seed"], j["repeat"]) for j in jobs if j["repeat"] > 0)
    assert added == [("a100", 0, 1), ("v100", 0, 1)]
    assert all(j["state"] == "succeeded" for j in jobs) and len(jobs) == 10


def test_until_resolved_options_are_checked_before_anything_runs(tmp_path):
    path = cluster(tmp_path, "checked", 2, ["v100"], [0])
    for args, message in [
        (["--budget", "3"], "--budget goes with --until-resolved"),
        (["--until-resolved", "--dry-run"], "--until-resolved runs the sweep: not with --dry-run"),
        (["--until-resolved", "--budget", "-1"],
         "--budget -1: a number of training runs, 0 or more"),
        (["--until-resolved", "--resolve", "epoch_time"], "--resolve 'epoch_time': expected one "
         "of epoch_time_s, images_per_s, final_acc_pct, energy_per_image_mj"),
        (["--until-resolved", "--compare", "nowhere"], f"--compare 'nowhere': no such sweep in "
         f"the store of {path}"),
    ]:  # fmt: skip
        result = submit(tmp_path, path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip() == f"resnest-bench: error: {message}", args
    assert not (tmp_path / "results" / "results.db").exists() or not store_of(tmp_path).jobs(
        "checked"
    )
