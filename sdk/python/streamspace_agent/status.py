"""Where the runtime reports session transitions and where the stream reads them.

The sink keeps the latest status of every session and the set of sessions whose latest
status is unsent. A report overwrites the session's entry (older unsent states are
superseded, not queued), so it is bounded by the number of sessions and never blocks
the runtime; a session's entry is forgotten once its STOPPED status was taken for
sending. A crash observed while disconnected is still known after the reconnect: the
stream sends a session's latest status after every command result (see client.py).
"""

from __future__ import annotations

import asyncio
import time

from ._gen.streamspace.v1 import agent_pb2 as pb
from ._gen.streamspace.v1 import common_pb2 as cpb

P = cpb.SessionPhase
R = cpb.FailureReason


def make_status(
    session: str,
    phase: cpb.SessionPhase,
    url: str = "",
    reason: cpb.FailureReason = R.FAILURE_REASON_UNSPECIFIED,
    message: str = "",
    workload: str = "",
) -> pb.SessionStatus:
    s = pb.SessionStatus(
        session_id=session, phase=phase, url=url, reason=reason, message=message, workload=workload
    )
    s.observed_at.FromNanoseconds(time.time_ns())
    return s


class StatusSink:
    def __init__(self) -> None:
        self._latest: dict[str, pb.SessionStatus] = {}
        # Sessions whose latest status is unsent, in the order they became so (dict = ordered set).
        self._dirty: dict[str, None] = {}
        self._changed = asyncio.Event()

    @property
    def event(self) -> asyncio.Event:
        """Set on every report (and by whoever else wakes the stream's sender)."""
        return self._changed

    def put(self, s: pb.SessionStatus) -> None:
        """Records a session's current state; it replaces any unsent older one."""
        self._dirty.pop(s.session_id, None)
        self._dirty[s.session_id] = None
        self._latest[s.session_id] = s
        self._changed.set()

    def report(self, session: str, phase: cpb.SessionPhase, url: str = "",
               reason: cpb.FailureReason = R.FAILURE_REASON_UNSPECIFIED,
               message: str = "", workload: str = "") -> None:
        self.put(make_status(session, phase, url, reason, message, workload))

    async def changed(self) -> None:
        """Returns once something was reported since the last call."""
        await self._changed.wait()
        self._changed.clear()

    def _take(self, session: str) -> pb.SessionStatus | None:
        self._dirty.pop(session, None)
        s = self._latest.get(session)
        if s is not None and s.phase == P.SESSION_PHASE_STOPPED:
            del self._latest[session]
        return s

    def take_dirty(self) -> list[pb.SessionStatus]:
        """The latest status of every session whose latest is unsent; sent from now on."""
        out = []
        for session in list(self._dirty):
            s = self._take(session)
            if s is not None:
                out.append(s)
        return out

    def take_latest(self, session: str) -> pb.SessionStatus | None:
        """The session's latest status, to send now; None if nothing was observed about
        it since its last STOPPED."""
        return self._take(session)

    def clear_dirty(self) -> None:
        """Marks everything sent: a new stream starts with Hello's inventory, a snapshot
        taken after this. The latest states are kept (a result replayed later is followed
        by its session's latest state), except STOPPED ones."""
        self._dirty.clear()
        for session in [k for k, v in self._latest.items() if v.phase == P.SESSION_PHASE_STOPPED]:
            del self._latest[session]

    def __len__(self) -> int:
        return len(self._latest)
