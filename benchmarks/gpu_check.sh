#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU and torch, triton and numba installed
# (pytest and hypothesis too, or carried as wheels in .whl/), in parts that each fit
# one device call of 10 minutes:
#
#     bash benchmarks/gpu_check.sh projection   # the projection's Triton kernels: their
#                                               # tests on CUDA, then bench_gpu.py
#     bash benchmarks/gpu_check.sh attention    # the fused attention: its tests on CUDA,
#                                               # bench_attention_gpu.py, train_attention_gpu.py
#     bash benchmarks/gpu_check.sh sanitize     # both kernels on small odd shapes under
#                                               # compute-sanitizer's memory checker
#     bash benchmarks/gpu_check.sh first        # for a session with one call to spare:
#                                               # every GPU test of both issues, then both
#                                               # benchmarks cut short
#     bash benchmarks/gpu_check.sh tune         # tune_gpu.py: the kernels' tile sizes swept
#                                               # against softmax and flash SDPA
#     bash benchmarks/gpu_check.sh fuzz         # tests/fuzz_kernels.py: random inputs for the
#                                               # compiled kernels against the float64 torch code
#
# Each part fits one call; no part, or another word, prints this and exits 2. Logs and the
# benchmarks' Markdown land in $OUT (default: gpu-results/); each step is cut off by
# timeout should it hang, no step's failure stops the next, and the tests print each
# result as it comes (a step cut off still says which tests passed and failed).
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-}
case $PART in
    first | projection | attention | sanitize | tune | fuzz) ;;
    *)
        sed -n '2,18p' "$0" >&2
        exit 2
        ;;
esac
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
rc=0  # 1 if any step failed (or was cut off): the part's exit status
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
# The tests' time on a fresh machine goes mostly to compiling kernels, on the CPU: four
# workers compile four at a time (Triton's cache on disk is shared, written atomically).
WORKERS=()
python3 -c "import xdist" 2> /dev/null && WORKERS=(-n 4)
# a hung kernel fails its test rather than the step (pytest-timeout, where installed; its
# thread method, since a signal's handler would wait for the blocked CUDA call to return)
python3 -c "import pytest_timeout" 2> /dev/null && WORKERS+=(--timeout=90 --timeout-method=thread)
if [[ $PART == first ]]; then
    timeout 175 python3 -m pytest -v ${WORKERS[@]+"${WORKERS[@]}"} -p no:cacheprovider tests/library/test_triton_kernels.py \
        tests/library/test_triton_transform.py tests/library/test_cuda_routes.py \
        2>&1 | tee "$OUT/tests.log" || rc=1
    timeout 160 python3 -m pytest -v ${WORKERS[@]+"${WORKERS[@]}"} -p no:cacheprovider tests/library/test_fused_attention.py \
        2>&1 | tee "$OUT/attention_tests.log" || rc=1
    timeout 110 python3 benchmarks/bench_gpu.py --repeats 10 --output "$OUT/gpu.md" 2>&1 \
        | tee "$OUT/bench.log" || rc=1
    timeout 110 python3 benchmarks/bench_attention_gpu.py --budget-s 90 --repeats 5 \
        --output "$OUT/attention_gpu.md" 2>&1 | tee "$OUT/attention_gpu.log" || rc=1
fi
if [[ $PART == tune ]]; then
    timeout 560 python3 benchmarks/tune_gpu.py --budget-s 520 --output "$OUT/tune_gpu.md" 2>&1 \
        | tee "$OUT/tune.log" || rc=1
fi
if [[ $PART == fuzz ]]; then
    timeout 560 python3 tests/fuzz_kernels.py --seconds 480 --attention 2>&1 \
        | tee "$OUT/fuzz_full.log" | tail -n 60 | tee "$OUT/fuzz.log" || rc=1
fi
if [[ $PART == sanitize ]]; then
    # torch's caching allocator packs small tensors into 2 MiB blocks, inside which an
    # overrun is valid memory to the sanitizer: every tensor gets its own allocation
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 400 compute-sanitizer --tool memcheck \
        --error-exitcode 1 python3 benchmarks/sanitize_gpu.py 2>&1 \
        | tee "$OUT/sanitizer_full.log" | tail -n 40 | tee "$OUT/sanitizer.log" || rc=1
fi
if [[ $PART == projection ]]; then
    timeout 240 python3 -m pytest -v ${WORKERS[@]+"${WORKERS[@]}"} -p no:cacheprovider tests/library/test_triton_kernels.py \
        tests/library/test_triton_transform.py tests/library/test_special_inputs.py \
        -k "triton or device or transform" 2>&1 | tee "$OUT/tests.log" || rc=1
    timeout 300 python3 benchmarks/bench_gpu.py --output "$OUT/gpu.md" 2>&1 | tee "$OUT/bench.log" || rc=1
    timeout 30 python3 benchmarks/launches_gpu.py --output "$OUT/launches.md" || rc=1
fi
if [[ $PART == attention ]]; then
    # (the CPU cases skip themselves where CUDA is present; Triton's compile cache, warmed
    # by the tests, serves the benchmarks)
    timeout 180 python3 -m pytest -v ${WORKERS[@]+"${WORKERS[@]}"} -p no:cacheprovider tests/library/test_fused_attention.py \
        2>&1 | tee "$OUT/attention_tests.log" || rc=1
    timeout 220 python3 benchmarks/bench_attention_gpu.py --budget-s 180 \
        --output "$OUT/attention_gpu.md" 2>&1 | tee "$OUT/attention_gpu.log" || rc=1
    timeout 160 python3 benchmarks/train_attention_gpu.py --budget-s 120 \
        --output "$OUT/attention_training.md" 2>&1 | tee "$OUT/attention_training.log" || rc=1
fi
exit $rc
