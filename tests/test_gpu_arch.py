"""The GPU architecture preflight, decided on stand-in capabilities: this machine has no GPU,
so the GPU (its name and compute capability) is a stand-in, and the architecture lists are
the ones real torch builds report."""

import subprocess
import sys

import pytest
import torch

from jobs import gpu_arch

# torch.cuda.get_arch_list() of real builds (PyTorch 2.11 on Linux x86).
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
HOPPER_ONLY = ["sm_90a"]


@pytest.mark.parametrize(
    "gpu, capability, cu130, cu126",
    [
        ("K80", (3, 7), False, False),
        ("P100", (6, 0), False, True),
        ("GTX 1080", (6, 1), False, True),  # sm_60 code runs on 6.1
        ("V100", (7, 0), False, True),
        ("T4", (7, 5), True, True),
        ("A100", (8, 0), True, True),
        ("RTX 3090", (8, 6), True, True),
        ("L40", (8, 9), True, True),  # sm_86 code runs on 8.9
        ("H100", (9, 0), True, True),
        ("B200", (10, 0), True, False),  # sm_90 code does not run on 10.0
        ("RTX 5090", (12, 0), True, False),
        ("a GPU newer than the build", (13, 0), True, False),  # compute_120 PTX is JIT-compiled
    ],
)  # fmt: skip
def test_which_build_runs_on_which_gpu(gpu, capability, cu130, cu126):
    assert gpu_arch.runs_on(capability, CU130) is cu130, gpu
    assert gpu_arch.runs_on(capability, CU126) is cu126, gpu


def test_architecture_specific_code_runs_only_on_its_own_capability():
    assert gpu_arch.runs_on((9, 0), HOPPER_ONLY)
    assert not gpu_arch.runs_on((10, 0), HOPPER_ONLY)
    assert not gpu_arch.runs_on((9, 0), ["sm_100", "garbage", ""])


def test_the_build_here_reports_its_list():
    # The CUDA build on this machine lists its architectures even with no GPU visible.
    arch_list = torch.cuda.get_arch_list()
    assert all(gpu_arch._ARCH.match(a) for a in arch_list), arch_list


def _stand_in_gpu(monkeypatch, name: str, capability: tuple[int, int], arch_list: list[str]):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)


@pytest.mark.parametrize(
    "name, capability, advice",
    [
        ("Tesla K80", (3, 7), "no current torch build has kernels for Kepler"),
        ("Tesla P100-PCIE-16GB", (6, 0), "install a CUDA 12.6 build of torch"),
        ("Tesla V100-SXM2-32GB", (7, 0), "whl/cu126"),
        ("NVIDIA B200", (10, 0), "install a CUDA 12.8 or 13.0 build of torch"),
    ],
)
def test_a_gpu_the_build_lacks_is_one_line_naming_gpu_capability_list_and_fix(
    monkeypatch, name, capability, advice
):
    build = CU126 if capability >= (10, 0) else CU130  # each GPU against a build that lacks it
    _stand_in_gpu(monkeypatch, name, capability, build)
    with pytest.raises(gpu_arch.GpuArchError) as caught:
        gpu_arch.check(torch.device("cuda", 1))
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"GPU 1 ({name}, compute capability {capability[0]}.{capability[1]}):")
    assert f"this torch ({torch.__version__}) has kernels only for {' '.join(build)}" in text
    assert advice in text


def test_a_gpu_the_build_covers_and_the_cpu_pass(monkeypatch):
    _stand_in_gpu(monkeypatch, "NVIDIA H200", (9, 0), CU130)
    gpu_arch.check(torch.device("cuda", 0))
    _stand_in_gpu(monkeypatch, "Tesla K80", (3, 7), CU130)
    gpu_arch.check(torch.device("cpu"))  # nothing to check on the CPU


STAND_IN_JOB = """
import sys, torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.get_device_capability = lambda device=None: (7, 0)
torch.cuda.get_device_name = lambda device=None: "Tesla V100-SXM2-32GB"
torch.cuda.get_arch_list = lambda: {arch!r}
torch.cuda.current_device = lambda: 0
from jobs.{stage} import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("stage", ["train", "export", "infer"])
def test_a_job_on_such_a_gpu_stops_at_once_with_exit_2(tmp_path, stage):
    """The job as a launcher starts it, on a stand-in V100 (no GPU here) and a CUDA 13 build:
    it stops before it loads data or builds the network, one line, exit 2."""
    args = {
        "train": ["--model", "resnest_tiny_basic", "--dataset", "synthetic", "--device", "cuda"],
        "export": ["--from", str(tmp_path / "no-run"), "--aoti-device", "cuda"],
        "infer": ["--from", str(tmp_path / "no-export"), "--device", "cuda"],
    }[stage]
    code = STAND_IN_JOB.format(arch=CU130, stage=stage)
    result = subprocess.run(
        [sys.executable, "-c", code, "--out", str(tmp_path / "job"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "GPU 0 (Tesla V100-SXM2-32GB, compute capability 7.0)" in lines[0]
    assert "whl/cu126" in lines[0]
