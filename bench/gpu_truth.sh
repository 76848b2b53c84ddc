#!/usr/bin/env bash
# What the GPU was really doing, checked on a real GPU in one go (one GPU, under 8 minutes):
#   1. the GPU-architecture preflight (jobs/gpu_arch.py) on the device: the build's kernels
#      against the GPU's compute capability;
#   2. both ResNeSt-50 variants trained briefly on the synthetic set, as a sweep of the local
#      launcher, with telemetry, the time and energy to two targets, and a torch.profiler
#      trace of steps 20 to 25 of each;
#   3. every field of the telemetry printed from the store, and checked filled: the
#      hardware's settings in the provenance (power limits, ECC, MIG, persistence, PCIe,
#      NCCL, CPU), per epoch the throttled share, XIDs, TFLOP/s, GPU and CPU energy, and the
#      table's MFU, energy and cost to each target; the profile's artifact. A field that NVML
#      left empty makes the script exit 1, naming it.
#
#   bash bench/gpu_truth.sh [OUT]            (default OUT: ./gpu-truth; run from the repo root)
#   SMOKE=1 bash bench/gpu_truth.sh OUT      the script itself on a machine without a GPU: the
#                                            tiny networks on the CPU, NVML from the tests'
#                                            stand-in (tests/standin), not a real GPU's
set -euo pipefail
OUT=$(realpath -m "${1:-gpu-truth}")
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-6}
STEPS=${STEPS:-160}  # a cap: the synthetic set's 5,000 images are 157 steps of 32
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$OUT" && mkdir -p "$OUT"
log() { echo "== $(date +%T) $*"; }
cli() { $PY -c 'import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
began=$(date +%s)

if [ -n "${SMOKE:-}" ]; then
  prefix=resnest_tiny device=cpu gpu_name=V100 EPOCHS=2 STEPS=15
  export RESNEST_BENCH_TELEMETRY_SOURCE=nvml PYTHONPATH="$PWD/tests/standin:$PYTHONPATH"
  export NVML_STANDIN=${NVML_STANDIN:-'{"throttle": [0, 4], "power_limit_w": 250}'}
  log "SMOKE: tiny networks on the CPU, NVML from the stand-in in tests/standin (no GPU)"
else
  prefix=resnest50 device=cuda
  nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv
  full_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  gpu_name=$(grep -oE '[A-Z][0-9]{2,3}' <<<"$full_name" | head -1 || true)
  gpu_name=${gpu_name:-$full_name}  # a name without a model number: the whole of it
fi

log "GPU-architecture preflight"
$PY - "$device" <<'PY'
import sys

import torch

from jobs import gpu_arch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, build arch list "
      f"{' '.join(torch.cuda.get_arch_list()) or '(none)'}")
if sys.argv[1] == "cuda":
    device = torch.device("cuda", 0)
    capability = tuple(torch.cuda.get_device_capability(device))
    gpu_arch.check(device)  # raises, with the advice, where the build cannot run here
    print(f"{torch.cuda.get_device_name(device)}: compute capability "
          f"{capability[0]}.{capability[1]}, the build runs here")
else:
    print("no GPU: the preflight has nothing to check")
PY

cat > "$OUT/cluster.yaml" <<EOF
name: gpu-truth
results_dir: $OUT/results
launcher: {kind: local}
gpu_types:
  gpu:
    local: $device
    gpu_name: $gpu_name
    price_per_gpu_hour: 3.0
sweep:
  models: [${prefix}_bottleneck, ${prefix}_basic]
  datasets: [synthetic]
  gpu_types: [gpu]
  recipe: study
  overrides: {batch_size: 32}  # epochs of seconds on a GPU: a few telemetry samples each
  epochs: $EPOCHS
  max_steps: $STEPS
  profile: "20:25"
  target_accuracy: [0.2, 0.3]
EOF
log "train both variants (resnest-bench submit --wait)"
cli submit "$OUT/cluster.yaml" --wait 2>&1 | tail -n 4

