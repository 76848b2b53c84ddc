"""The ``caffe2`` runtime's process: the export's opset-11 ONNX file in Caffe2, in an
interpreter of its own (the runtime itself is ``jobs.runtimes.Caffe2``).

Caffe2 exists only in torch 1.10.2 and earlier, for Python 3.9 at the latest, so it cannot run
in the job's interpreter. ``scripts/caffe2-env.sh up`` builds one; the job starts it once as a
long-lived child (``jobs/caffe2_worker.py``), which prepares the model and then takes batches
through a pipe. Latencies are measured inside the child around Caffe2's own ``run``, so neither
the process start nor the pipe is part of them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

WORKER = Path(__file__).with_name("caffe2_worker.py")
ENV_VAR = "RESNEST_BENCH_CAFFE2_PYTHON"
HOW = "scripts/caffe2-env.sh up builds it (Python 3.9, torch 1.10.2; 2.0 GB)"


def default_python() -> Path:
    """Where ``scripts/caffe2-env.sh`` puts the interpreter, unless the variable names one."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "resnest-bench" / "caffe2-torch1.10.2-py39" / "bin" / "python"


class Caffe2Error(Exception):
    """Caffe2 cannot run this model here; the message says why (and how to fix it)."""


class Caffe2Process:
    """A Caffe2 child process holding one prepared model."""

    def __init__(
        self,
        model: Path,
        log: Path,
        python: Path | None = None,
        threads: int = 1,
        eager: bool = False,
    ) -> None:
        """Start the child on ``model``; its stderr (Caffe2's own messages) goes to ``log``.
        With ``eager``, ``model`` is the JSON spec of the network that the child runs in its
        own PyTorch, eager (``jobs/caffe2_worker.py``)."""
        python = python or default_python()
        if not python.exists():
            raise Caffe2Error(f"no Caffe2 interpreter at {python}: {HOW}, or set {ENV_VAR}")
        if not model.is_file():
            raise Caffe2Error(f"no {model.name} in {model.parent} (an export from before it "
                              "was written: export again)")  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)  # the child must not see this interpreter's packages
        self.stderr = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr, "wb") as log:
            self.proc = subprocess.Popen(
                [str(python), "-I", str(WORKER), *(["--eager"] if eager else []), str(model),
                 "--threads", str(threads)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
            )  # fmt: skip
        ready = self._read_header()
        if "error" in ready:
            self.close()
            raise Caffe2Error(f"Caffe2 could not prepare {model.name}: {ready['error']}")
        self.versions: dict[str, str] = ready["versions"]
        self.prepare_s: float = ready["prepare_s"]

    def _read_header(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            tail = [s for s in self.stderr.read_text(errors="replace").splitlines() if s.strip()]
            raise Caffe2Error(
                f"the Caffe2 process ended (exit {code})"
                + (f": {tail[-1]}" if tail else "")
                + f" (log: {self.stderr})"
            )
        return json.loads(line)

    def _send(self, header: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
        assert self.proc.stdin is not None
        x = np.ascontiguousarray(x, dtype=np.float32)
        try:
            self.proc.stdin.write(json.dumps({**header, "shape": list(x.shape)}).encode() + b"\n")
            self.proc.stdin.write(x.tobytes())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the header read below says how the process ended
        reply = self._read_header()
        if "error" in reply:
            raise Caffe2Error(f"Caffe2: {reply['error']}")
        return reply

    def __call__(self, x: np.ndarray) -> np.ndarray:
        reply = self._send({"op": "run"}, x)
        assert self.proc.stdout is not None
        count = int(np.prod(reply["shape"]))
        data = self.proc.stdout.read(4 * count)
        return np.frombuffer(data, dtype=np.float32).reshape(reply["shape"]).copy()

    def times(self, x: np.ndarray, warmup: int, iters: int) -> list[float]:
        """Seconds per ``run`` of the prepared net, measured in the child."""
        return self._send({"op": "time", "warmup": warmup, "iters": iters}, x)["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
