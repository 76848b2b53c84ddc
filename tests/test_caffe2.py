"""The Caffe2 runtime's own pieces: the adjustments that let Caffe2's ONNX backend (torch 1.10.2)
take a current exporter's file, and why the file is opset 11: split attention's softmax
exported at opset 13 runs silently wrong in Caffe2."""

import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import resnest
from jobs.caffe2_runtime import Caffe2Error, Caffe2Process
from jobs.caffe2_worker import adjust

from .conftest import CAFFE2_PYTHON, needs_caffe2, randomize_


class Padded(nn.Module):
    """A pad the exporter writes as opset 11's Pad (pads as an input), then a named pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, (1, 2, 0, 1), value=0.5)
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def export(model: nn.Module, path: Path, opset: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.randn(2, 3, 16, 16),), str(path), dynamo=False,
            opset_version=opset, input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    return path


def test_adjust_moves_constant_pads_into_the_attribute_and_clears_names(tmp_path):
    model = onnx.load(str(export(Padded(), tmp_path / "padded.onnx", 11)))
    (pad,) = [n for n in model.graph.node if n.op_type == "Pad"]
    assert len(pad.input) >= 2 and not any(a.name == "pads" for a in pad.attribute)
    assert any(n.name for n in model.graph.node)
    adjusted, rewritten = adjust(model)
    assert rewritten
    (pad,) = [n for n in adjusted.graph.node if n.op_type == "Pad"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
    assert len(pad.input) == 1
    # torch's (left, right, top, bottom) on the last two axes, as ONNX's begins then ends
    assert attributes["pads"] == [0, 0, 0, 1, 0, 0, 1, 2]
    assert attributes["value"] == pytest.approx(0.5)
    assert not any(n.name for n in adjusted.graph.node)
    inputs = {i.name for i in adjusted.graph.input}
    assert {t.name for t in adjusted.graph.initializer} <= inputs


def test_adjust_refuses_pads_computed_at_run_time(tmp_path):
    model = onnx.load(str(export(Padded(), tmp_path / "padded.onnx", 11)))
    (pad,) = [n for n in model.graph.node if n.op_type == "Pad"]
    pad.input[1] = "images"  # no constant behind it
    with pytest.raises(ValueError, match="computed at run time cannot run in Caffe2"):
        adjust(model)


@needs_caffe2
def test_a_rewritten_pad_and_a_named_pool_run_in_caffe2_as_in_eager(tmp_path):
    model = Padded()
    path = export(model, tmp_path / "padded.onnx", 11)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    runtime = Caffe2Process(path, tmp_path / "caffe2.log", threads=1)
    try:
        got = runtime(x)
    finally:
        runtime.close()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-5


NEEDED = """
import sys, numpy as np, onnx, onnxoptimizer
sys.path.insert(0, sys.argv[2])
import caffe2_worker
onnx.optimizer = onnxoptimizer
import caffe2.python.onnx.backend as backend
original = onnx.load(sys.argv[1])
for undone in ("nothing", "names", "inputs"):
    model, _ = caffe2_worker.adjust(onnx.load(sys.argv[1]))
    if undone == "names":  # the exporter's node names back
        for node, named in zip(model.graph.node, [n for n in original.graph.node if n.op_type
                               not in ("Constant", "ConstantOfShape", "Concat", "Reshape",
                                       "Slice", "Transpose", "Cast")]):
            node.name = named.name
    if undone == "inputs":  # the initializers no longer graph inputs
        kept = [i for i in model.graph.input if i.name == "images"]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    try:
        rep = backend.prepare(model, device="CPU", no_check_UNSAFE=True)
        rep.run(np.zeros((2, 3, 16, 16), np.float32))
        print(undone, "ran")
    except Exception as exc:
        print(undone, "failed:", str(exc).strip().splitlines()[0])
