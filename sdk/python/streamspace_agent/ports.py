"""Ports for session processes, from a LOW-HIGH range (SESSION_PORTS).

Binding port 0 and passing the number on does not work (the kernel hands the same number
out again), so ports come from a range of their own. A port is handed out only when no
live session of this agent holds it, no other agent on the host has locked it, and
nothing listens on it (a bind probe). The host-wide lock is an exclusive flock on
<lock dir>/<port> (the Rust agent's convention, default <tmp>/streamspace-ports), whose
descriptor becomes the session process's stdin: the lock lives exactly as long as the
process, across agent restarts.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import re
import socket
import tempfile
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_RANGE = "20000-29999"


class PortRangeError(ValueError):
    pass


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    @classmethod
    def parse(cls, s: str, field: str = "SESSION_PORTS") -> "PortRange":
        bad = PortRangeError(
            f"{field}: expected LOW-HIGH with 1024 <= LOW <= HIGH <= 65535, found {s[:40]!r}"
        )
        m = re.fullmatch(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*", s)
        if not m:
            raise bad
        low, high = int(m.group(1)), int(m.group(2))
        if not (1024 <= low <= high <= 65535):
            raise bad
        return cls(low, high)

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def default_lock_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "streamspace-ports")


def bindable(port: int) -> bool:
    """Whether a listener can bind `port` on every address now (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


@dataclass
class PortClaim:
    port: int
    # The locked descriptor (read-only, an empty file) or None without a usable lock dir.
    lock_fd: int | None


class PortAllocator:
    def __init__(self, port_range: PortRange, lock_dir: str | None = None) -> None:
        self.range = port_range
        self.lock_dir = lock_dir or default_lock_dir()
        self._held: set[int] = set()
        self._next = random.randrange(len(port_range))
        self._warned = False

    def adopt(self, port: int) -> None:
        """A live (re-adopted) session holds `port`."""
        self._held.add(port)

    def release(self, port: int) -> None:
        self._held.discard(port)

    def allocate(self) -> PortClaim:
        n = len(self.range)
        for k in range(n):
            off = (self._next + k) % n
            port = self.range.low + off
            if port in self._held:
                continue
            ok, fd = self._lock(port)
            if not ok:
                continue
            if not bindable(port):
                if fd is not None:
                    os.close(fd)
                continue
            self._held.add(port)
            self._next = (off + 1) % n
            return PortClaim(port, fd)
        raise PortRangeError(
            f"no free port in {self.range}: {len(self._held)} held by sessions of this agent, "
            "the rest in use"
        )

    def _lock(self, port: int) -> tuple[bool, int | None]:
        """(usable, fd): (True, fd) locked, (False, None) someone else holds it,
        (True, None) the lock directory is unusable (the bind probe alone decides)."""
        try:
            if not os.path.isdir(self.lock_dir):
                try:
                    os.mkdir(self.lock_dir, 0o1777)
                    os.chmod(self.lock_dir, 0o1777)
                except FileExistsError:
                    pass
            path = os.path.join(self.lock_dir, str(port))
            if not os.path.exists(path):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("port lock directory %s unusable (%s); ports are only probed", self.lock_dir, e)
            return True, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False, None
            return True, None
        return True, fd
