#!/usr/bin/env bash
# One device call: CUDA correctness checks, the learner benchmark on the GPU, then tests/test_cuda.py
# (results under $OUT).
# Needs the wheels in .whl/ (pydantic, gymnasium; see BENCHMARKS.md) carried along.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
# the triton unroll against the step loop, compiled for this GPU (the same test runs interpreted on a CPU)
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_scan_triton.py 2>&1 | tail -15 | tee "$OUT/test_scan_triton.txt"
timeout 300 python3 -m benchmarks.learner --device cuda --rows 256 1024 --repeats 7 --tune-triton --memory \
  --impls fused bucketed packed scan triton loop_graphed --fp32-too \
  --json "$OUT/gpu_learner.json" 2>&1 | tee "$OUT/gpu_learner.txt"
# every unroll against the step loop, training, replay == rollout, on the GPU (-s keeps the printed figures)
timeout 240 python3 -m pytest -q -s -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/cuda_check.txt"
