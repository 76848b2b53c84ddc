"""The export job: a trained network as deployable artifacts, checked for parity.

From a training or transfer job's folder (its latest valid checkpoint) or a checkpoint file;
or, given several job folders, from the winner among them: the run with the best final test
accuracy, read from the results store where the job's spec names one, else
from the folders' outboxes. The artifacts:

- ``model.state_dict.pt``: the plain state dict;
- ``model.onnx``: ONNX (opset 18, dynamic batch, input ``images``, output ``logits``),
  checked with ``onnx.checker`` (full check);
- ``model.caffe2.onnx``: the same network for Caffe2, whose ONNX backend (torch 1.10.2) reads
  opsets up to 11 and runs split attention wrongly from opset 13 (its Softmax keeps the old
  axis rule): written by the TorchScript exporter at opset 11, dynamic batch;
- ``model.pt2``: the ``torch.export`` program with a dynamic batch;
- ``model.aoti.pt2``: its AOTInductor-compiled package (``--no-aoti`` skips it).

Parity: ONNX Runtime (CPU) against PyTorch eager on a batch of real test images, for each ONNX
file; the job fails (exit 4) if the logits differ by more than ``--tolerance`` (1e-4, fp32).
Each artifact is reported with its bytes and sha256; the sizes (parameters, fp32 weight bytes)
too.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from jobs import data
from jobs.checkpoint import CheckpointError, load_source, model_from, sha256_file
from jobs.data import test_batch
from jobs.device import resolve
from jobs.reporter import reporter_for
from jobs.runtimes import onnx_session
from jobs.stage import Ended, guarded, main_for
from records.outbox import read_outbox
from records.spec import EXIT_PARITY, ExportSpec

OPSET = 18
CAFFE2_OPSET = 11
MAX_BATCH = 4096


class ParityError(Ended):
    """ONNX Runtime and PyTorch disagree beyond the tolerance: exit 4 (``EXIT_PARITY``)."""

    code = EXIT_PARITY
    what = "parity check failed"


def load_trained(source: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a checkpoint (file) or of a job folder's latest valid checkpoint."""
    state = load_source(source)
    return model_from(state), state


def choose_winner(
    folders: list[Path], store: str | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """The finished run with the best final test accuracy (the first of equals), and the
    ranking it was chosen from: each candidate's job id, model, accuracy and its source."""
    ranking = []
    for folder in folders:
        outbox = folder / "outbox.jsonl"
        records = read_outbox(outbox) if outbox.is_file() else []
        finals = [r for r in records if r["kind"] == "final" and r.get("status") == "succeeded"]
        starts = [r for r in records if r["kind"] == "start"]
        if not finals or not starts:
            raise CheckpointError(f"{folder}: no finished training run here (see {outbox})")
        ranking.append({
            "folder": str(folder), "job_id": finals[-1]["job_id"],
            "model": starts[-1]["spec"]["model"], "test_acc": finals[-1].get("final_test_acc"),
            "from": "outbox",
        })  # fmt: skip
    from records.spec import reporting_store

    store = reporting_store(store)
    if store:
        from records.store import Store

        try:
            stored = Store(store, timeout=5).final_accuracies([c["job_id"] for c in ranking])
        except Exception as exc:  # the outboxes hold the same records
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"results store unreachable ({first}); ranking from the outboxes", flush=True)
        else:
            for candidate in ranking:
                if candidate["job_id"] in stored:
                    candidate.update(test_acc=stored[candidate["job_id"]], **{"from": "store"})
    scored = [c for c in ranking if c["test_acc"] is not None]
    if not scored:
        raise CheckpointError(f"no candidate has a test accuracy: {', '.join(map(str, folders))}")
    best = max(scored, key=lambda c: c["test_acc"])  # max keeps the first of equals
    return Path(best["folder"]), ranking


def _atomic(path: Path, write) -> Path:
    tmp = path.with_name("partial-" + path.name)  # keeps the suffix some writers insist on
    write(tmp)
    os.replace(tmp, path)
    return path


def export_all(
    model: torch.nn.Module, example: torch.Tensor, out: Path, aoti: str | None
) -> dict[str, Path]:
    """Write the artifacts; return name -> path. ``aoti``: the device the AOTInductor
    package is compiled for (``cpu``, ``cuda``), or None for none. The rest is traced on the
    CPU."""
    import onnx
    from torch.export import Dim

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["state_dict"] = _atomic(
        out / "model.state_dict.pt", lambda p: torch.save(model.state_dict(), p)
    )
    dynamic = {"x": {0: Dim("batch", min=1, max=MAX_BATCH)}}
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
    paths["torch_export"] = _atomic(out / "model.pt2", lambda p: torch.export.save(program, p))
    onnx_program = torch.onnx.export(
        program,
        input_names=["images"],
        output_names=["logits"],
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
    )
    paths["onnx"] = _atomic(out / "model.onnx", lambda p: onnx_program.save(str(p)))
    onnx.checker.check_model(str(paths["onnx"]), full_check=True)
    paths["onnx_opset11"] = _atomic(
        out / "model.caffe2.onnx", lambda p: onnx_opset11(model, example, p)
    )
    if aoti:
        from torch._inductor import aoti_compile_and_package

        if aoti != "cpu":  # compiled code is for one device: trace it there
            program = torch.export.export(
                copy.deepcopy(model).to(aoti), (example.to(aoti),), dynamic_shapes=dynamic
            )
        paths["aoti"] = _atomic(
            out / "model.aoti.pt2",
            lambda p: aoti_compile_and_package(program, package_path=str(p)),
        )
    return paths


