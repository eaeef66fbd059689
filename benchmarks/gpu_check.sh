#!/usr/bin/env bash
# The GPU checks in one call, for a machine with a CUDA GPU and torch, triton and numba
# installed (pytest and hypothesis too, or carried as wheels in .whl/): the Triton
# kernels' tests and every algorithm-parametrised test on CUDA, then bench_gpu.py.
# Logs and benchmarks/gpu.md land in $OUT (default: gpu-results/).
#
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -x -p no:cacheprovider tests/library/test_triton_kernels.py \
    tests/library/test_special_inputs.py -k "triton or device" 2>&1 | tee "$OUT/tests.log"
python3 benchmarks/bench_gpu.py --output "$OUT/gpu.md" 2>&1 | tee "$OUT/bench.log"
# Fused sparse attention against torch's flash attention (about 4 min), then a small
# language model trained with softmax and with sparsemax attention (about 3 min): each cut
# off by timeout should it hang, and neither's failure stops the other.
timeout 300 python3 benchmarks/bench_attention_gpu.py --output "$OUT/attention_gpu.md" 2>&1 \
    | tee "$OUT/attention_gpu.log"
timeout 240 python3 benchmarks/train_attention_gpu.py --output "$OUT/attention_training.md" \
    2>&1 | tee "$OUT/attention_training.log"
