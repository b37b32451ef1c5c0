#!/usr/bin/env bash
# Issue 11's GPU measurements in two device calls of under 10 minutes each, most wanted first.
#
#   bash benchmarks/gpu_session.sh A    # MFU of vivit_fe_base, then section 2 (every model:
#                                       # fp32 / bf16 / channels-last) - about 6 minutes
#   bash benchmarks/gpu_session.sh B    # section 3 (SDPA vs naive attention), section 4
#                                       # (retrieval), then torch.compile rows - about 8 minutes
#
# Each step has its own time limit, so a slow step costs its limit and not the call; logs and
# the JSON lines go to $OUT (the device tool's result folder) or ./gpu_results. Section 4 needs
# FAISS there: carry a faiss-cpu wheel (python 3.12) in .whl/ as the device README describes;
# faiss-gpu-cu12 needs the CUDA 12 runtime wheels (cuBLAS alone is ~500 MB), more than a call can
# carry, so on the device FAISS runs on its CPU cores against the torch matmul top-k on the GPU.
#
# Dry run on a CPU machine (the same steps, tiny sizes):  DEVICE=cpu QUICK=1 bash ... A
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: gpu_session.sh A|B}
out=${OUT:-gpu_results}
mkdir -p "$out"
device=${DEVICE:-cuda}
quick=()
[[ -n "${QUICK:-}" ]] && quick=(--quick)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep its output, say how it ended
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: rc $rc in $((SECONDS - t0)) s (limit $limit s)"
    tail -n 25 "$out/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$out/machine.txt"

case $part in
A)
    # the issue's explicit ask: MFU of vivit_fe_base training (bf16 autocast and fp32)
    step mfu_vivit 150 python3 benchmarks/bench_training.py --device "$device" "${quick[@]}" \
        --names "$([[ -n ${QUICK:-} ]] && echo vivit_fe_tiny || echo vivit_fe_base)" \
        --variants fp32,bf16
    # section 2: every model and its torchvision reference, without compile (part B)
    step training 270 python3 benchmarks/bench_training.py --device "$device" "${quick[@]}" \
        --variants fp32,bf16,channels_last
    ;;
B)
    step attention 120 python3 benchmarks/bench_attention.py --device "$device" "${quick[@]}" \
        --dtype "$([[ $device == cuda ]] && echo bf16 || echo fp32)"
    if [[ -n ${QUICK:-} ]]; then
        step retrieval 150 python3 benchmarks/bench_retrieval.py --quick
    else
        step retrieval_100k 90 python3 benchmarks/bench_retrieval.py --gallery 100000 \
            --device "$device"
        step retrieval_1m 150 python3 benchmarks/bench_retrieval.py --gallery 1000000 \
            --device "$device"
    fi
    step compile 150 python3 benchmarks/bench_training.py --device "$device" "${quick[@]}" \
        --variants compile --names "$([[ -n ${QUICK:-} ]] && echo vivit_fe_tiny || echo r3d18,vivit_fe_base)"
    ;;
*)
    echo "unknown part $part (A or B)" >&2
    exit 2
    ;;
esac
