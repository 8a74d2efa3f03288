#!/usr/bin/env bash
# The CUDA checks in one go, on an NVIDIA machine with python3, torch, torchvision, onnx and numpy but no package
# index: install the onnxruntime-gpu wheel WHEEL (checked against SHA when given) and onnx-graphsurgeon from .whl/
# into /tmp/site, run the CUDA tests, write the CUDA tables (tools/bench_cuda.py) and prune one model with the
# CLI on CUDA with a benchmark. Everything it writes goes under $OUT (default ./cuda-out).
# Usage: WHEEL=path/to/onnxruntime_gpu-...whl [SHA=<sha256>] bash tools/cuda_tables.sh
set -uo pipefail  # MODELS, FP16, RUNS, TABLE_S, DEADLINE_S, CLI=0|1 change what runs
OUT=${OUT:-$PWD/cuda-out}
mkdir -p "$OUT"
started=$(date +%s)
if [ -n "${SHA:-}" ]; then echo "$SHA  $WHEEL" | sha256sum -c - || exit 1; fi
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEEL" .whl/onnx_graphsurgeon-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 ONNXPRUNE_CACHE_DIR=/tmp/onnxprune-cache
python3 -c 'import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())'
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "== set-up took $(( $(date +%s) - started )) s"
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/runtime/test_cuda.py tests/runtime/test_session.py \
  tests/core/test_node_order.py 2>&1 | tee "$OUT/pytest.log" | tail -8
echo "== tests done at $(( $(date +%s) - started )) s"
timeout "${TABLE_S:-330}" python3 tools/bench_cuda.py --out "$OUT" --exports /tmp/exports --deadline-s "${DEADLINE_S:-200}" \
  --models "${MODELS-resnet50,mobilenet_v2,efficientnet_b0,densenet121}" --fp16 "${FP16:-resnet50}" \
  --runs "${RUNS:-100}" 2>"$OUT/bench.log"
echo "== tables done at $(( $(date +%s) - started )) s"
[ "${CLI:-1}" = 1 ] && timeout 90 python3 -m onnxprune prune /tmp/exports/mobilenet_v2.onnx -o /tmp/mnv2_pruned.onnx --ratio 0.3 \
  --providers cuda --bench --batches 1,32 --report "$OUT/cli_report.json" 2>&1 | tail -25 | tee "$OUT/cli.log"
echo "== all done at $(( $(date +%s) - started )) s"
