#!/usr/bin/env bash
# The GPU checks (issue #22) in one run, on a machine with an NVIDIA GPU and a CUDA build of
# onnxruntime (onnxruntime-gpu) and torch. Run from the repository root:
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh
#
# 1. ranker-train --device cuda, one epoch on the simulator (default size), and a reference-size PLE
#    (experts 256->128, towers 64, embeddings 16: the widths of docs/performance.md's reference PLE on the
#    simulator's features);
# 2. torchrun --nproc_per_node 1: the NCCL process group and DistributedDataParallel path;
# 3. bench/engine_ladder.py for both models: CPU provider vs CUDA plain / IO binding / CUDA graphs at
#    1 / 100 / 500 / 1,000 / 4,096 candidates;
# 4. bench/rank_latency.py with RANKER_DEVICE=cuda, without and with CUDA graphs: bare ORT,
#    in-process and HTTP (`ranker-serve`, the bench client on the same machine) at 100 / 500 / 1,000.
# Every result JSON and the log go to $OUT. DEVICE=cpu IMPRESSIONS=20000 SECONDS_PER_SIZE=1 runs the
# same steps on a machine without a GPU (a dry run of this script).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
IMPRESSIONS=${IMPRESSIONS:-200000}
SECONDS_PER_SIZE=${SECONDS_PER_SIZE:-5}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
step() { echo; echo "== $(date -u +%T) $*"; }
work=$(mktemp -d)

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
nproc
$PY - <<'EOF'
import onnxruntime as ort, torch
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.version.cuda)
EOF

step "ranker-train --device $DEVICE: PLE, one epoch, $IMPRESSIONS simulated impressions"
timeout 200 /usr/bin/time -v $PY -m training.cli --data videolog --model ple --epochs 1 --impressions "$IMPRESSIONS" \
  --device "$DEVICE" --out models --features-out data/features 2>&1 | grep -v "^\s*\(Minor\|Major\|Volun\|Invol\|Swaps\|File\|Socket\|Signals\|Page\|Average\|Exit\)"

step "ranker-train --device $DEVICE: reference-size PLE, one epoch, 50,000 impressions"
timeout 100 /usr/bin/time -f "%e s wall, %M KiB peak" $PY -m training.cli --data videolog --model ple --name ple-ref --epochs 1 --impressions 50000 --device "$DEVICE" \
  --set 'model.expert_hidden=[256,128]' --set 'model.tower_hidden=[64]' --set model.embedding_dim=16 \
  --out models --features-out "$work/features-ref"

step "torchrun --nproc_per_node 1 (NCCL on CUDA, gloo on CPU)"
timeout 100 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m training.cli --data videolog --model ple --epochs 1 \
  --impressions 50000 --device "$DEVICE" --out "$work/ddp" --features-out "$work/features-ddp" 2>&1 \
  | grep -E "rank|parameters|epoch|samples/s|nccl|NCCL|Error|error|ddp/" || echo "torchrun failed"

for name in ple ple-ref; do
  step "engine ladder: $name"
  timeout 150 $PY -m bench.engine_ladder --name "$name" --repeat 200 && \
    cp bench/results/engine_ladder_*.json "$OUT/engine_ladder_$name.json" && rm -f bench/results/engine_ladder_cuda.json \
    || echo "engine ladder $name failed or timed out"
done

for graph in false true; do
  step "rank latency, RANKER_DEVICE=$DEVICE, RANKER_CUDA_GRAPH=$graph"
  RANKER_DEVICE=$DEVICE RANKER_CUDA_GRAPH=$graph timeout 150 $PY -m bench.rank_latency --seconds "$SECONDS_PER_SIZE" \
    --concurrency 8 && cp bench/results/rank_latency.json "$OUT/rank_latency_graph_$graph.json" \
    || echo "rank latency (graph $graph) failed or timed out"
done
git checkout -q -- bench/results 2>/dev/null || true  # the CPU figures committed here stay as they were
step "done"
ls -l "$OUT"
