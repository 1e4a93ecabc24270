"""An outbox relay as a process of its own that SIGKILLs itself at a crash point (test_relay.py).

    python -m services.score.tests.relay_process --die-at committed --round 3

Settings come from the ``SCOREBOARD_*`` environment, as for the service.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import get_args

from prometheus_client import CollectorRegistry

from score.metrics import ScoreMetrics
from score.relay import OutboxRelay, Stage
from score.settings import Settings


def main() -> None:
    """Relay until the chosen stage of the chosen round, then die without any cleanup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--die-at", choices=get_args(Stage), required=True)
    parser.add_argument("--round", type=int, default=1, help="die in this round (1 = the first)")
    args = parser.parse_args()
    reached = 0

    async def checkpoint(stage: Stage) -> None:
        nonlocal reached
        if stage == args.die_at:
            reached += 1
            if reached == args.round:
                os.kill(os.getpid(), signal.SIGKILL)

    async def relay() -> None:
        metrics = ScoreMetrics.create(CollectorRegistry())
        await OutboxRelay(Settings.load(), metrics, checkpoint=checkpoint).run(asyncio.Event())

    asyncio.run(relay())


if __name__ == "__main__":
    main()
