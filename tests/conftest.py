import torch

# Small networks: one thread is fastest and keeps timings steady when other processes share the cores.
torch.set_num_threads(1)
