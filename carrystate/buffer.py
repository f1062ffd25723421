"""`SegmentBuffer`: one rollout's experience as `[segments, bptt_horizon]` rows, plus each row's start state.

Layout. With A agents and `segments = batch_size / bptt_horizon`, every agent owns K = segments / A
consecutive rows: row `a * K + k` holds agent a's steps `k*H .. k*H + H-1` of this rollout. So the
`[segments, H]` tensors, viewed as `[A, K*H]` (`timeline`), are each agent's own consecutive steps;
advantages are computed on that view, and a row's last step bootstraps from the next row's first value
(or, for the last row, from `last_value`, the value of the observation after the rollout).

`starts[s, t]` marks a step that is the first of an episode (the state was zeroed before it);
`start_state` is the state row s held at its first step, detached. Replaying row s from `start_state[:, s]`
with `starts[s]` reproduces the rollout exactly.

`position` counts the steps of the current rollout written so far (0 ≤ position ≤ steps): a rollout that a
stop cut short continues from there, and `state_dict`/`load_state_dict` carry the written part through a
checkpoint.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from carrystate.envs.base import obs_dtype as env_obs_dtype
from carrystate.state import State


def action_layout(space: gym.Space) -> tuple[tuple[int, ...], torch.dtype]:
    """How one agent's action of `space` is stored: its shape and dtype."""
    if isinstance(space, gym.spaces.Discrete):
        return (), torch.long
    if isinstance(space, gym.spaces.MultiDiscrete):
        return (int(np.prod(space.shape)),), torch.long
    return tuple(space.shape), torch.float32


def _step_view(t: Tensor) -> Tensor | np.ndarray:
    """What `SegmentBuffer.write` writes into: a CPU tensor's memory as a numpy array (the same storage), else the
    tensor itself."""
    return t.numpy() if t.device.type == "cpu" else t


def obs_dtype(space: gym.Space) -> torch.dtype:
    """How observations of `space` are stored (`envs.base.obs_dtype`, as torch dtype): integer and bool boxes in
    the dtype the env emits (MettaGrid's uint8 tokens take a quarter of float32's memory and copying), everything
    else as float32. The encoders convert on the way in."""
    return torch.from_numpy(np.zeros(0, env_obs_dtype(space))).dtype


