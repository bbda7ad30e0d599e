"""Command de-duplication by id. A command may be delivered more than once (after a
reconnect the control plane re-sends everything unfinished); the agent applies it once
and answers every later delivery with the same result. Finished results are kept for
a bounded number of ids, oldest evicted first."""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Generic, TypeVar

R = TypeVar("R")


class Seen(enum.Enum):
    NEW = "new"  # first delivery: apply it
    IN_PROGRESS = "in_progress"  # being applied: its result will follow; only ack
    DONE = "done"  # finished: send the remembered result again



class Dedup(Generic[R]):
    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._running: set[str] = set()
        self._done: OrderedDict[str, R] = OrderedDict()

    def deliver(self, command_id: str) -> tuple[Seen, R | None]:
        """Records a delivery of `command_id` and says what to do with it."""
        if command_id in self._done:
            return Seen.DONE, self._done[command_id]
        if command_id in self._running:
            return Seen.IN_PROGRESS, None
        self._running.add(command_id)
        return Seen.NEW, None

    def finish(self, command_id: str, result: R) -> None:
        """Records the result of `command_id`, evicting the oldest finished ids."""
        self._running.discard(command_id)
        self._done[command_id] = result
        self._done.move_to_end(command_id)
        while len(self._done) > self.capacity:
            self._done.popitem(last=False)

    def __len__(self) -> int:
        return len(self._running) + len(self._done)
