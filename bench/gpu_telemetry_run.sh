#!/usr/bin/env bash
# One short GPU session for the telemetry figures: the sampler's overhead, and both ResNeSt-50
# variants trained for a few epochs of the synthetic set with telemetry at 5 Hz, on whatever
# NVIDIA GPU the machine has. Outboxes and outputs go to $OUT (default ./gpu-run); load them
# with `resnest-bench ingest $OUT --store URL`.
#
#   bash bench/gpu_telemetry_run.sh      (wheels for missing packages may be put in ./wheels)
set -euo pipefail
OUT=${OUT:-gpu-run}
mkdir -p "$OUT"
python -c "import pynvml, psutil" 2>/dev/null || pip install -q --no-index --no-deps "${WHEELS:-wheels}"/*.whl
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv | tee "$OUT/gpu.txt"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oE '[A-Z][0-9]{2,3}' | head -1)
for interval in 1.0 0.1; do
    python bench/telemetry_overhead.py --batch 256 --steps 40 --pairs 12 --interval "$interval" \
        | tee "$OUT/overhead-$interval.txt"
done
for model in resnest50_bottleneck resnest50_basic; do
    python -m jobs.train --model "$model" --dataset synthetic --epochs 5 \
        --telemetry-interval 0.2 --expect-gpu "$gpu" --out "$OUT/jobs/$model" 2>&1 \
        | grep -v "^\s*$" | tail -7
done
# A run whose GPU is not the one asked for: its provenance is flagged.
python -m jobs.train --model resnest_tiny_basic --dataset synthetic --epochs 1 \
    --expect-gpu V100 --out "$OUT/jobs/mismatch" 2>&1 | tail -2
