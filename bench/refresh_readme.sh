#!/usr/bin/env bash
# Re-run the CPU benches whose figures the README quotes, each writing its result to
# bench/results/NAME.json, then render the README from them (bench/render_readme.py).
#
#   bench/refresh_readme.sh [--quick] [--only "NAME ..."] [--out DIR]
#
# Names: quickstart_time profile_overhead train_throughput time_to_accuracy harness_scale
# deploy_latency slurm_submit multinode_overhead (all by default).
#
# --quick   a first look: every bench at a small size (1 to 3 repeats, tiny sweeps), written
#           under --out DIR (default: a new temporary folder) together with a README rendered
#           from them; the repository's results and README are left as they are. Without
#           deploy_latency (which trains two ResNeSt-50s) unless --only names it.
#
# What each needs: harness_scale measures PostgreSQL too when RESNEST_BENCH_TEST_PG names one
# (scripts/pg-local.sh up); deploy_latency runs Caffe2 where scripts/caffe2-env.sh made its
# interpreter; slurm_submit needs the single-node SLURM of scripts/slurm-local.sh up and
# multinode_overhead the two-node one (up --nodes 2). A bench whose cluster is not up is
# skipped with a line saying so, and its block keeps its stored result and date.
#
# How long: the README says, from the durations the stored results record (its
# refresh_readme block).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
quick=0
only=""
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --only) only="$2"; shift ;;
        --out) out="$2"; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "refresh_readme: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
all="quickstart_time profile_overhead train_throughput time_to_accuracy harness_scale deploy_latency slurm_submit multinode_overhead"
for name in $only; do
    case " $all " in *" $name "*) ;; *) echo "refresh_readme: no bench $name (known: $all)" >&2; exit 2 ;; esac
done
if [ -z "$only" ]; then
    only=$all
    [ "$quick" = 1 ] && only=${all/deploy_latency /}
fi
results=bench/results
readme=README.md
if [ "$quick" = 1 ]; then
    out=${out:-$(mktemp -d -t resnest-bench-refresh-XXXXXX)}
    mkdir -p "$out/results"
    cp bench/results/*.json "$out/results/"
    cp README.md "$out/README.md"
    results=$out/results
    readme=$out/README.md
fi
slurm_nodes() { sinfo -h -N -o %n 2>/dev/null | sort -u | wc -l; }  # 0: no SLURM up
two_nodes() { SLURM_CONF=/etc/slurm-nodes/slurm.conf slurm_nodes; }

run() {  # NAME ARGS...: the bench, its result to $results/NAME.json
    local name=$1; shift
    echo "== $name ($(date -u +%H:%M:%S))"
    "$PY" "bench/$name.py" "$@" --out "$results/$name.json"
}

for name in $only; do
    case "$name" in
    quickstart_time)
        if [ "$quick" = 1 ]; then run quickstart_time --repeats 1; else run quickstart_time --repeats 3; fi ;;
    profile_overhead)
        if [ "$quick" = 1 ]; then run profile_overhead --pairs 3 --steps 5
        else run profile_overhead --pairs 9 --steps 20; fi ;;
    train_throughput)
        models=(--models resnest_tiny_basic resnest_tiny_bottleneck --pipelines fast --precisions fp32)
        if [ "$quick" = 1 ]; then run train_throughput "${models[@]}" --rounds 2 --blocks 2 --steps 1
        else run train_throughput "${models[@]}" --rounds 5 --blocks 5 --steps 2; fi ;;
    time_to_accuracy)
        if [ "$quick" = 1 ]; then
            run time_to_accuracy --models resnest_tiny_basic --study-epochs 1 --max-steps 10 \
                --batch-size 128 --fast-epochs 1 --fast-max-steps 10 --fast-batch-size 128 \
                --targets 0.3
        else
            run time_to_accuracy --models resnest_tiny_basic resnest_tiny_bottleneck \
                --study-epochs 3 --max-steps 90 --batch-size 128 --fast-epochs 3 \
                --fast-max-steps 60 --fast-batch-size 128 --targets 0.6 0.7 --repeats 3
        fi ;;
    harness_scale)
        if [ "$quick" = 1 ]; then
            run harness_scale --plan-jobs 10000 --table-jobs 1000 --report-jobs 100 \
                --status-jobs 1000 --repeats 1
        else run harness_scale --repeats 3; fi ;;
    deploy_latency)  # Caffe2's interpreter: scripts/caffe2-env.sh's, where it made one
        if [ "$quick" = 1 ]; then run deploy_latency --threads 2 --train-steps 20 --iters 5
        else run deploy_latency --threads 2; fi ;;
    slurm_submit)
        if [ "$(slurm_nodes)" = 0 ]; then
            echo "== slurm_submit skipped: no single-node SLURM (scripts/slurm-local.sh up)"
        elif [ "$quick" = 1 ]; then run slurm_submit --seeds 10 --lab-seeds 50 --repeats 1
        else run slurm_submit --repeats 3; fi ;;
    multinode_overhead)
        if [ "$(two_nodes)" -lt 2 ]; then
            echo "== multinode_overhead skipped: no two-node SLURM (scripts/slurm-local.sh up --nodes 2)"
        elif [ "$quick" = 1 ]; then run multinode_overhead --repeats 1
        else run multinode_overhead --repeats 5; fi ;;
    esac
done
"$PY" bench/render_readme.py --readme "$readme" --results "$results"
[ "$quick" = 1 ] && echo "quick look: $readme, rendered from $results (the repository's README is unchanged)"
exit 0
