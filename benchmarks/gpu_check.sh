#!/usr/bin/env bash
# One run on a lent CUDA GPU: everything the project measures there, results to benchmarks/results/.
#   bash benchmarks/gpu_check.sh            (from the repository root; about 10 minutes on an H200)
# - images/s and MFU of the training step, small and paper presets, fp32/TF32 and bf16, eager and
#   torch.compile (bench_gpu_mfu.py), and fp32 against bf16 with peak memory (bench_gpu_train_step.py);
# - the frozen LLM's scoring speed on the GPU: prompt tokens/s of the demo's few-shot reading against
#   the GPU's own matrix-product floor, fp32 and bf16 (bench_reading.py --device cuda).
# Python: $PYTHON, else .venv/bin/python, else python3, with a CUDA build of torch and this project's
# dependencies importable (the device machine reaches no package registry: nothing is installed here).
# Each step writes its own file, so a step that fails leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT_DIR:-benchmarks/results}"
mkdir -p "$out"
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")' || exit 2
gpu=$("$py" -c 'import torch; print(torch.cuda.get_device_name().split()[-1].lower())')
status=0
run() {  # run NAME CMD...: a step, timed, its output kept in $out/gpu_check_<gpu>.log
  echo "== $1" | tee -a "$out/gpu_check_$gpu.log"
  shift
  local start=$SECONDS
  if ! "$@" 2>&1 | tee -a "$out/gpu_check_$gpu.log"; then status=1; fi
  echo "   ($((SECONDS - start)) s)" | tee -a "$out/gpu_check_$gpu.log"
}
run "training step: images/s and MFU, eager and compiled" \
  "$py" benchmarks/bench_gpu_mfu.py --json "$out/gpu_mfu_$gpu.json"
run "training step: fp32 against bf16, peak memory" \
  "$py" benchmarks/bench_gpu_train_step.py --json "$out/gpu_train_step_$gpu.json"
run "LLM scoring on the GPU: prompt tokens/s against the floor" \
  "$py" benchmarks/bench_reading.py --device cuda --episodes 10 --repeats 3 \
  --json "$out/reading_$gpu.json" --markdown "$out/reading_$gpu.md"
exit $status
