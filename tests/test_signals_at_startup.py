"""A SIGINT or SIGTERM at any moment of `carrystate train`, from its start to its exit, ends it with code 130 and
one line on stderr, with either a resumable checkpoint or the word that none was written yet: never silence, never
a traceback, never a run that goes on. "Its start" is the moment `main` runs, seen in the child's /proc status as a
handler for SIGTERM (a Ctrl-C while Python starts and imports the command line module, before that, is Python's own
KeyboardInterrupt). The delays after it land in the imports, the kernel load, the env and policy build, and
training; whatever the moment, the outcome must be one of the two."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from carrystate.checkpoint import checkpoints, load_checkpoint
from tests.helpers import HANG_S, SMALL_TMAZE, child, wait_for


def _handles(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler of its own for `sig` (its caught-signal mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(caught >> (sig - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the signal mask from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3, 1.0, 2.5])
def test_signal_at_any_moment_of_startup_ends_with_130_and_one_line(tmp_path, sig, delay):
    args = ["-m", "carrystate.cli", "train", "trainer.run_name=s", "trainer.total_timesteps=100000000", *SMALL_TMAZE]
    with child([*args, "trainer.checkpoint_interval=1"], cwd=tmp_path) as proc:
        # main() handles both at once; SIGINT has Python's own handler from the start, so watch SIGTERM's
        wait_for(lambda: _handles(proc.pid, signal.SIGTERM), proc, "carrystate's handlers")
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=HANG_S)
    run = tmp_path / "runs" / "s"
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    written = checkpoints(run) if run.exists() else []
    if written:  # a stop in training: its checkpoint is marked and resumable
        assert load_checkpoint(run)["meta"]["interrupted"] in ("SIGINT", "SIGTERM"), out
    else:
        stops = [line for line in err.splitlines() if line.startswith("carrystate: stopped")]
        said = f"carrystate: stopped by {sig.name}; no checkpoint was written yet"
        assert stops in ([said], [f"{said} in runs/s"]), err
