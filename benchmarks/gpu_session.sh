#!/usr/bin/env bash
# Issues 6 and 11's GPU checks, sized to the device budget: 15 minutes a task, the machine's
# start (1-2 minutes) and every idle second included. Most wanted first, inside a deadline:
#
#   bash benchmarks/gpu_session.sh              # every step in order while BUDGET_S (390) lasts
#   bash benchmarks/gpu_session.sh STEP ...     # only these steps (the ones a first call left)
#
# A step starts only if its whole limit fits in what is left of BUDGET_S, so a call ends inside
# it. The last line names the steps left and the command that runs them. The plan for one drawn
# task: `run` this with timeout_s 450 (wheel install, transfers); at once, while the machine is
# still warm (30 s), `run` the printed command with BUDGET_S set to status's budget_left_s minus
# 90; then `give_back`.
#
# Steps (limit in seconds) and what each settles:
#   mfu             90  issue 11: MFU of vivit_fe_base training (fp32, bf16 autocast)
#   gpu_tests      180  issue 6: `pytest -m gpu`: both recipes in bf16 on one GPU with a resume,
#                       FSDP2 + bf16 on one GPU (BatchNorm towers too), bench features on GPU vs
#                       CPU, GPU transforms, torch top-k retrieval
#   training       180  section 2: the other models and torchvision's references, fp32/bf16/channels-last
#   attention       45  section 3: SDPA vs naive attention (bf16)
#   retrieval_100k  60  section 4 at 100k x 512
#   retrieval_1m   120  section 4 at 1M x 512
#   compile        150  section 2's torch.compile rows (r3d18, vivit_fe_base)
#
# Logs (with each script's JSON line) go to $OUT (the device tool's result folder, at most 8
# files come back: session.txt and one log per step) or ./gpu_results. Carry in .whl/ (ignored by
# git) the python 3.12 wheels the image lacks: av (the recipes and the bench decode video) and
# faiss-cpu (section 4); the device README gives the pip download line. faiss-gpu-cu12 cannot
# travel (it needs the CUDA 12 runtime, several hundred MB; the image is CUDA 13), so there FAISS
# runs on the CPU cores against torch's matmul top-k on the GPU.
#
# Dry run on a CPU machine (the same steps, tiny sizes; gpu_tests then skip):
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ORDER=(mfu gpu_tests training attention retrieval_100k retrieval_1m compile)
declare -A LIMIT=([mfu]=90 [gpu_tests]=180 [training]=180 [attention]=45 [retrieval_100k]=60
                  [retrieval_1m]=120 [compile]=150)
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=("${ORDER[@]}")
for s in "${steps[@]}"; do
    [[ -n ${LIMIT[$s]:-} ]] || { echo "unknown step '$s'; steps: ${ORDER[*]}" >&2; exit 2; }
done
budget=${BUDGET_S:-390}
[[ $budget =~ ^[0-9]+$ ]] || { echo "BUDGET_S must be whole seconds, got '$budget'" >&2; exit 2; }
deadline=$((SECONDS + budget))
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

{ date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  # "fp32" rows of convolutions run in TF32 where cuDNN allows it (torch's default): say so
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'cudnn tf32', torch.backends.cudnn.allow_tf32, 'matmul tf32', torch.backends.cuda.matmul.allow_tf32)"
} | tee -a "$out/session.txt"

tiny() { [[ -n ${QUICK:-} ]] && echo "$1" || echo "$2"; }  # tiny TINY FULL: the size to use

run_step() {  # the command of step $1
    case $1 in
    mfu) python3 benchmarks/bench_training.py --device "$device" "${quick[@]}" \
            --names "$(tiny vivit_fe_tiny vivit_fe_base)" --variants fp32,bf16 ;;
    gpu_tests) python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_recipes.py \
            tests/test_bench.py tests/test_transforms.py tests/test_benchmarks.py ;;
    training) python3 benchmarks/bench_training.py --device "$device" "${quick[@]}" \
            --variants fp32,bf16,channels_last --names "$(tiny r3d18,torchvision.r3d_18,\
i3d_r50_tiny,audio_resnet18_tiny,mbt_tiny r3d18,torchvision.r3d_18,i3d_r50,audio_resnet18,\
torchvision.resnet18,mbt)" ;;  # vivit_fe_base: step mfu
    attention) python3 benchmarks/bench_attention.py --device "$device" "${quick[@]}" \
            --dtype "$([[ $device == cuda ]] && echo bf16 || echo fp32)" ;;
    retrieval_100k) python3 benchmarks/bench_retrieval.py --device "$device" \
            --gallery "$(tiny 20000 100000)" "${quick[@]}" ;;
    retrieval_1m) python3 benchmarks/bench_retrieval.py --device "$device" \
            --gallery "$(tiny 20000 1000000)" "${quick[@]}" ;;
    compile) python3 benchmarks/bench_training.py --device "$device" "${quick[@]}" \
            --variants compile --names "$(tiny vivit_fe_tiny r3d18,vivit_fe_base)" ;;
    esac
}

left=() failed=()
for s in "${steps[@]}"; do
    remaining=$((deadline - SECONDS))
    if ((LIMIT[$s] > remaining)); then
        echo "$s: not started (needs up to ${LIMIT[$s]} s, $remaining s of BUDGET_S left)" |
            tee -a "$out/session.txt"
        left+=("$s")
        continue
    fi
    t0=$SECONDS
    timeout "${LIMIT[$s]}" bash -c "$(declare -f run_step tiny); $(declare -p device quick);
        run_step $s" >"$out/$s.log" 2>&1
    rc=$?
    ((rc == 0)) || failed+=("$s")
    echo "$s: rc $rc in $((SECONDS - t0)) s (limit ${LIMIT[$s]} s)" | tee -a "$out/session.txt"
    tail -n 20 "$out/$s.log"
done
((${#failed[@]})) && echo "failed: ${failed[*]} (rc 124: hit its limit)" | tee -a "$out/session.txt"
if ((${#left[@]})); then
    echo "left: ${left[*]}; next: BUDGET_S=... bash benchmarks/gpu_session.sh ${left[*]}" |
        tee -a "$out/session.txt"
fi
((${#failed[@]} == 0))
