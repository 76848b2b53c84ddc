"""Caffe2's side of the ``caffe2`` runtime: an ONNX file prepared once, batches through a pipe.

Runs in the Caffe2 interpreter (Python 3.9, torch 1.10.2: ``scripts/caffe2-env.sh``), not in the
project's, so it keeps to Python 3.9 and imports nothing of the project but, for eager, the
network (``resnest`` and ``jobs.checkpoint.model_from``, which keep to 3.9 for this).
Started by ``jobs.caffe2_runtime`` as ``python -I caffe2_worker.py MODEL.onnx --threads N``,
or, for PyTorch eager of the study's era (torch 1.10.2) on the export's state dict,
``python -I caffe2_worker.py --eager SPEC.json --threads N``, where SPEC names the project's
folder, the network and its weights.

Protocol (stdout carries nothing else; Caffe2's own output goes to stderr): one JSON line
``{"ready": true, "versions": {...}, "prepare_s": ...}`` or ``{"error": "..."}`` once the model
is prepared; then per request a JSON line, followed for ``run`` and ``time`` by the batch's
float32 bytes (C order):

- ``{"op": "run", "shape": [n, c, h, w]}`` -> ``{"shape": [n, k]}`` and the logits' float32 bytes;
- ``{"op": "time", "shape": [...], "warmup": w, "iters": i}`` -> ``{"times": [seconds, ...]}``,
  each the wall time of one ``run`` of the prepared net, measured here so that the pipe is not
  part of the latency;
- ``{"op": "quit"}`` -> exit 0.

The file is adjusted for the ONNX backend of torch 1.10.2 before it is prepared (each of these
made a current exporter's file fail there):

- ``onnx.optimizer`` left onnx in 1.9: the backend is pointed at ``onnxoptimizer``, which still
  has the ``split_init``/``split_predict`` passes (without them the whole graph lands in the init
  net: "Source for input N is unknown");
- initializers are made graph inputs as well, which that backend expects;
- node names are cleared (the backend demands a kernel size of any op whose name contains
  "Pool", a named ``GlobalAveragePool`` included);
- opset 11's ``Pad`` takes its pads as an input where Caffe2 reads the attribute: constant pads
  are moved back into the attribute, and the model is then prepared without the ONNX checker,
  which would reject the old form.
"""

import json
import os
import sys
import time
import traceback


def fold(node, values):
    """The value of a node whose inputs are all known (numpy), for the ops that build a Pad's
    pads in the TorchScript exporter's files; None for anything else."""
    import numpy as np
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x = [values[i] if i else None for i in node.input]
    op = node.op_type
    if op == "Constant":
        return numpy_helper.to_array(attrs["value"])
    if op == "ConstantOfShape":
        fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, "f4")
        return np.full(tuple(int(d) for d in x[0]), fill.reshape(-1)[0], dtype=fill.dtype)
    if op == "Concat":
        return np.concatenate(x, axis=attrs["axis"])
    if op == "Reshape":
        return x[0].reshape(tuple(int(d) for d in x[1]))
    if op == "Transpose":
        return np.transpose(x[0], attrs.get("perm"))
    if op == "Cast":
        try:
            dtype = helper.tensor_dtype_to_np_dtype(attrs["to"])
        except AttributeError:  # onnx before 1.13 (the Caffe2 interpreter has 1.10)
            from onnx import mapping

            dtype = mapping.TENSOR_TYPE_TO_NP_TYPE[attrs["to"]]
        return x[0].astype(dtype)
    if op in ("Unsqueeze", "Squeeze"):
        axes = [int(a) for a in attrs["axes"]] if "axes" in attrs else [int(a) for a in x[1]]
        out = x[0]
        for a in sorted(axes) if op == "Unsqueeze" else sorted(axes, reverse=True):
            out = np.expand_dims(out, a) if op == "Unsqueeze" else np.squeeze(out, a)
        return out
    if op == "Slice":
        starts, ends = x[1], x[2]
        axes = x[3] if len(x) > 3 and x[3] is not None else range(len(starts))
        steps = x[4] if len(x) > 4 and x[4] is not None else [1] * len(starts)
        index = [slice(None)] * x[0].ndim
        for a, b, e, st in zip(axes, starts, ends, steps):  # noqa: B905 (Python 3.9)
            index[int(a)] = slice(int(b), int(e), int(st))
        return x[0][tuple(index)]
    return None


