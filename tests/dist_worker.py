"""Run by tests/test_distributed.py under torchrun: one run straight, one run checkpointed after its first
iteration and resumed; writes each rank's weights and carried state after each to OUT/<run>_rank<r>.safetensors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from carrystate.config import load_config
from carrystate.distributed import shutdown
from carrystate.trainer import Trainer


def snapshot(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"w.{k}": v.detach().clone().contiguous() for k, v in tr.policy.state_dict().items()}
    out.update({f"s.{k}": v.clone() for k, v in tr.store.state_dict().items()})
    out["rollout.obs"] = torch.from_numpy(tr.rollout.obs.copy())
    return out


def main(out: Path, overrides: list[str]) -> None:
    rank = int(os.environ["RANK"])
    cfg = load_config(None, overrides)
    straight = Trainer(cfg, quiet=True)
    straight.train()
    save_file(snapshot(straight), out / f"straight_rank{rank}.safetensors")
    Trainer(cfg, run_dir=out / "run", quiet=True).train(stop_after=1)  # checkpoints iteration 1, stops
    resumed = Trainer.resume(out / "run", quiet=True)
    resumed.train()
    save_file(snapshot(resumed), out / f"resumed_rank{rank}.safetensors")
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