def onnx_opset11(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """The network as ONNX opset 11 with a dynamic batch, by the TorchScript exporter (the
    dynamo exporter writes opset 18 only, and no converter brings that down to 11)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=CAFFE2_OPSET,
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip


def parity(model: torch.nn.Module, onnx_path: Path, images: torch.Tensor) -> dict[str, Any]:
    session = onnx_session(onnx_path)
    with torch.no_grad():
        expected = model(images)
    (logits,) = session.run(None, {"images": images.numpy()})
    logits = torch.from_numpy(logits)
    return {
        "images": int(images.shape[0]),
        "max_abs_diff": float((logits - expected).abs().max()),
        "top1_agreement": float((logits.argmax(1) == expected.argmax(1)).float().mean()),
    }


def run(spec: ExportSpec) -> dict[str, Any]:
    """Export the network of the spec's source (or the winner of its sources)."""
    out = Path(spec.out_dir)
    aoti = None if spec.no_aoti else resolve(spec.aoti_device).type  # cuda: the current GPU
    reporter = reporter_for(out, spec.job_id, spec.attempt, spec.store)
    if not spec.sources:
        raise CheckpointError("an export job needs a source: a job folder or a checkpoint")
    source, ranking = Path(spec.sources[0]), None
    if len(spec.sources) > 1:
        source, ranking = choose_winner([Path(s) for s in spec.sources], spec.store)
        for c in ranking:
            acc = "-" if c["test_acc"] is None else f"{100 * c['test_acc']:.2f}%"
            mark = "  <- exported" if Path(c["folder"]) == source else ""
            print(f"{c['model']:<24} {c['job_id']:<14} {acc:>8} ({c['from']}){mark}", flush=True)
    model, state = load_trained(source)
    dataset = spec.dataset or state["dataset"]
    images, _ = test_batch(dataset, spec.data_dir, spec.parity_images)
    start = time.perf_counter()
    reporter.report(
        "start",
        {
            "spec": {
                "stage": "export", "model": state["model_name"], "dataset": dataset,
                "source": str(source), "gpu_type": spec.gpu_type,
            },
            "world_size": 1,
            "resumed_from": [0, 0],
            **({"winner_of": ranking} if ranking else {}),
        },
    )  # fmt: skip
    paths = export_all(model, images[:2], out / "artifacts", aoti=aoti)
    meta = {
        "model_name": state["model_name"], "num_classes": state["num_classes"],
        "stem": state.get("stem") or "", "dataset": dataset, "aoti_device": aoti,
    }  # fmt: skip
    _atomic(out / "artifacts" / "model.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    params = sum(p.numel() for p in model.parameters())
    for kind, path in paths.items():
        reporter.report(
            "artifact",
            {"artifact": kind, "path": str(path.resolve()), "bytes": path.stat().st_size,
             "sha256": sha256_file(path)},
        )  # fmt: skip
    check = parity(model, paths["onnx"], images)
    check_opset11 = parity(model, paths["onnx_opset11"], images)
    summary = {
        "params": params,
        "fp32_bytes": params * 4,
        "artifacts": {k: p.stat().st_size for k, p in paths.items()},
        "parity": check,
        "parity_opset11": check_opset11,
        "tolerance": spec.tolerance,
        "export_time": time.perf_counter() - start,
    }
    print(
        f"exported {state['model_name']} ({params:,} parameters): "
        + ", ".join(f"{k} {p.stat().st_size / 1e6:.2f} MB" for k, p in paths.items())
        + f"; ONNX Runtime vs eager on {check['images']} test images: max |diff| "
        f"{check['max_abs_diff']:.2e} (opset 11: {check_opset11['max_abs_diff']:.2e}), top-1 "
        f"agreement {100 * check['top1_agreement']:.2f}%",
        flush=True,
    )
    for name, checked in (("model.onnx", check), ("model.caffe2.onnx", check_opset11)):
        if checked["max_abs_diff"] > spec.tolerance:
            reporter.report("final", {"status": "failed", "reason": "parity", "detail": summary})
            raise ParityError(
                f"ONNX Runtime ({name}) and PyTorch differ by {checked['max_abs_diff']:.3g} > "
                f"{spec.tolerance:g} on the logits"
            )
    reporter.report("final", {"status": "succeeded", **summary})
    return summary


def execute(spec: ExportSpec) -> tuple[int, int | None]:
    return guarded(spec, run, user_errors=(CheckpointError, data.DataError))


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("export", __doc__.splitlines()[0], execute, argv)


if __name__ == "__main__":
    sys.exit(main())