def adjust(model):
    """The model, changed as the module's docstring says; and whether a Pad was rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inputs = {i.name for i in graph.input}
    for init in graph.initializer:
        if init.name not in inputs:
            graph.input.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    for node in graph.node:
        node.name = ""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rewritten = False
    for node in graph.node:  # in topological order, as ONNX keeps them
        if all(not i or i in values for i in node.input):
            value = fold(node, values)
            if value is not None:
                values[node.output[0]] = value
        if node.op_type != "Pad" or len(node.input) < 2:
            continue
        if node.input[1] not in values:
            raise ValueError("a Pad whose pads are computed at run time cannot run in Caffe2")
        pads = [int(p) for p in np.asarray(values[node.input[1]]).reshape(-1)]
        fill = 0.0
        if len(node.input) > 2 and node.input[2]:
            fill = float(np.asarray(values[node.input[2]]).reshape(-1)[0])
        kept = [a for a in node.attribute if a.name == "mode"]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend(
            [helper.make_attribute("pads", pads), helper.make_attribute("value", fill)]
        )
        del node.input[1:]
        rewritten = True
    if rewritten:  # the nodes that only computed pads now feed nothing: drop them
        while True:
            used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
            dead = [n for n in graph.node if not any(o in used for o in n.output)]
            if not dead:
                break
            for n in dead:
                graph.node.remove(n)
    return model, rewritten


def prepare(path, threads):
    import onnx
    import onnxoptimizer
    import torch
    from caffe2.python import workspace

    onnx.optimizer = onnxoptimizer
    import caffe2.python.onnx.backend as backend

    torch.set_num_threads(threads)
    workspace.GlobalInit(
        ["caffe2", f"--caffe2_omp_num_threads={threads}", f"--caffe2_mkl_num_threads={threads}"]
    )
    model, rewritten = adjust(onnx.load(path))
    rep = backend.prepare(model, device="CPU", no_check_UNSAFE=rewritten)
    versions = {
        "caffe2": torch.__version__,  # Caffe2 ships inside torch, with its version
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "python": sys.version.split()[0],
    }
    return rep, versions


class EagerOfItsEra:
    """The network in this interpreter's PyTorch (1.10.2), eager, on the export's state dict:
    the study's other runtime as it was when Caffe2 was current. ``run`` answers as Caffe2's
    prepared backend does (a list of outputs)."""

    def __init__(self, spec_path, threads):
        import torch

        with open(spec_path, encoding="utf-8") as f:
            spec = json.load(f)
        sys.path.insert(0, spec["project"])
        from jobs.checkpoint import model_from  # the one way a network is rebuilt; 3.9-safe

        torch.set_num_threads(threads)
        weights = torch.load(spec["weights"], map_location="cpu")
        self.model, self.torch = model_from(spec, weights), torch

    def run(self, x):
        with self.torch.no_grad():
            return [self.model(self.torch.from_numpy(x.copy())).numpy()]


def prepare_eager(spec_path, threads):
    import torch

    versions = {"torch": torch.__version__, "python": sys.version.split()[0]}
    return EagerOfItsEra(spec_path, threads), versions


def first_line(exc):
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def main(argv):
    eager = argv[0] == "--eager"
    path = argv[1] if eager else argv[0]
    threads = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 1
    # The protocol owns the real stdout; anything else written to fd 1 (Caffe2's C++ included)
    # goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer

    def send(header, payload=b""):
        out.write(json.dumps(header).encode() + b"\n" + payload)
        out.flush()

    import numpy as np

    start = time.perf_counter()
    try:
        rep, versions = prepare_eager(path, threads) if eager else prepare(path, threads)
    except Exception as exc:
        traceback.print_exc()
        send({"error": f"{type(exc).__name__}: {first_line(exc)}"})
        return 1
    send({"ready": True, "versions": versions, "prepare_s": time.perf_counter() - start})
    while True:
        line = inp.readline()
        if not line:
            return 0
        request = json.loads(line)
        if request["op"] == "quit":
            return 0
        shape = request["shape"]
        count = int(np.prod(shape))
        x = np.frombuffer(inp.read(4 * count), dtype=np.float32).reshape(shape)
        try:
            if request["op"] == "run":
                logits = np.ascontiguousarray(np.asarray(rep.run(x)[0]), dtype=np.float32)
                send({"shape": list(logits.shape)}, logits.tobytes())
            elif request["op"] == "time":
                for _ in range(request["warmup"]):
                    rep.run(x)
                times = []
                for _ in range(request["iters"]):
                    begin = time.perf_counter()
                    rep.run(x)
                    times.append(time.perf_counter() - begin)
                send({"times": times})
            else:
                send({"error": f"unknown op {request['op']!r}"})
        except Exception as exc:  # this batch failed; the model stays prepared
            traceback.print_exc()
            send({"error": f"{type(exc).__name__}: {first_line(exc)}"})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
