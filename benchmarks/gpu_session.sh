#!/usr/bin/env bash
# One-shot GPU session (run on a lent GPU machine by the `device` tool; see benchmarks/RESULTS.md).
# The machine's image has torch+CUDA but not our other dependencies: they travel as wheels in .whl/
# and install into /tmp/site. Every step is time-boxed and logged under $OUT so one call does it all.
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:/tmp/site" HF_HUB_OFFLINE=1 WANDB_MODE=disabled
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/pip.log" 2>&1 || { echo "wheel install failed"; tail "$OUT/pip.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

ONLY=${ONLY:-}  # e.g. ONLY="gpu_tests bench_train" runs just those steps
step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "=== $name (<= ${secs}s)"; local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "--- $name rc=$rc in $((SECONDS - t0))s"; tail -n 40 "$OUT/$name.log"
}

# 1. the CUDA EAC op builds for this GPU (sm_90) and the gpu-marked tests pass
step gpu_tests 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ops tests/blur_synthesis tests/test_diffusion.py
# 2. benchmarks (each prints a table)
step bench_eac 90 python3 benchmarks/eac.py --skip-cpu
step bench_inference 150 python3 benchmarks/inference.py --gpu-only --quick --budget-s 120
step bench_train 300 python3 benchmarks/train_step.py --gpu-only --quick
step bench_blur 60 python3 benchmarks/blur_synthesis.py --images 4 --repeats 1
echo "=== done"
