#!/usr/bin/env bash
# The deployment comparison on a GPU machine, in one go:
#   1. both ResNeSt-50 variants trained there on Fashion-MNIST (EPOCHS, default 2);
#   2. bench/deploy_latency.py with those weights on that machine's CPU: eager against ONNX
#      Runtime and INT8 ONNX Runtime at batch 1 (2 threads), accuracy over the test set;
#   3. the export and inference jobs on the GPU: eager, torch.compile, AOTInductor (compiled
#      for CUDA), ONNX Runtime with the providers it has, INT8, Caffe2; batch 1 and 256.
# Logs and records (outboxes, in records.tgz) go to OUT_DIR.
#
#   bench/gpu_deploy_run.sh FASHION_MNIST_DIR OUT_DIR
#   (PREFIX=resnest_tiny EPOCHS=1 MAX_STEPS=5 for a smoke run on the CPU)
set -euo pipefail
DATA=${1:?the Fashion-MNIST folder}
OUT_DIR=${2:?where the results go}
EPOCHS=${EPOCHS:-2}
PREFIX=${PREFIX:-resnest50}
PY=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # run from the repo root
mkdir -p "$OUT_DIR"
steps=()
[ -n "${MAX_STEPS:-}" ] && steps=(--max-steps "$MAX_STEPS")
log() { echo "== $(date +%T) $*"; }
records() { (cd "$WORK" && tar czf "$OUT_DIR/records.tgz" ./*/outbox.jsonl); }

$PY - <<'PY'
import onnxruntime as ort
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"torch {torch.__version__}, GPU {gpu}, onnxruntime {ort.__version__} "
      f"with {', '.join(ort.get_available_providers())}")
PY
for v in bottleneck basic; do
  [ -d "$WORK/$v/checkpoints" ] && { log "${PREFIX}_$v trained already in $WORK"; continue; }
  log "train ${PREFIX}_$v"
  $PY -m jobs.train --model "${PREFIX}_$v" --dataset fashion-mnist --data-dir "$DATA" \
    --epochs "$EPOCHS" --telemetry-interval 0 "${steps[@]}" --out "$WORK/$v" \
    >"$OUT_DIR/train-$v.log" 2>&1 || { tail -n 5 "$OUT_DIR/train-$v.log"; exit 1; }
  tail -n 3 "$OUT_DIR/train-$v.log"
done
records
log "CPU comparison (bench/deploy_latency.py)"
$PY bench/deploy_latency.py --models "${PREFIX}_bottleneck" "${PREFIX}_basic" \
  --weights-bottleneck "$WORK/bottleneck" --weights-basic "$WORK/basic" --data-dir "$DATA"
# INT8 was measured above; here the GPU runtimes, and ONNX Runtime with what it has.
for v in bottleneck basic; do
  log "export ${PREFIX}_$v"
  $PY -m jobs.export --from "$WORK/$v" --out "$WORK/$v-export" --dataset fashion-mnist \
    --data-dir "$DATA" || { log "export ${PREFIX}_$v failed"; continue; }
  log "infer ${PREFIX}_$v"
  $PY -m jobs.infer --from "$WORK/$v-export" --out "$WORK/$v-infer" --dataset fashion-mnist \
    --data-dir "$DATA" --batches 1 256 --warmup 5 --iters "${ITERS:-30}" --threads "$(nproc)" \
    --runtimes ${RUNTIMES:-eager aoti onnxruntime caffe2} || log "infer failed"
  records
done
log done
