"""The INT8 schemes (``jobs.runtimes.INT8_SCHEMES``) on a real export of a trained network and
real Fashion-MNIST images: each scheme quantizes what it says, and ONNX Runtime's optimized
graph shows it (convolutions fused into QLinearConv; the classifier's Gemm in float where the
scheme keeps it so; s8 activations where asked); a file is quantized once per process."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from jobs import data
from jobs.data import FASHION_MNIST_SYSTEM_DIR, normalise
from jobs.export import export_all, load_trained
from jobs.runtimes import INT8_SCHEMES, Setting, create, quantize_int8

from .jobtools import run_job


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """resnest_tiny_bottleneck trained briefly on Fashion-MNIST, exported; calibration and
    test images from the real files."""
    tmp = tmp_path_factory.mktemp("int8")
    trained = run_job(tmp / "train", "--model", "resnest_tiny_bottleneck", "--dataset",
                      "fashion-mnist", "--data-dir", str(FASHION_MNIST_SYSTEM_DIR),
                      "--batch-size", "32", "--epochs", "1", "--max-steps", "20")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    model, state = load_trained(tmp / "train")
    train = data.load("fashion-mnist", str(FASHION_MNIST_SYSTEM_DIR), train=True)
    calibration = normalise(train.images[:64], train).numpy()
    export_all(model, torch.from_numpy(calibration[:2]), tmp / "export", aoti=None)
    artifacts = {"folder": tmp / "export", "model_name": state["model_name"],
                 "num_classes": state["num_classes"], "stem": state.get("stem") or ""}  # fmt: skip
    return Setting(artifacts, torch.device("cpu"), 1, calibration)


def test_each_scheme_quantizes_what_it_says(setting):
    ops = {}
    images = setting.calibration[:8]
    fp32 = create("onnxruntime", setting)
    fp32.prepare()
    reference = fp32.run(images)
    fp32.close()
    for name in INT8_SCHEMES:
        runtime = create(name, setting)
        runtime.prepare()
        logits = runtime.run(images)
        assert logits.shape == reference.shape and np.isfinite(logits).all(), name
        ops[name] = runtime.graph_ops()
        runtime.close()
    convs = sum(1 for n in onnx.load(setting.folder / "model.onnx").graph.node
                if n.op_type == "Conv")  # fmt: skip
    # convolutions alone: every one fused into QLinearConv; the classifier and split
    # attention's softmax and products stay float
    default = ops["onnxruntime-int8"]
    assert default.get("QLinearConv") == convs and "Conv" not in default
    assert default.get("Gemm") == 1 and not {"QGemm", "QLinearSoftmax", "QLinearMul"} & set(default)
    # every op ORT can: the classifier quantized too
    assert "Gemm" not in ops["onnxruntime-int8-all"] and ops["onnxruntime-int8-all"]["QGemm"] == 1
    # every op but the classifier
    nogemm = ops["onnxruntime-int8-nogemm"]
    assert nogemm.get("Gemm") == 1 and "QGemm" not in nogemm and nogemm["QLinearConv"] == convs
    # s8 activations: the quantized file's activation zero points are int8, u8 otherwise
    for name, dtype in (("onnxruntime-int8-s8", onnx.TensorProto.INT8),
                        ("onnxruntime-int8", onnx.TensorProto.UINT8)):  # fmt: skip
        graph = onnx.load(setting.folder / f"model.{name}.onnx").graph
        initializers = {i.name: i for i in graph.initializer}
        points = {initializers[n.input[2]].data_type for n in graph.node
                  if n.op_type == "QuantizeLinear" and n.input[2] in initializers}  # fmt: skip
        assert points == {dtype}, name


def test_a_file_is_quantized_once_per_process_unless_it_or_the_images_change(setting):
    source: Path = setting.folder / "model.onnx"
    first = quantize_int8(source, setting.calibration, "onnxruntime-int8-all")
    stamp = first.stat().st_mtime_ns
    assert quantize_int8(source, setting.calibration, "onnxruntime-int8-all") == first
    assert first.stat().st_mtime_ns == stamp  # not written again
    other = setting.calibration[:32].copy()
    assert quantize_int8(source, other, "onnxruntime-int8-all") == first
    assert first.stat().st_mtime_ns != stamp  # other images: calibrated again
