"""The known GPUs' peaks (``harness.peaks``) by the names NVML gives, and the math mode a job
reports (``jobs.flops``): no GPU here, so the CUDA branch runs with torch's device queries
replaced by a fake (named as such below)."""

import pytest
import torch

from harness.peaks import peak_tflops
from jobs import flops


@pytest.mark.parametrize(
    ("name", "mode", "peak"),
    [
        ("Tesla K80", "fp32", 4.37),
        ("Tesla P100-SXM2-16GB", "fp32", 10.6),
        ("Tesla P100-PCIE-16GB", "fp32", 9.3),
        ("Tesla V100-SXM2-16GB", "fp32", 15.7),
        ("Tesla V100-PCIE-32GB", "fp32", 14.0),
        ("Tesla V100-SXM2-16GB", "tf32", None),  # Volta has no TF32
        ("Tesla T4", "fp32", 8.1),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156.0),
        ("NVIDIA A100 80GB PCIe", "bf16", 312.0),
        ("NVIDIA L40S", "tf32", 183.0),
        ("NVIDIA H100 80GB HBM3", "tf32", 494.5),
        ("NVIDIA H100 PCIe", "fp32", 51.0),
        ("NVIDIA H100 NVL", "bf16", 835.5),
        ("NVIDIA H200", "bf16", 989.5),
        ("NVIDIA H200 NVL", "fp32", 60.0),
        ("NVIDIA B200", "tf32", 1100.0),
        ("NVIDIA RTX A6000", "fp32", None),  # not known: no MFU rather than a wrong one
        ("cpu", "fp32", None),
        (None, "fp32", None),
        ("NVIDIA A100-SXM4-80GB", "fp8", None),
    ],
)
def test_known_peaks_by_nvml_name(name, mode, peak):
    assert peak_tflops(name, mode) == peak


def test_every_known_peak_names_its_source():
    from harness.peaks import KNOWN

    for fragment, peak in KNOWN:
        assert "datasheet" in peak.source, fragment
        assert peak.fp32 > 0 and (peak.tf32 or 1) > 0 and (peak.bf16 or 1) > 0


def test_math_mode_on_the_cpu_and_on_a_fake_gpu(monkeypatch):
    assert flops.math_mode(torch.device("cpu"), bf16=True) == "fp32"
    # A fake: torch's capability query answers as an A100 (8.0) or a V100 (7.0) would.
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert flops.math_mode(cuda, bf16=True) == "bf16"
    assert flops.math_mode(cuda, bf16=False) == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert flops.math_mode(cuda, bf16=False) == "fp32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert flops.math_mode(cuda, bf16=False) == "fp32"


def test_a_peak_that_is_not_positive_is_refused_at_plan_time(tmp_path):
    from .jobtools import cli, tiny_sweep, write_cluster

    path = write_cluster(
        tmp_path, "peaks", {"kind": "local"}, {"v100": {"local": "cpu", "peak_tflops": 0}},
        tiny_sweep(gpu_types=["v100"]),
    )  # fmt: skip
    result = cli("submit", str(path), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "gpu_types.v100.peak_tflops" in result.stderr and str(path) in result.stderr
