"""MettaGrid adapter: copies of an arena or navigation map with N agents each, as one `VecEnv`.

Rows: copy e's agent i is row `e * agents + i`. Observations are MettaGrid's token lists `[tokens, 3]`
uint8 (location byte, feature id, value; location 255 = empty token), encoded by `policy.encoder=token`.
Actions are MettaGrid's primary actions (noop and the four moves, plus attack where the map enables it).

Maps (built from mettagrid's own `make_arena` / `make_navigation` configs, to which a heart `altar` object
is added: moving into it gives the agent a heart, and every heart gained is reward 1):
- `arena`: a bordered square of `size` cells with `walls` random walls and `altars` altars;
- `navigation`: a random open map of `size` cells with `altars` altars.
Every episode of a copy lasts `max_steps` steps and is truncated there (bootstrapped); the copy then starts
a new map (new seed) in the same step, as the `VecEnv` contract says.

The simulator writes into views of this batch's arrays (no copy per step). Needs the optional extra
`pip install -e .[mettagrid]`.

Video (video.py): MettaGrid renders no rgb_array frames of its own (its renderers are an interactive terminal view,
the Mettascope GUI, a logger, and replay files for Mettascope), so `record_frames` films copy 0 as `grid_frame`
paints it from the simulation's grid objects: walls, altars and agents on the map, one cell a square of pixels.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from carrystate.envs.base import EnvError, EpisodeTracker, StepResult, check_actions

if TYPE_CHECKING:
    from carrystate.config import EnvConfig
    from carrystate.video import EpisodeFrames

EMPTY_TOKEN = 255
CELL_PIXELS = 16  # a map cell's side in a video frame
FRAMES_PER_SECOND = 8.0  # a video's speed: mettagrid states none
EMPTY_RGB = (24, 24, 32)
OBJECT_RGB = {"wall": (112, 112, 122), "altar": (232, 178, 40)}
OTHER_RGB = (175, 175, 175)  # objects of another type
AGENT_RGB = [(66, 135, 245), (235, 87, 87), (80, 200, 120), (245, 130, 35), (160, 90, 190), (26, 188, 170)]


def grid_frame(sim, cell: int = CELL_PIXELS) -> np.ndarray:
    """The map of one simulation as an RGB image [map height × cell, map width × cell, 3] uint8, painted from its
    grid objects: empty cells dark, walls grey (the whole cell), altars gold and agents each in a colour of their
    own by agent id (agent 0, the copy's first row, blue), as squares inset within their cells."""
    frame = np.empty((sim.map_height * cell, sim.map_width * cell, 3), np.uint8)  # [height, width, rgb]
    frame[:] = EMPTY_RGB
    for obj in sim.grid_objects().values():
        name = obj["type_name"]
        if name == "agent":
            rgb = AGENT_RGB[obj.get("agent_id", 0) % len(AGENT_RGB)]
        else:
            rgb = OBJECT_RGB.get(name, OTHER_RGB)
        inset = 0 if name == "wall" else max(1, cell // 8)
        y, x = obj["r"] * cell, obj["c"] * cell
        frame[y + inset : y + cell - inset, x + inset : x + cell - inset] = rgb
    return frame


def _require_mettagrid():
    try:
        import mettagrid  # noqa: F401
        from mettagrid.simulator import Simulator
    except ImportError as err:
        raise ValueError(
            f"env.name=mettagrid needs the mettagrid package: pip install -e '.[mettagrid]' ({err})"
        ) from err
    return Simulator


def mettagrid_config(map_name: str, agents: int, size: int, altars: int, walls: int, max_steps: int, obs_tokens: int):
    """The MettaGridConfig of one copy."""
    from mettagrid.builder.envs import make_arena, make_navigation
    from mettagrid.config.handler_config import Handler
    from mettagrid.config.mettagrid_config import GridObjectConfig
    from mettagrid.config.mutation.resource_mutation import updateActor
    from mettagrid.map_builder.random_map import RandomMapBuilder
    from mettagrid.mapgen.mapgen import MapGen
    from mettagrid.mapgen.scenes.random import Random

    if map_name == "arena":
        cfg = make_arena(
            num_agents=agents,
            combat=False,
            map_builder=MapGen.Config(
                num_agents=agents,
                width=size,
                height=size,
                border_width=1,
                instance_border_width=0,
                instance=Random.Config(agents=agents, objects={"wall": walls, "altar": altars}),
            ),
        )
    elif map_name == "navigation":
        cfg = make_navigation(num_agents=agents)
        cfg.game.map_builder = RandomMapBuilder.Config(
            agents=agents, width=size, height=size, objects={"altar": altars}
        )
    else:
        raise ValueError(f"env.mettagrid.map={map_name!r} is not one of arena, navigation")
    game = cfg.game
    altar = GridObjectConfig(name="altar", on_use_handler=Handler(mutations=[updateActor({"heart": 1})]))
    game.objects = {**game.objects, "altar": altar}
    game.max_steps = max_steps
    game.episode_truncates = True
    game.obs.num_tokens = obs_tokens
    return cfg


class MettaGridVecEnv:
    """`num_envs` MettaGrid simulations with `agents` agents each, stepped in this process."""

    def __init__(
        self,
        num_envs: int,
        map_name: str = "arena",
        agents: int = 24,
        size: int = 25,
        altars: int = 10,
        walls: int = 10,
        max_steps: int = 1000,
        obs_tokens: int = 200,
        seed: int = 0,
    ):
        Simulator = _require_mettagrid()
        logging.getLogger("mettagrid").setLevel(logging.WARNING)
        from mettagrid.policy.policy_env_interface import PolicyEnvInterface
        from mettagrid.simulator.simulator import Buffers

        self.cfg = mettagrid_config(map_name, agents, size, altars, walls, max_steps, obs_tokens)
        info = PolicyEnvInterface.from_mg_cfg(self.cfg)
        self.map_name, self.num_envs, self.agents_per_env = map_name, num_envs, agents
        self.num_agents = num_envs * agents
        self.single_observation_space = gym.spaces.Box(0, 255, tuple(info.observation_shape), np.uint8)
        self.single_action_space = gym.spaces.Discrete(len(info.action_names))
        self.action_names = list(info.action_names)
        n, shape = self.num_agents, tuple(info.observation_shape)
        self.obs = np.zeros((n, *shape), np.uint8)  # [agents, tokens, 3]: the simulators write here
        self.rewards = np.zeros(n, np.float32)
        self.terminals, self.truncations = np.zeros(n, bool), np.zeros(n, bool)
        self.actions = np.zeros(n, np.int32)
        self._masks, self._teacher = np.ones(n, bool), np.zeros(n, np.int32)
        rows = [slice(e * agents, (e + 1) * agents) for e in range(num_envs)]
        self._buffers = [
            Buffers(
                observations=self.obs[r],
                terminals=self.terminals[r],
                truncations=self.truncations[r],
                rewards=self.rewards[r],
                masks=self._masks[r],
                actions=self.actions[r],
                teacher_actions=self._teacher[r],
            )
            for r in rows
        ]
        self._simulators = [Simulator() for _ in range(num_envs)]
        self._sims: list = [None] * num_envs
        self.seed = seed
        self._episodes = 0
        self.tracker = EpisodeTracker(n)
        self._frames: EpisodeFrames | None = None  # where copy 0's frames go (record_frames)

    def record_frames(self, frames: EpisodeFrames) -> None:
        """Film copy 0 into `frames` (video.py): its map painted by `grid_frame` after each reset and each step,
        the last step's before the copy starts its next map."""
        frames.fps, frames.source = FRAMES_PER_SECOND, "env.name=mettagrid"
        self._frames = frames

    def _copy0_frame(self) -> np.ndarray:
        return grid_frame(self._sims[0])

    def _new_sim(self, e: int, seed: int) -> None:
        if self._sims[e] is not None:
            self._sims[e].close()
        self._sims[e] = self._simulators[e].new_simulation(self.cfg, seed, buffers=self._buffers[e])

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.seed = self.seed if seed is None else seed
        self._episodes = 0
        for e in range(self.num_envs):
            self._new_sim(e, self._next_seed())
        self.tracker = EpisodeTracker(self.num_agents)
        if self._frames is not None:
            self._frames.begin(self._copy0_frame)
        return self.obs.copy()

    def _next_seed(self) -> int:
        self._episodes += 1
        return (self.seed * 1_000_003 + self._episodes) % (2**31 - 1)  # the simulator takes a 32-bit seed

    def step(self, actions: np.ndarray) -> StepResult:
        actions = check_actions(actions, self.single_action_space, self.num_agents)
        self.actions[:] = actions
        for e, sim in enumerate(self._sims):
            try:
                sim.step()
            except Exception as err:
                raise EnvError(f"mettagrid copy {e} raised in step: {type(err).__name__}: {err}") from err
        reward = self.rewards.copy()
        terminated, truncated = self.terminals.copy(), self.truncations.copy()
        final_obs = self.obs.copy()
        done = terminated | truncated
        if self._frames is not None:  # copy 0's step, before an ended episode's map is replaced
            self._frames.step(self._copy0_frame, bool(done[: self.agents_per_env].all()))
        for e in range(self.num_envs):
            rows = slice(e * self.agents_per_env, (e + 1) * self.agents_per_env)
            if done[rows].all():  # the episode of the copy ended: new map in the same step
                self._new_sim(e, self._next_seed())
                if e == 0 and self._frames is not None:
                    self._frames.begin(self._copy0_frame)
            elif done[rows].any():
                raise EnvError(
                    f"mettagrid copy {e}: only some agents ended their episode "
                    "(this adapter expects the whole copy to end together)"
                )
        returns, lengths = self.tracker.update(reward, done)
        return StepResult(self.obs.copy(), reward, terminated, truncated, final_obs, returns, lengths)

    def close(self) -> None:
        for e, sim in enumerate(self._sims):
            if sim is not None:
                sim.close()
                self._sims[e] = None


def build(cfg: EnvConfig, num_envs: int, seed: int) -> MettaGridVecEnv:
    """The registry's builder of env.name=mettagrid."""
    m = cfg.mettagrid
    return MettaGridVecEnv(num_envs, m.map, m.agents, m.size, m.altars, m.walls, m.max_steps, m.obs_tokens, seed=seed)