log "the table"
cli table -c "$OUT/cluster.yaml" --format json > "$OUT/table.json"
cli table -c "$OUT/cluster.yaml"
log "per job: status, provenance, epochs, profile; and whether every field is filled"
$PY - "$OUT" "${SMOKE:-}" <<'PY'
import json
import re
import sys
from pathlib import Path

from sqlalchemy import select

from harness.config import load
from records.schema import artifacts, epochs, jobs, provenance
from records.store import open_store

out, smoke = Path(sys.argv[1]), bool(sys.argv[2])
config = load(out / "cluster.yaml")
store = open_store(config.store, config.results_dir)
missing = []
HARDWARE = ("gpu_name", "driver", "power_limit_w", "default_power_limit_w", "ecc", "mig",
            "persistence", "pcie_gen", "pcie_gen_max", "pcie_width", "pcie_width_max", "nccl",
            "cpu_model", "cpu_cores", "packages_sha256", "forward_flops", "math_mode",
            "cpu_energy")
EPOCH = ("epoch_time", "images_per_sec", "test_acc", "tflops", "gpu_util_mean",
         "power_mean_w", "energy_j", "throttled_pct", "throttle_reasons", "xids",
         "cpu_energy_j", "dram_energy_j")
MAY_BE_EMPTY = {"throttle_reasons", "xids", "cpu_energy_j", "dram_energy_j"}  # none seen
if smoke:  # no CUDA, so no NCCL; the stand-in has no energy counter of note
    MAY_BE_EMPTY |= {"nccl"}
with store.begin() as conn:
    trained = conn.execute(select(jobs.c.id, jobs.c.model).where(jobs.c.stage == "train")).all()
    for job_id, model in trained:
        print(f"-- {model} ({job_id})")
        prov = conn.execute(select(provenance).where(provenance.c.job_id == job_id)).mappings()
        prov = dict(prov.one())
        for name in HARDWARE:
            print(f"   {name}: {prov[name]}")
            if prov[name] is None and name not in MAY_BE_EMPTY:
                missing.append(f"{model} provenance.{name}")
        rows = conn.execute(select(epochs).where(epochs.c.job_id == job_id)
                            .order_by(epochs.c.epoch)).mappings().all()
        print("   epoch " + " ".join(f"{name:>16}" for name in EPOCH))
        for row in rows:
            print(f"   {row['epoch']:5d} " + " ".join(f"{str(row[n]):>16.16}" for n in EPOCH))
        for name in EPOCH:
            if all(row[name] is None for row in rows) and name not in MAY_BE_EMPTY:
                missing.append(f"{model} epochs.{name}")
        traces = conn.execute(select(artifacts).where(artifacts.c.job_id == job_id,
                                                      artifacts.c.kind == "profile")).all()
        for trace in traces:
            print(f"   profile: {trace.path} {trace.bytes} bytes sha256 {trace.sha256[:16]}...")
        if not traces:
            missing.append(f"{model} profile artifact")
table = json.loads((out / "table.json").read_text())
for row in table:
    wanted = ["tflops", "mfu_pct", "energy_per_epoch_j", "throttled"] + [
        k for k in row if k.startswith(("reached_", "energy_to_", "cost_to_"))]
    print(f"-- table {row.get('row')} {row.get('model')}: "
          + ", ".join(f"{k} {row.get(k)}" for k in wanted))
    for k in wanted:
        target = re.search(r"\d+pct", k)
        unreached = bool(target) and row.get(f"reached_{target[0]}") == 0
        if row.get(k) is None and not unreached:  # no energy to a target no run reached
            missing.append(f"table {row.get('model')} {k}")
if missing:
    print("EMPTY: " + "; ".join(missing))
    sys.exit(1)
print("every field filled")
PY
log "done in $(( $(date +%s) - began )) s; the sweep's files are in $OUT"