class SegmentBuffer:
    # the [segments, horizon, ...] tensors a rollout writes step by step (advantages and returns are derived)
    STEP_FIELDS = (
        "obs",
        "actions",
        "logprobs",
        "values",
        "rewards",
        "terminated",
        "truncated",
        "starts",
        "valid",
        "final_values",
    )

    @classmethod
    def for_spaces(
        cls,
        num_agents: int,
        obs_space: gym.Space,
        action_space: gym.Space,
        state_template: State,
        *,
        batch_size: int,
        horizon: int,
        burn_in: int = 0,
        device: torch.device | str = "cpu",
    ) -> SegmentBuffer:
        """The buffer for agents with these observation and action spaces (observations stored as `obs_dtype`)."""
        action_shape, action_dtype = action_layout(action_space)
        return cls(
            num_agents,
            batch_size,
            horizon,
            obs_shape=tuple(obs_space.shape),
            obs_dtype=obs_dtype(obs_space),
            action_shape=action_shape,
            action_dtype=action_dtype,
            state_template=state_template,
            device=device,
            burn_in=burn_in,
        )

    def __init__(
        self,
        num_agents: int,
        batch_size: int,
        horizon: int,
        *,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype,
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype,
        state_template: State,
        device: torch.device | str = "cpu",
        burn_in: int = 0,
    ):
        """`state_template`: a state of batch 1 whose tensors give the depth and width of the start states."""
        if batch_size % (num_agents * horizon):
            raise ValueError(
                f"batch_size={batch_size} is not a multiple of agents × bptt_horizon = {num_agents} × {horizon}"
            )
        self.num_agents, self.horizon = num_agents, horizon
        self.segments = batch_size // horizon
        self.rows_per_agent = self.segments // num_agents
        self.steps = batch_size // num_agents  # rollout steps per agent
        S, H = self.segments, horizon
        z = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        self.obs = z(S, H, *obs_shape, dtype=obs_dtype)  # [segments, horizon, *obs_shape]
        self.actions = z(S, H, *action_shape, dtype=action_dtype)  # [segments, horizon, *action_shape]
        self.logprobs = z(S, H)  # [segments, horizon]
        self.values = z(S, H)
        self.rewards = z(S, H)
        self.terminated = z(S, H, dtype=torch.bool)
        self.truncated = z(S, H, dtype=torch.bool)
        self.starts = z(S, H, dtype=torch.bool)
        self.valid = z(S, H, dtype=torch.bool)  # false at padding steps (agent absent): no loss there
        self.final_values = z(S, H)  # value of the final observation at truncated steps, else 0
        self.advantages = z(S, H)
        self.returns = z(S, H)
        # [depth, segments, width] per state tensor (the core's state_shapes): the state each row held at its first step
        self.start_state: State = tuple(torch.zeros(s.shape[0], S, *s.shape[2:], device=device) for s in state_template)
        self.last_value = z(num_agents)  # [agents] value after the rollout's last step
        self._timelines: dict[str, Tensor | np.ndarray] = {}  # write's views, of tensors allocated here once
        self.position = 0  # steps of the current rollout written (every agent's first `position` steps)
        self.trained = False  # the whole rollout in the buffer has had its update (the learner sets it)
        # Burn-in (R2D2): the state at column H - burn_in of every row, and the previous rollout's last
        # burn_in steps per agent, so that every segment can be warmed up from the steps that precede it.
        self.burn_in = burn_in
        if burn_in:
            if not 0 < burn_in < horizon:
                raise ValueError(f"trainer.burn_in={burn_in} must be between 1 and bptt_horizon - 1 = {horizon - 1}")
            self.burn_in_state: State = tuple(torch.zeros_like(s) for s in self.start_state)
            self.tail_obs = z(num_agents, burn_in, *obs_shape, dtype=obs_dtype)  # [agents, burn_in, *obs_shape]
            self.tail_starts = z(num_agents, burn_in, dtype=torch.bool)
            self.tail_state: State = tuple(
                torch.zeros(s.shape[0], num_agents, *s.shape[2:], device=device) for s in state_template
            )
            self.tail_ready = False  # true once a previous rollout left its tail

    def timeline(self, t: Tensor) -> Tensor:
        """View a [segments, horizon, ...] tensor as [agents, steps, ...]: each agent's consecutive steps."""
        return t.view(self.num_agents, self.steps, *t.shape[2:])

    def write(self, step: int, agents: slice = slice(None), **fields: Tensor | np.ndarray) -> None:
        """Store one rollout step under `step` of the agents' timelines: of every agent, or of the agents in
        `agents` (one env batch of a double-buffered rollout; each field then has that many rows). A value may be
        a tensor or an array (an env's output as it came), converted to the field's dtype as torch's copy does."""
        views = self._timelines
        for name, value in fields.items():
            view = views.get(name)
            if view is None:  # the [agents, steps, ...] view of a field, made once (the rollout's per-step path)
                view = views[name] = _step_view(self.timeline(getattr(self, name)))
            if isinstance(view, np.ndarray):  # a CPU buffer: written through numpy, a fraction of torch's per-call cost
                view[agents, step] = value.numpy() if isinstance(value, Tensor) else value
            else:
                view[agents, step] = torch.as_tensor(value, device=view.device)

    def write_start_state(self, step: int, state: State, agents: slice = slice(None)) -> None:
        """At the first step of each row (step % horizon == 0), record the state the agents (all, or those in
        `agents`) hold."""
        owners = torch.arange(self.num_agents, device=self.obs.device)[agents]  # [agents written]
        rows = owners * self.rows_per_agent + step // self.horizon
        for dst, src in zip(self.start_state, state):
            dst[:, rows] = src

    def write_burn_in_state(self, step: int, state: State, agents: slice = slice(None)) -> None:
        """At column H - burn_in of each row, record the state the agents hold (the start of the burn-in
        period of the next row)."""
        owners = torch.arange(self.num_agents, device=self.obs.device)[agents]
        rows = owners * self.rows_per_agent + step // self.horizon
        for dst, src in zip(self.burn_in_state, state):
            dst[:, rows] = src

    def begin_rollout(self) -> None:
        """Before a rollout overwrites the buffer: zero `final_values` (the rollout writes only its truncated
        steps), and where the buffer holds a whole rollout, keep its last burn_in steps of every agent as the
        new rollout's tail."""
        self.final_values.zero_()
        if self.burn_in and self.position == self.steps:
            last = torch.arange(self.num_agents, device=self.obs.device) * self.rows_per_agent + self.rows_per_agent - 1
            self.tail_obs[:] = self.obs[last, -self.burn_in :]
            self.tail_starts[:] = self.starts[last, -self.burn_in :]
            for dst, src in zip(self.tail_state, self.burn_in_state):
                dst[:] = src[:, last]
            self.tail_ready = True
        self.position, self.trained = 0, False

    @property
    def update_pending(self) -> bool:
        """The buffer holds a whole rollout that has not had its update (a stop cut the update short)."""
        return self.position == self.steps and not self.trained

    @property
    def first_kept(self) -> int:
        """The first step a checkpoint keeps: all of a rollout in progress or awaiting its update; of a trained
        one only the last burn_in steps, which the next rollout's burn-in reads."""
        return self.steps - self.burn_in if self.position == self.steps and self.trained else 0

    def state_dict(self) -> dict:
        """The part of the buffer a checkpoint must hold for the run to go on exactly: `position` and `first`
        (`first_kept`), and steps [first, position) of every agent, what the rollout recorded at them, and the
        burn-in tail. While a rollout is in progress or its update is still to come that is `position` × agents
        steps (of each an observation, an action and a few small numbers and flags, plus a start state per
        begun segment; at most the whole buffer); once the rollout is trained, only what the next rollout's
        burn-in reads (nothing without burn-in). Views, not copies: the per-step fields as [agents, steps, ...],
        the start and burn-in states as [depth, agents, rows, width]."""
        first = self.first_kept
        out = {f: self.timeline(getattr(self, f))[:, first : self.position] for f in self.STEP_FIELDS}
        starts, burn_ins = self._rows(first)
        for i, s in enumerate(self.start_state):
            out[f"start_state.{i}"] = self._by_agent(s)[:, :, starts]
        if self.position == self.steps and first == 0:
            out["last_value"] = self.last_value
        if self.burn_in:
            for i, s in enumerate(self.burn_in_state):
                out[f"burn_in_state.{i}"] = self._by_agent(s)[:, :, burn_ins]
            out["tail.obs"], out["tail.starts"] = self.tail_obs, self.tail_starts
            for i, s in enumerate(self.tail_state):
                out[f"tail.state.{i}"] = s
            out["tail.ready"] = torch.tensor(self.tail_ready)
        return {**out, "position": self.position, "first": first}

    def load_state_dict(self, state: dict) -> None:
        """Put back what `state_dict` returned (the caller has checked names and shapes). A trained rollout of
        which nothing was kept (no burn-in) stands as a whole trained rollout of this buffer's size, whatever
        trainer.batch_size it had."""
        position, first = state["position"], state["first"]
        if first == position > 0:
            position = first = self.steps
        self.position, self.trained = position, position == self.steps and first > 0
        self.final_values.zero_()  # as begin_rollout left it: the steps still to come write only truncated ones
        for f in self.STEP_FIELDS:
            self.timeline(getattr(self, f))[:, first:position] = state[f]
        starts, burn_ins = self._rows(first)
        for i, s in enumerate(self.start_state):
            self._by_agent(s)[:, :, starts] = state[f"start_state.{i}"]
        if "last_value" in state:
            self.last_value[:] = state["last_value"]
        if self.burn_in:
            for i, s in enumerate(self.burn_in_state):
                self._by_agent(s)[:, :, burn_ins] = state[f"burn_in_state.{i}"]
            self.tail_obs[:], self.tail_starts[:] = state["tail.obs"], state["tail.starts"]
            for i, s in enumerate(self.tail_state):
                s[:] = state[f"tail.state.{i}"]
            self.tail_ready = bool(state["tail.ready"])

    def _rows(self, first: int) -> tuple[slice, slice]:
        """Of each agent's rows: those whose start state, and those whose burn-in state, the rollout recorded
        at a step in [first, position)."""
        H, N = self.horizon, self.burn_in

        def written_before(step: int, offset: int) -> int:  # rows k with k * H + offset < step
            return min(self.rows_per_agent, max(0, -(-(step - offset) // H)))

        return (
            slice(written_before(first, 0), written_before(self.position, 0)),
            slice(written_before(first, H - N), written_before(self.position, H - N)),
        )

    def _by_agent(self, s: Tensor) -> Tensor:
        """A [depth, segments, width] state tensor viewed as [depth, agents, rows, width]."""
        return s.view(s.shape[0], self.num_agents, self.rows_per_agent, *s.shape[2:])

    def burn_in_inputs(self, idx: Tensor) -> tuple[Tensor, Tensor, State, Tensor]:
        """For segments `idx` [n]: the burn_in steps before each (obs [n, N, ...], starts [n, N]), the state at
        their start, and `has` [n] (false for a rollout's first rows when no earlier rollout left a tail)."""
        idx = idx.to(self.obs.device)
        N, first = self.burn_in, (idx % self.rows_per_agent) == 0
        prev = torch.where(first, idx, idx - 1)
        agent = idx // self.rows_per_agent
        obs = torch.where(first.view(-1, *[1] * (self.obs.dim() - 1)), self.tail_obs[agent], self.obs[prev, -N:])
        starts = torch.where(first[:, None], self.tail_starts[agent], self.starts[prev, -N:])
        state = tuple(
            torch.where(first.view(1, -1, 1), t[:, agent], s[:, prev])
            for t, s in zip(self.tail_state, self.burn_in_state)
        )
        has = ~first | torch.tensor(self.tail_ready, device=idx.device)
        return obs, starts, state, has

    def chain_plan(self, chain: int, minibatch_segments: int, generator: torch.Generator) -> list[Tensor]:
        """One epoch of chains: runs of `chain` consecutive rows of one agent, shuffled and grouped
        `minibatch_segments / chain` to a minibatch; each segment appears exactly once. Returns [n, chain] ids."""
        chains = torch.arange(self.segments).view(-1, chain)  # rows of an agent are consecutive
        order = torch.randperm(chains.shape[0], generator=generator)
        return list(chains[order].split(minibatch_segments // chain))

    def minibatch_plan(self, minibatch_segments: int, generator: torch.Generator) -> list[Tensor]:
        """One epoch: all segments shuffled and split into minibatches; each segment appears exactly once."""
        order = torch.randperm(self.segments, generator=generator)
        return list(order.split(minibatch_segments))

    def minibatch(self, idx: Tensor) -> dict[str, Tensor]:
        """The per-step tensors of segments `idx`; start states are chosen by the learner (stored, zero,
        refreshed or burnt in), so they are not gathered here."""
        idx = idx.to(self.obs.device)
        fields = ("obs", "actions", "logprobs", "values", "starts", "valid", "advantages", "returns")
        # index_select copies whole rows, where indexing gathers element by element on the CPU (BENCHMARKS.md)
        return {k: torch.index_select(getattr(self, k), 0, idx) for k in fields}
