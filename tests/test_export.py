"""Both study networks export (torch.export, ONNX) and compile: forward has no
data-dependent Python control flow."""

import numpy as np
import pytest
import torch
from torch.export import Dim

import resnest

from .conftest import randomize_

VARIANTS = ["resnest50_bottleneck", "resnest50_basic"]


@pytest.fixture(scope="module", params=VARIANTS)
def exported(request):
    torch.manual_seed(0)
    model = randomize_(resnest.create(request.param, num_classes=10)).eval()
    example = torch.randn(2, 3, 32, 32)
    program = torch.export.export(
        model, (example,), dynamic_shapes={"x": {0: Dim("batch", min=1, max=4096)}}
    )
    return model, program


def test_torch_export_with_a_dynamic_batch(exported):
    model, program = exported
    runnable = program.module()
    for batch in (1, 3, 16):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(runnable(x), model(x), rtol=0, atol=1e-5)


def test_onnx_export_runs_under_onnx_runtime(exported, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, program = exported
    path = tmp_path / "model.onnx"
    onnx_program = torch.onnx.export(
        program,
        input_names=["images"],
        output_names=["logits"],
        opset_version=18,
        dynamo=True,
        verbose=False,
    )
    onnx_program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert logits.shape == (batch, 10)
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_channels_last_and_torch_compile(name):
    model = randomize_(resnest.create(name, num_classes=10)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        x_cl = x.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x_cl), expected, rtol=0, atol=1e-5)
        # fullgraph: any graph break (data-dependent control flow) is an error.
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x_cl), expected, rtol=0, atol=1e-4)
