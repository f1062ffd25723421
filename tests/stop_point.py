"""`python tests/stop_point.py PHASE ITERATION INDEX train ARGS...` runs `carrystate train ARGS...` and prints
the line `@stop-point` (flushed) when the run is about to take rollout step INDEX (PHASE=collect) or optimizer
step INDEX (PHASE=update) of its iteration ITERATION + 1, then goes on: a test waits for that line and sends a
real signal, which lands wherever the run has got to by then (tests/test_resume_after_stop.py)."""

from __future__ import annotations

import itertools
import sys

from carrystate import cli
from carrystate.learner import Learner
from carrystate.rollout import Rollout


def _marking(should_stop, index: int):
    calls = itertools.count()

    def marked() -> bool:
        if next(calls) == index:
            print("@stop-point", flush=True)
        return should_stop()

    return marked


def main() -> int:
    phase, iteration, index, args = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    if phase == "collect":
        collect, rollouts = Rollout.collect, itertools.count()

        def marked_collect(self, policy, buffer, generator, should_stop=lambda: False):
            if next(rollouts) == iteration:  # a fresh run: its n-th rollout is iteration n + 1's
                should_stop = _marking(should_stop, index)
            return collect(self, policy, buffer, generator, should_stop)

        Rollout.collect = marked_collect
    else:
        learn = Learner.learn

        def marked_learn(self, number, should_stop=lambda: False):
            return learn(self, number, _marking(should_stop, index) if number == iteration + 1 else should_stop)

        Learner.learn = marked_learn
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
