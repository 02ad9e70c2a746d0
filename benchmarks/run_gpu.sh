#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the GPU tests, offline throughput on issue 20's workload (Qwen3-0.6B's
# shape and 151,936-token vocabulary, random weights, 256 sequences of 100..1024 tokens in and out) against
# transformers' continuous batching and `generate`, the kernel benchmarks, and offline throughput on the smaller
# 4k-vocabulary workload of the earlier runs, with the decode graphs drawing the tokens (the default) and with the
# tokens drawn eagerly after the graph (`engine_eager_sampling`, one after the other, not interleaved). Logs go to $1 (default: benchmarks/results/gpu). Each part has a time
# limit so that one hang cannot eat a lent machine's time; a part that fails does not stop the next.
#     bash benchmarks/run_gpu.sh [LOG_DIR]
# PARTS="kernels throughput" runs only those parts; NAME_LIMIT overrides a part's seconds. The default parts'
# limits add up to 540 s, most wanted first (the H100 run of 2026-11-26 took 280 s for the parts it had). Parts run
# only when PARTS names them: the sampler sweep, structured outputs (our mask kernel against xgrammar's), the fused
# MoE kernel (against a torch loop over experts and torch._grouped_mm) and pytest_benchmark (the kernels table's
# figures again, through pytest-benchmark); all but the last were recorded on both cards in November.
set -u -o pipefail
LOGS=${1:-benchmarks/results/gpu}
mkdir -p "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
PARTS=${PARTS:-gpu_tests real_vocab kernels throughput}
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
# Ours 3 times; transformers' continuous batching and padded generate (batches of 64) once each: the slow side.
part real_vocab "${REAL_VOCAB_LIMIT:-300}" $PY -m benchmarks.throughput --model qwen3-0.6b-shape --vocab 151936 \
    --device cuda --num-seqs 256 --input-len 100 1024 --output-len 100 1024 --repeats 3 --hf-repeats 1 \
    --transformers cb generate --json "$LOGS/real_vocab.json"
part kernels "${KERNELS_LIMIT:-75}" $PY -m benchmarks.kernels
part throughput "${THROUGHPUT_LIMIT:-75}" $PY -m benchmarks.throughput --model qwen3-0.6b-shape --device cuda \
    --repeats "${THROUGHPUT_REPEATS:-3}" --variants engine_eager_sampling --json "$LOGS/throughput.json" --profile
part sampling_sweep "${SAMPLING_SWEEP_LIMIT:-60}" $PY -m benchmarks.kernels --sampling-sweep
part structured "${STRUCTURED_LIMIT:-45}" $PY -m benchmarks.structured --steps 20 --rounds 2
part moe "${MOE_LIMIT:-45}" $PY -m benchmarks.kernels --moe
part pytest_benchmark "${PYTEST_BENCH_LIMIT:-100}" $PY -m pytest benchmarks -q -p no:cacheprovider --benchmark-only \
    --benchmark-max-time=0.3 --benchmark-columns=min,median,mean,rounds
