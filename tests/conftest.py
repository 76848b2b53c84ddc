import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and BN statistic a non-trivial value, so that a comparison of two
    implementations exercises the biases, BN shifts and running statistics, not just the
    initialisation (where BN shift is 0 and running stats are 0 and 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return model


# The Caffe2 runtime's interpreter (Python 3.9, torch 1.10.2) when .ci/run built one
# (scripts/caffe2-env.sh up), else none: never whatever this user's home holds.
CAFFE2_PYTHON = os.environ.get("RESNEST_BENCH_TEST_CAFFE2", "")
needs_caffe2 = pytest.mark.skipif(
    not CAFFE2_PYTHON, reason="set RESNEST_BENCH_TEST_CAFFE2 to a Caffe2 interpreter"
)


def pytest_configure(config):
    os.environ["RESNEST_BENCH_CAFFE2_PYTHON"] = CAFFE2_PYTHON or "/nonexistent/caffe2/python"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Several workers share the cores: one torch thread each, passed on to the jobs they
        # start (the launchers honour a user's OMP_NUM_THREADS). Two processes that each start
        # a thread per core spin against each other and run many times slower.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


CLUSTER_MARKERS = ("slurm", "ray")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``): a test module runs whole on one worker, so its
    module fixtures are built once; the tests of the shared SLURM and Ray clusters run one at a
    time on one worker, and they come first, being the longest group."""

    def group(item) -> str:
        if any(item.get_closest_marker(m) for m in CLUSTER_MARKERS):
            return "clusters"
        return item.path.name

    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    items.sort(key=lambda item: group(item) != "clusters")  # stable: file order otherwise
