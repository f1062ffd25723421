"""Episode videos: the frames of one env copy, recorded while an evaluation runs, written as MP4 or GIF.

An evaluation with `video=N` (`carrystate eval RUN --video N`, `carrystate.evaluate(..., video=N)`):
1. builds its env so that it can render (`envs.make_env(..., render=True)`: copies stepped in this process; a
   gymnasium id made with `render_mode="rgb_array"`, which it is only then);
2. has the batch that holds row 0 film its first copy into an `EpisodeFrames` (`film`: the batch's
   `record_frames(frames)`, which gymnasium and MettaGrid batches have, and a user's own VecEnv may have);
3. steps the policy as evaluation always does (`Rollout.run_episodes`, the one step collection and evaluation
   share): the frames show that evaluation's actions, chosen with the recurrent state it carries. It runs on
   past its episode count until the filmed copy has ended N episodes; its statistics still hold the first ones;
4. writes episode k as `<folder>/eval_episode_<k>.mp4` (`write`).

Frames: one of an episode's first observation, then one after each step, rendered inside the copy before the
batch's same-step autoreset starts the next episode, so an episode of T steps gives T+1 frames and the last one
shows where it ended. Rendering changes nothing the policy sees.

Formats: MP4 (H.264, yuv420p, by the ffmpeg that imageio-ffmpeg brings) where it is installed, else GIF
(Pillow). H.264 needs even sizes: an odd width or height gets one black column or row in the MP4. A GIF holds
consecutive identical frames once, its display time the sum of theirs (Pillow merges them): it plays
(T+1) frame intervals but may hold fewer than T+1 frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from carrystate.errors import ConfigError, EnvError

if TYPE_CHECKING:
    from carrystate.envs.base import VecEnv

VIDEO_FOLDER = "videos"
STEM = "eval_episode_"  # eval_episode_<k>.<mp4|gif>
FORMATS = ("mp4", "gif")
NEEDS = "--video needs an env that renders rgb_array frames (gymnasium with render mode rgb_array, MettaGrid)"


class EpisodeFrames:
    """The frames of one env copy's first `episodes` episodes, fed by the env as they happen: `begin` at an
    episode's first observation, `step` after each of its steps (`ended` at its last). Both take a function
    that renders the copy now, called only while episodes are still wanted. `fps`: the env's frame rate where
    it states one; `source`: how errors name the env."""

    def __init__(self, episodes: int, fps: float = 30.0, source: str = "the env"):
        if episodes < 1:
            raise ConfigError(f"--video={episodes}: the number of episodes to film must be at least 1")
        self.wanted = episodes
        self.episodes: list[list[np.ndarray]] = []  # finished episodes, each T+1 frames [height, width, 3] uint8
        self.current: list[np.ndarray] | None = None  # the episode being filmed
        self.fps, self.source = fps, source

    @property
    def done(self) -> bool:
        """All wanted episodes have ended."""
        return len(self.episodes) >= self.wanted

    def begin(self, render: Callable[[], np.ndarray]) -> None:
        """A new episode starts (one left unfinished by a reset is dropped)."""
        self.current = None if self.done else [self._frame(render())]

    def step(self, render: Callable[[], np.ndarray], ended: bool) -> None:
        """A step of the episode was taken; `ended`: it was the episode's last."""
        if self.current is None:
            return
        self.current.append(self._frame(render()))
        if ended:
            self.episodes.append(self.current)
            self.current = None

    def _frame(self, frame) -> np.ndarray:
        frame = np.asarray(frame) if frame is not None else None
        if frame is None or frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.dtype != np.uint8:
            got = "None" if frame is None else f"{frame.dtype} {frame.shape}"
            raise EnvError(f"{self.source}: render returned {got}; a video frame is a [height, width, 3] uint8 array")
        if self.current and frame.shape != self.current[0].shape:
            raise EnvError(
                f"{self.source}: render returned a frame of shape {frame.shape} within an episode whose "
                f"first frame was {self.current[0].shape}"
            )
        return frame[..., :3].copy()


@dataclass
class Video:
    """A written episode: its file and its length in steps (the file holds steps + 1 frames, see the module doc)."""

    path: Path
    steps: int


def film(env: VecEnv, frames: EpisodeFrames, name: str) -> None:
    """Have the batch of `env` that holds row 0 film its first copy into `frames`; `name` (e.g. `env.name=tmaze`)
    names the env in the ConfigError for a batch that cannot."""
    batch = env
    while getattr(batch, "batches", None):  # double-buffered: the first batch holds row 0
        batch = batch.batches[0][1]
    record = getattr(batch, "record_frames", None)
    if not callable(record):
        raise ConfigError(f"{NEEDS}; {name} renders none ({type(batch).__name__} has no record_frames)")
    record(frames)


def ffmpeg_available() -> bool:
    """imageio and imageio-ffmpeg are installed and the latter finds its ffmpeg (MP4 can be written)."""
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg
    except ImportError:
        return False
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # no binary for this platform, and none on the PATH or in IMAGEIO_FFMPEG_EXE
        return False
    return True


def video_format() -> str:
    """The format videos are written in: "mp4" where imageio-ffmpeg can encode, else "gif" (imageio's Pillow
    writer); a ConfigError where imageio itself is missing."""
    if ffmpeg_available():
        return "mp4"
    try:
        import imageio  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"--video needs imageio: pip install -e '.[video]' ({err})") from None
    return "gif"


def write(episodes: list[list[np.ndarray]], folder: Path, fps: float, fmt: str | None = None) -> list[Video]:
    """Write each episode's frames as `folder`/eval_episode_<k>.<fmt> (`fmt`: mp4 or gif; default `video_format()`),
    after removing the videos an earlier evaluation left there, and return them in order."""
    fmt = fmt or video_format()
    if fmt not in FORMATS:
        raise ValueError(f"video format {fmt!r} is not one of {FORMATS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in videos_in(folder):
        old.unlink()
    out = []
    for k, frames in enumerate(episodes):
        path = folder / f"{STEM}{k}.{fmt}"
        (_write_mp4 if fmt == "mp4" else _write_gif)(path, frames, fps)
        out.append(Video(path, len(frames) - 1))
    return out


def _write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio

    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))  # H.264 in yuv420p needs even sizes
    writer = imageio.get_writer(
        path,
        format="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=1,  # no resizing to multiples of 16: the video keeps the env's frame size
        ffmpeg_log_level="error",
    )
    try:
        for frame in frames:
            writer.append_data(np.pad(frame, pad) if any(p for p, _ in pad[:2]) else frame)
    finally:
        writer.close()


def gif_frame_ms(fps: float) -> int:
    """A GIF frame's display time in milliseconds for `fps`: GIF counts hundredths of a second, and browsers show
    frames shorter than 20 ms for 100 ms."""
    return max(20, 10 * round(100 / fps))


def _write_gif(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(frames), extension=".gif", plugin="pillow", duration=gif_frame_ms(fps), loop=0)


def videos_in(folder: Path) -> list[Path]:
    """The evaluation videos in `folder`, by episode number."""
    found = [p for p in Path(folder).glob(f"{STEM}*") if p.suffix[1:] in FORMATS and p.stem[len(STEM) :].isdigit()]
    return sorted(found, key=lambda p: (int(p.stem[len(STEM) :]), p.suffix))


def videos_folder(checkpoint: Path) -> Path:
    """Where an evaluation of `checkpoint` writes its videos: `RUN/videos`, for a run folder `RUN` or one of its
    checkpoint folders (`RUN/checkpoints/iter_N`)."""
    checkpoint = Path(checkpoint)
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
    return run / VIDEO_FOLDER