"""


@needs_caffe2
def test_each_adjustment_is_needed(tmp_path):
    """Undo one adjustment at a time and Caffe2 refuses the file: without the cleared names it
    asks a GlobalAveragePool for a kernel size, without initializers as inputs its init net
    declares blobs it never produces."""
    path = export(Padded(), tmp_path / "padded.onnx", 11)
    done = subprocess.run(
        [CAFFE2_PYTHON, "-c", NEEDED, str(path), str(Path(adjust.__code__.co_filename).parent)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["nothing"] == "ran", done.stderr
    assert "set explicitly the kernel size" in lines["names"]
    assert "declared as output but never produced" in lines["inputs"]


class RadixSoftmax(nn.Module):
    """Split attention's softmax across the radix: attention logits (N, radix * C, 1, 1) as
    (N, radix, C, 1), softmax over the radix (dim 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conv(x).mean((2, 3), keepdim=True)
        return torch.softmax(logits.reshape(-1, 2, 4, 1), dim=1).reshape(-1, 8)


def caffe2_vs_eager(model: nn.Module, path: Path, x: np.ndarray) -> float:
    runtime = Caffe2Process(path, path.with_suffix(".log"), threads=1)
    try:
        got = runtime(x)
    finally:
        runtime.close()
    with torch.no_grad():
        return float(np.abs(got - model(torch.from_numpy(x)).numpy()).max())


@needs_caffe2
def test_split_attention_is_right_in_caffe2_at_opset_11_and_not_at_13(tmp_path):
    """Why model.caffe2.onnx is opset 11. Caffe2's Softmax keeps the rule of opsets before 13
    (the input flattened from ``axis`` on); opset 13 softmaxes along ``axis`` alone. The radix
    softmax of split attention at opset 13 runs in Caffe2 without a word and gives other
    numbers; the whole network at opset 13 does not even prepare (Unsqueeze takes its axes as
    an input from 13 on)."""
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    softmax = RadixSoftmax().eval()
    assert caffe2_vs_eager(softmax, export(softmax, tmp_path / "sm11.onnx", 11), x) <= 1e-6
    assert caffe2_vs_eager(softmax, export(softmax, tmp_path / "sm13.onnx", 13), x) > 0.1
    network = randomize_(resnest.create("resnest_tiny_basic", num_classes=10)).eval()
    assert caffe2_vs_eager(network, export(network, tmp_path / "net11.onnx", 11), x) <= 1e-4
    with pytest.raises(Caffe2Error, match="ExpandDims"):
        caffe2_vs_eager(network, export(network, tmp_path / "net13.onnx", 13), x)


def test_a_missing_model_file_is_named(tmp_path):
    python = tmp_path / "python"
    python.touch()  # the interpreter is checked first: it must exist for this message
    with pytest.raises(Caffe2Error, match=r"^no model.caffe2.onnx in .*: export again"):
        Caffe2Process(tmp_path / "model.caffe2.onnx", tmp_path / "log", python=python)


def _export_tiny(tmp_path: Path, python: str):
    """A tiny network exported as the export job writes it, and a runtime setting for it."""
    from jobs.export import export_all
    from jobs.runtimes import Setting

    model = resnest.create("resnest_tiny_bottleneck", num_classes=10).eval()
    randomize_(model)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    folder = tmp_path / "export"
    export_all(model, x[:2], folder, aoti=None)
    artifacts = {"folder": folder, "model_name": "resnest_tiny_bottleneck", "num_classes": 10,
                 "stem": ""}  # fmt: skip
    return Setting(artifacts, torch.device("cpu"), 1, x.numpy(), python, tmp_path / "log"), x


@needs_caffe2
def test_eager_of_caffe2s_era_runs_the_network_in_torch_1_10_with_todays_logits(tmp_path):
    """The study's other runtime as it was: the export's state dict in torch 1.10.2 eager,
    in the Caffe2 interpreter (the network's code keeps to Python 3.9 for it)."""
    from jobs.runtimes import create

    setting, x = _export_tiny(tmp_path, CAFFE2_PYTHON)
    then, now = create("eager-torch1.10", setting), create("eager", setting)
    info = then.prepare()
    now.prepare()
    try:
        assert info["versions"]["torch"].startswith("1.10.2")
        assert info["versions"]["python"].startswith("3.9.")
        assert info["provider"] == "torch 1.10.2 cpu"
        assert info["bytes"] == (setting.folder / "model.state_dict.pt").stat().st_size
        assert np.abs(then.run(x.numpy()) - now.run(x.numpy())).max() <= 1e-4
        times = then.times(x[:1].numpy(), 1, 3)
        assert len(times) == 3 and all(t > 0 for t in times)
    finally:
        then.close()
    assert not then.spec.exists()  # its spec file goes with it


def test_eager_of_caffe2s_era_without_the_interpreter_says_why(tmp_path):
    from jobs.runtimes import Unavailable, create

    setting, _ = _export_tiny(tmp_path, str(tmp_path / "no" / "python"))
    runtime = create("eager-torch1.10", setting)
    with pytest.raises(Unavailable, match=r"^no Caffe2 interpreter at .*no/python: "):
        runtime.prepare()
