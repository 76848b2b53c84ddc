import os
import subprocess

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


# The modules of the shared SLURM clusters and of Ray: under pytest-xdist they run one test at
# a time, all on one worker (two node-failure tests at once would kill each other's nodes).
CLUSTER_MODULES = (
    "test_slurm.py",
    "test_slurm_limits.py",
    "test_multinode.py",
    "test_ray.py",
    "test_multinode_ray.py",
)
CLUSTER_MARKERS = ("slurm", "ray")
# The modules whose tests start a cluster, a sweep, a training job or an export (seconds to
# minutes each on 2 cores): every test in them is marked slow, so that `pytest -m "not
# slow"` is the quick loop of development. Tests of that kind in other modules carry the
# mark themselves.
SLOW_MODULES = (
    *CLUSTER_MODULES,
    "test_sweep.py",
    "test_deploy.py",
    "test_export.py",
    "test_caffe2.py",
    "test_fashion_mnist.py",
    "test_train.py",
    "test_ddp.py",
    "test_recovery.py",
    "test_report.py",
    "test_job_environment.py",
)


def _scope(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return "clusters" if module in CLUSTER_MODULES else module


def pytest_collection_modifyitems(config, items):
    """The slow modules' tests marked slow, the cluster tests first (the longest unit of
    work), and a check that every test that needs a cluster lives in one of the cluster
    modules."""
    for item in items:
        if item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if any(item.get_closest_marker(m) for m in CLUSTER_MARKERS):
            assert _scope(item.nodeid) == "clusters", (
                f"{item.nodeid} needs a cluster: put it in one of {', '.join(CLUSTER_MODULES)}"
            )
    items.sort(key=lambda item: _scope(item.nodeid) != "clusters")  # stable otherwise


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling by module, except that the cluster modules are one unit: a
    module's tests run on one worker (its module fixtures are built once), and the cluster
    tests run one at a time."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesWithClustersTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    return ModulesWithClustersTogether(config, log)


def _slurm_up() -> bool:
    try:
        ok = [
            subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
            for cmd in (["sinfo", "-h"], ["sacct", "-n", "-X", "-S", "now"])
        ]
    except (OSError, subprocess.TimeoutExpired):
        return False
    return all(ok)


@pytest.fixture(scope="module")
def slurm_cluster():
    """The single-node SLURM of scripts/slurm-local.sh, up (the SLURM modules use it)."""
    if not _slurm_up():
        message = "no SLURM here: run scripts/slurm-local.sh up (.ci/run does)"
        if os.environ.get("RESNEST_BENCH_TEST_SLURM"):
            pytest.fail(message)  # CI started it: a cluster that is down is a failure
        pytest.skip(message)
