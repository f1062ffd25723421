"""Data-parallel training across processes: who this rank is, the process group, and every collective.

Launched by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), each rank is a whole
trainer with its own env batch, `StateStore` and `SegmentBuffer`, seeded `trainer.seed + rank`. The ranks
stay in step through the collectives below, and only through them:

- at start: the resolved configs must agree (`check_configs_agree`), rank 0's initial weights are copied to
  all (`broadcast_parameters`), rank 0's run folder is everyone's (`broadcast_object`);
- every optimizer step: gradients are averaged (`average_gradients`, one flat all-reduce; see below) and the
  advantage statistics are taken over all ranks' minibatches (`mean_std`), so every rank takes the same
  step and the weights stay identical;
- wherever the loop may stop early (a signal, `target_kl`), the decision is agreed (`any_rank`, `mean`), so
  no rank waits in a collective that the others skipped;
- checkpoints: rank 0 gathers every rank's carried state (`gather_to_main`) and writes one checkpoint.

Why not `DistributedDataParallel`: DDP synchronises gradients through hooks armed by the wrapped module's
`forward`, but the policy is driven through `policy.step` (rollout) and `policy.sequence` (training), never
`forward`. One explicit all-reduce of the flattened gradients after `backward` is the same arithmetic (the
mean over ranks), works with any method, and costs one message per optimizer step for these small nets.

A rank that dies closes its sockets and the others fail at their next collective; a rank that hangs makes
the others fail after `trainer.dist_timeout_s`. Either way they stop with `DistributedError`, not a hang.
Single-process runs (no WORLD_SIZE, or WORLD_SIZE=1) get a context whose collectives do nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from carrystate.config import Config, ConfigError, config_from_dict
from carrystate.errors import DistributedError


def env_rank() -> int:
    """This process's rank as torchrun announces it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_config(cfg: Config, world_size: int) -> Config:
    """The config one rank runs. With `trainer.scale_batch_with_world_size` the config's env.num_envs,
    trainer.batch_size and trainer.minibatch_size describe the whole run and are divided among the ranks;
    otherwise they are per rank and `cfg` is returned as it is."""
    if world_size == 1 or not cfg.trainer.scale_batch_with_world_size:
        return cfg
    sizes = {
        "env.num_envs": cfg.env.num_envs,
        "trainer.batch_size": cfg.trainer.batch_size,
        "trainer.minibatch_size": cfg.trainer.minibatch_size,
    }
    for name, value in sizes.items():
        if value % world_size:
            raise ConfigError(
                f"trainer.scale_batch_with_world_size=true divides {name}={value} among {world_size} ranks; it "
                f"must be a multiple of {world_size} (e.g. {-(-value // world_size) * world_size}), or set "
                "trainer.scale_batch_with_world_size=false to give every rank the whole size"
            )
    data = cfg.model_dump(mode="json")
    data["env"]["num_envs"] //= world_size
    data["trainer"]["batch_size"] //= world_size
    data["trainer"]["minibatch_size"] //= world_size
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(
            f"with trainer.scale_batch_with_world_size=true each of the {world_size} ranks runs "
            f"{sizes['env.num_envs'] // world_size} env copies, batch_size "
            f"{sizes['trainer.batch_size'] // world_size} and minibatch_size "
            f"{sizes['trainer.minibatch_size'] // world_size}; {err}"
        ) from None


@contextmanager
def _collective(what: str, timeout_s: float, rank: int):
    """Turn a backend's failure inside a collective into one DistributedError that says what to look at."""
    try:
        yield
    except RuntimeError as err:
        if isinstance(err, (DistributedError, ConfigError)):
            raise
        raise DistributedError(
            f"rank {rank}: {what} failed: another rank stopped or did not answer within "
            f"trainer.dist_timeout_s={timeout_s:g}s ({type(err).__name__}: {(str(err).strip() or '?').splitlines()[0]})"
        ) from err


