#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the GPU tests, the kernel benchmarks (table and pytest-benchmark), offline
# throughput against transformers, structured outputs (our mask kernel against xgrammar's) and the fused MoE
# kernel (against a torch loop over experts and torch._grouped_mm). Logs go to $1
# (default: benchmarks/results/gpu). Each part has a time limit so that one hang cannot eat a lent machine's time; a
# part that fails does not stop the next.
#     bash benchmarks/run_gpu.sh [LOG_DIR]
# PARTS="kernels throughput" runs only those parts; NAME_LIMIT overrides a part's seconds. The default parts'
# limits add up to 600 s (the H100 run of 2026-11-26 took 280 s), most wanted first; pytest_benchmark (the
# kernels table's figures again, through pytest-benchmark) runs only when PARTS names it.
set -u -o pipefail
LOGS=${1:-benchmarks/results/gpu}
mkdir -p "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
PARTS=${PARTS:-gpu_tests kernels sampling_sweep throughput structured moe}
part() {  # part NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    [[ " $PARTS " == *" $name "* ]] || return 0
    echo "=== $name: $* (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__)"; } 2>&1 | tee "$LOGS/env.log"
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")      # pytest-xdist where installed, else serially
part gpu_tests "${GPU_TESTS_LIMIT:-90}" $PY -m pytest tests/gpu -q $XDIST -p no:cacheprovider -rfE
part kernels "${KERNELS_LIMIT:-120}" $PY -m benchmarks.kernels
part sampling_sweep "${SAMPLING_SWEEP_LIMIT:-60}" $PY -m benchmarks.kernels --sampling-sweep
part throughput "${THROUGHPUT_LIMIT:-240}" $PY -m benchmarks.throughput --model qwen3-0.6b-shape --device cuda \
    --repeats "${THROUGHPUT_REPEATS:-3}" --json "$LOGS/throughput.json" --ablations --profile
part structured "${STRUCTURED_LIMIT:-45}" $PY -m benchmarks.structured --steps 20 --rounds 2
part moe "${MOE_LIMIT:-45}" $PY -m benchmarks.kernels --moe
part pytest_benchmark "${PYTEST_BENCH_LIMIT:-100}" $PY -m pytest benchmarks -q -p no:cacheprovider --benchmark-only \
    --benchmark-max-time=0.3 --benchmark-columns=min,median,mean,rounds
