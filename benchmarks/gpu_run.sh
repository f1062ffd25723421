#!/usr/bin/env bash
# One device call: CUDA correctness checks, then the learner benchmark on the GPU (results under $OUT).
# Needs the wheels in .whl/ (pydantic, gymnasium, torchrl, tensordict; see BENCHMARKS.md) carried along.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m carrystate.bench.cuda_check 2>&1 | tee "$OUT/cuda_check.txt"
timeout 330 python3 -m carrystate.bench.learner --device cuda --rows 256 1024 --repeats 10 --memory \
  --json "$OUT/gpu_learner.json" 2>&1 | tee "$OUT/gpu_learner.txt"
