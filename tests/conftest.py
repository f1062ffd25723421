import os

import torch

# Small networks: one thread is fastest and keeps timings steady when other processes share the cores.
torch.set_num_threads(1)

# Without a GPU the triton unroll's kernels run in triton's interpreter, so the tests still check them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
