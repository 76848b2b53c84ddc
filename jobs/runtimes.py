"""Opening what an export job wrote, for the parity check and the inference job."""

from __future__ import annotations

from pathlib import Path

from jobs.checkpoint import CheckpointError


def onnx_session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An ONNX Runtime session; a file that is not a valid ONNX model is a one-line error."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise CheckpointError(f"{path}: not a valid ONNX model: {str(e).splitlines()[0]}") from None
    except Exception as exc:  # unreadable protobuf and the like
        raise CheckpointError(f"{path}: not a valid ONNX model: {exc}") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
