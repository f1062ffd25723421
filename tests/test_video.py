"""Episode videos (`carrystate eval RUN --video N`, carrystate/video.py): frames of env copy 0 taken during the
evaluation itself, one per step plus the reset, in the env's own frame size; MP4, or GIF without imageio-ffmpeg;
embedded in report.html; a one-line error for an env that cannot render."""

from __future__ import annotations

import re

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image, ImageSequence

import carrystate
from carrystate import video
from carrystate.cli import main
from carrystate.config import load_config
from carrystate.envs import make_env
from carrystate.envs.gym_adapter import GymVecEnv
from carrystate.envs.mettagrid_adapter import CELL_PIXELS, MettaGridVecEnv
from tests.helpers import ROOT, SMALL_TMAZE

TINY = ["trainer.update_epochs=1", "trainer.checkpoint_interval=1"]
RUNS = {
    # CartPole without velocity, 4 copies × 32 steps, 2 iterations
    "cartpole": (
        "cartpole_novel.yaml",
        ["env.num_envs=4", "trainer.batch_size=128", "trainer.minibatch_size=128", "trainer.total_timesteps=256"],
    ),
    # MiniGrid-MemoryS7 (Dict observations), 2 copies × 64 steps, 1 iteration
    "minigrid": (
        "minigrid_memory.yaml",
        ["env.num_envs=2", "trainer.batch_size=128", "trainer.minibatch_size=128", "trainer.total_timesteps=128"],
    ),
    # MettaGrid arena of 2 agents on a 7×7 map in 2 double-buffered batches stepped in this process, 6-step episodes
    "mettagrid": (
        "mettagrid_arena.yaml",
        [
            "env.num_envs=2",
            "env.workers=0",
            "env.mettagrid.agents=2",
            "env.mettagrid.size=7",
            "env.mettagrid.altars=2",
            "env.mettagrid.walls=2",
            "env.mettagrid.max_steps=6",
            "env.mettagrid.obs_tokens=100",
            "trainer.batch_size=64",
            "trainer.bptt_horizon=16",
            "trainer.minibatch_size=64",
            "trainer.total_timesteps=64",
        ],
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name → the folder of a tiny trained run of that env (trained when first asked for)."""
    made = {}

    def run(name: str):
        if name not in made:
            config, overrides = RUNS[name]
            folder = tmp_path_factory.mktemp(name) / "run"
            carrystate.train(ROOT / "configs" / config, [*overrides, *TINY], run_dir=folder)
            made[name] = folder
        return made[name]

    return run


def gym_render(env_id: str) -> tuple[tuple[int, ...], float]:
    """The shape of the env's own `render()` frame (rgb_array), and its frame rate."""
    env = gym.make(env_id, render_mode="rgb_array")
    try:
        env.reset(seed=0)
        return env.render().shape, env.metadata["render_fps"]
    finally:
        env.close()


def mp4_frames(path) -> tuple[int, tuple[int, ...]]:
    """(frames decoded, frame shape [height, width, 3]) of the MP4 `path`."""
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        shapes = [frame.shape for frame in reader]
    finally:
        reader.close()  # ends its ffmpeg
    return len(shapes), shapes[0]


def gif_durations(path) -> tuple[list[int], tuple[int, ...]]:
    """(each stored frame's display time in ms, frame shape [height, width, 3]) of the GIF `path`. Pillow stores
    consecutive identical frames once, with their times summed, so the times count the frames shown."""
    with Image.open(path) as gif:
        return [frame.info["duration"] for frame in ImageSequence.Iterator(gif)], (gif.height, gif.width, 3)


def printed(out: str, label: str) -> list[str]:
    """The words of the printed line `label: ...`."""
    return re.search(rf"^{label}: (.*)$", out, re.M).group(1).split()


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
@pytest.mark.parametrize(
    ("name", "env_id"),
    [("cartpole", "CartPole-v1"), ("minigrid", "MiniGrid-MemoryS7-v0")],
    ids=["cartpole", "minigrid"],
)
def test_eval_video_has_a_frame_per_step_and_the_reset_at_the_envs_size(runs, name, env_id, fmt, monkeypatch, capsys):
    import minigrid  # noqa: F401 (registers MiniGrid's ids)

    run = runs(name)
    if fmt == "gif":
        monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    # one copy: the evaluation's own episode lengths (printed with -v) are those of the filmed copy
    args = ["eval", str(run), "--episodes", "2", "--num-envs", "1", "--video", "2", "-v", "--seed", "7"]
    assert main(args) == 0
    out = capsys.readouterr().out
    lengths = [int(n) for n in printed(out, "lengths")]
    paths = [run / "videos" / f"eval_episode_{k}.{fmt}" for k in range(2)]
    assert sorted((run / "videos").iterdir()) == paths
    for path, length in zip(paths, lengths):
        assert f"video: {path} ({length} steps, {length + 1} frames)" in out
        render_shape, fps = gym_render(env_id)
        if fmt == "gif":
            durations, shape = gif_durations(path)
            assert sum(durations) == (length + 1) * video.gif_frame_ms(fps)
        else:
            count, shape = mp4_frames(path)
            assert count == length + 1
        assert shape == render_shape


def test_filming_changes_no_episode(runs, tmp_path):
    agent = carrystate.load(runs("cartpole"))
    plain = carrystate.evaluate(agent, episodes=6, num_envs=2, seed=3)
    filmed = carrystate.evaluate(agent, episodes=6, num_envs=2, seed=3, video=2, video_dir=tmp_path)
    assert filmed.episode_lengths == plain.episode_lengths and filmed.episode_returns == plain.episode_returns
    assert [v.path.name for v in filmed.videos] == ["eval_episode_0.mp4", "eval_episode_1.mp4"]


def test_a_gym_batch_films_its_first_copy_through_its_last_step():
    cfg = load_config(ROOT / "configs" / "cartpole_novel.yaml", ["env.num_envs=3"])
    env = make_env(cfg.env, seed=0, render=True)
    frames = video.EpisodeFrames(3)
    video.film(env, frames, "env.name=gymnasium")
    assert isinstance(env, GymVecEnv) and frames.fps == 50
    rng = np.random.default_rng(0)
    env.reset(seed=5)
    copy0_lengths, t = [], 0
    while len(copy0_lengths) < 3:
        res = env.step(rng.integers(0, 2, 3))
        t += 1
        if res.terminated[0] or res.truncated[0]:
            copy0_lengths.append(t)
            t = 0
    env.close()
    assert [len(f) for f in frames.episodes] == [n + 1 for n in copy0_lengths]
    # the last frame is the ended episode's (the pole fallen or the cart out), not the next episode's first
    assert not any(np.array_equal(ep[-1], nxt[0]) for ep, nxt in zip(frames.episodes, frames.episodes[1:]))


def test_mettagrid_eval_video_paints_the_map_of_copy_zero(runs, capsys):
    run = runs("mettagrid")
    assert main(["eval", str(run), "--episodes", "1", "--video", "2"]) == 0
    out = capsys.readouterr().out
    side = (7 + 2) * CELL_PIXELS  # the map and its border
    for k in range(2):
        path = run / "videos" / f"eval_episode_{k}.mp4"
        assert f"video: {path} (6 steps, 7 frames)" in out  # every episode is truncated at max_steps
        assert mp4_frames(path) == (7, (side, side, 3))


def test_a_mettagrid_batch_films_one_frame_per_step_and_the_reset():
    env = MettaGridVecEnv(2, agents=2, size=7, altars=2, walls=2, max_steps=4, obs_tokens=100)
    frames = video.EpisodeFrames(2)
    env.record_frames(frames)
    env.reset(seed=1)
    for _ in range(8):
        env.step(np.zeros(env.num_agents, np.int64))
    env.close()
    assert [len(f) for f in frames.episodes] == [5, 5]
    assert frames.episodes[0][0].shape == (9 * CELL_PIXELS, 9 * CELL_PIXELS, 3)


def test_report_embeds_the_first_video_and_says_nothing_without_one(runs, monkeypatch, capsys):
    import shutil

    run = runs("cartpole")
    shutil.rmtree(run / "videos", ignore_errors=True)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "videos/" not in page and "<video" not in page and "Evaluation video" not in page
    assert main(["eval", str(run), "--episodes", "1", "--video", "2"]) == 0
    assert main(["report", str(run)]) == 0
    assert '<video src="videos/eval_episode_0.mp4"' in (run / "report.html").read_text()
    monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    assert main(["eval", str(run), "--episodes", "1", "--video", "1"]) == 0
    assert sorted(p.name for p in (run / "videos").iterdir()) == ["eval_episode_0.gif"]  # the MP4s replaced
    assert main(["report", str(run)]) == 0
    assert 'src="videos/eval_episode_0.gif"' in (run / "report.html").read_text()
    capsys.readouterr()


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ([*SMALL_TMAZE, "trainer.batch_size=128", "trainer.minibatch_size=128"], "env.name=tmaze"),
        (
            [
                "env.name=gymnasium",
                "env.gymnasium.id=tests.custom_envs:CarrystateCount-v0",
                "env.num_envs=2",
                "trainer.batch_size=32",
                "trainer.bptt_horizon=16",
                "trainer.minibatch_size=32",
            ],
            "env.gymnasium.id='tests.custom_envs:CarrystateCount-v0'",
        ),
    ],
    ids=["tmaze", "gymnasium-without-rgb_array"],
)
def test_an_env_that_cannot_render_gets_one_line_naming_it_and_video(tmp_path, overrides, named, capsys):
    run = tmp_path / "run"
    carrystate.train(None, [*overrides, "trainer.total_timesteps=128", *TINY], run_dir=run)
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "1", "--video", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--video" in err and named in err and "Traceback" not in err
    assert not (run / "videos").exists()