@dataclass
class DistContext:
    """This process's place among the ranks; every collective the trainer uses is a method here."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, prints and writes the run folder."""
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The configured device; `cuda` without an index means this rank's GPU (cuda:LOCAL_RANK)."""
        device = torch.device(name)
        if self.enabled and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        return device

    def _run(self, what: str):
        return _collective(what, self.timeout_s, self.rank)

    # ---- agreement --------------------------------------------------------------------------------
    def all_gather_object(self, obj, what: str) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        with self._run(what):
            dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, what: str = "sharing rank 0's value"):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        with self._run(what):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_agree(self, what: str, value: str) -> None:
        """Raise ConfigError on every rank unless every rank holds the same `value`."""
        values = self.all_gather_object(value, f"comparing {what}")
        if len(set(values)) > 1:
            listing = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise ConfigError(f"the ranks disagree on {what} ({listing})")

    def check_configs_agree(self, cfg: Config) -> None:
        """Raise ConfigError on every rank, naming the settings, unless every rank resolved the same config."""
        text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        digests = self.all_gather_object(hashlib.sha256(text.encode()).hexdigest(), "comparing configs")
        if len(set(digests)) == 1:
            return
        configs = [_flatten(json.loads(t)) for t in self.all_gather_object(text, "comparing configs")]
        lines = []
        for r, other in enumerate(configs[1:], start=1):
            keys = sorted(k for k in configs[0].keys() | other.keys() if configs[0].get(k) != other.get(k))
            lines += [f"{k}: rank 0 {configs[0].get(k)!r}, rank {r} {other.get(k)!r}" for k in keys]
        raise ConfigError(
            "the ranks resolved different configs (every rank must get the same config file and "
            "overrides):\n  " + "\n  ".join(lines)
        )

    # ---- training step ----------------------------------------------------------------------------
    def broadcast_parameters(self, module: nn.Module) -> None:
        """Copy rank 0's weights (and buffers) into every rank's module."""
        if not self.enabled:
            return
        with self._run("copying rank 0's initial weights"), torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def average_gradients(self, params) -> None:
        """Replace every gradient by its mean over the ranks (one all-reduce of all gradients, flattened).
        A missing gradient counts as zeros, so every rank's optimizer sees the same gradients."""
        if not self.enabled:
            return
        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # [all parameters]
        with self._run("averaging gradients"):
            dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    @torch.no_grad()
    def mean_std(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and unbiased standard deviation of `x` (its `mask`ed entries) over every rank's `x` together:
        what one process would compute on the concatenation. The advantage-normalisation hook of
        `ppo.ppo_loss`."""
        w = torch.ones_like(x) if mask is None else mask.to(x.dtype)
        sums = torch.stack([(x * w).sum(), w.sum()])  # [sum, count]
        with self._run("advantage statistics"):
            dist.all_reduce(sums)
        mu = sums[0] / sums[1].clamp(min=1.0)
        sq = ((x - mu) ** 2 * w).sum()
        with self._run("advantage statistics"):
            dist.all_reduce(sq)
        return mu, (sq / (sums[1] - 1).clamp(min=1.0)).sqrt()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (a stop request seen by one rank stops all)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=self._comm_device())
        with self._run("agreeing whether to stop"):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def every(self, calls: int, agreed_flag):
        """`agreed_flag` (a function whose answer all ranks agree on, through a collective) asked only at every
        `calls`-th call, False in between: for loops that every rank runs alike (the rollout's steps), where a
        collective per step would cost more than the step. Single process: `agreed_flag` itself."""
        if not self.enabled:
            return agreed_flag
        count = 0

        def throttled() -> bool:
            nonlocal count
            count += 1
            return count % calls == 0 and agreed_flag()

        return throttled

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks (the same number on every rank)."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        with self._run("averaging a statistic"):
            dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def sum(self, t: Tensor, what: str) -> Tensor:
        """`t` summed over the ranks (the same tensor on every rank; `t` itself in a single process)."""
        if not self.enabled:
            return t
        out = t.to(self._comm_device()).clone()
        with self._run(what):
            dist.all_reduce(out)
        return out.to(t.device)

    def _comm_device(self) -> torch.device:
        return (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        )

    def share_episodes(self, stats) -> None:
        """Put every rank's finished episodes (rank order) into `stats` (a RolloutStats), so that progress,
        TensorBoard and the summary cover the whole run."""
        if not self.enabled:
            return
        parts = self.all_gather_object(
            (stats.episode_returns, stats.episode_lengths, stats.success), "sharing episode statistics"
        )
        stats.episode_returns = [x for returns, _, _ in parts for x in returns]
        stats.episode_lengths = [x for _, lengths, _ in parts for x in lengths]
        stats.success = [x for _, _, success in parts for x in success]

    # ---- checkpoints ------------------------------------------------------------------------------
    def gather_to_main(self, obj, what: str) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0; None on the others."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        with self._run(what):
            dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self, what: str) -> None:
        if self.enabled:
            with self._run(what):
                dist.barrier()


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def setup(cfg: Config) -> DistContext:
    """This process's DistContext. Under torchrun (WORLD_SIZE > 1) the first call joins the process group
    (gloo on the CPU, nccl on CUDA) with `trainer.dist_timeout_s` as the timeout of every collective, then
    checks that every rank resolved the same config."""
    world = env_world_size()
    if world == 1:
        return DistContext()
    t = cfg.trainer
    ctx = DistContext(env_rank(), world, int(os.environ.get("LOCAL_RANK", "0")), t.dist_timeout_s)
    if not dist.is_initialized():
        # torch.distributed.nn binds `group.WORLD` as default arguments when first imported. Imported after
        # the group exists (torch._dynamo imports it, and building an optimizer imports torch._dynamo), those
        # defaults keep the group alive past destroy_process_group: gloo's threads then outlive the
        # interpreter and its exit can abort (SIGABRT after a finished run; BENCHMARKS.md, Other measurements).
        # Imported first, they hold None.
        import torch.distributed.nn

        cuda = torch.device(t.device).type == "cuda"
        if cuda:
            torch.cuda.set_device(ctx.device(t.device))
        with _collective("joining the process group", t.dist_timeout_s, ctx.rank):
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=t.dist_timeout_s))
    if dist.get_world_size() != world:
        raise DistributedError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} ranks")
    ctx.check_configs_agree(cfg)
    return ctx


def shutdown() -> None:
    """Leave the process group (if this process joined one and it still works)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_now(code: int) -> None:
    """End the process at once with `code`. After a failed collective the process group's threads can never
    be joined, and an ordinary interpreter exit would abort (SIGABRT) instead of returning `code`."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
