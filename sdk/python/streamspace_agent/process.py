"""The process runtime: a session is the template's command, run as a local process in
a session (and process group) of its own on a free loopback port.

- start: spawn WorkloadSpec.command (argv, no shell) with ${PORT}, ${SESSION_ID}, ${USER}
  and ${HOME} substituted and set in its environment (plus WorkloadSpec.env); RUNNING once
  127.0.0.1:PORT accepts a TCP connection, url http://127.0.0.1:<port>/. Starting a
  session that runs succeeds and changes nothing (it is woken if hibernated).
- hibernate = SIGSTOP to the group (HIBERNATED), wake = SIGCONT, stop = SIGTERM, then
  SIGKILL after a grace period; stopping an unknown session succeeds and reports STOPPED.
- a process that exits on its own: FAILED, reason CRASH_LOOP.
- state: <data>/sessions/<id>.json, written before the spawn (pid 0, a unique tag in the
  process's environment) and again with the pid and its kernel start time. A restarted
  agent re-adopts every live process (same pid and same start time, so a reused pid is
  not mistaken for it) and lists it in Hello's inventory.

The record's fields are the Rust agent's, so either agent re-adopts the other's sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Mapping

from . import names
from ._gen.streamspace.v1 import agent_pb2 as pb
from ._gen.streamspace.v1 import common_pb2 as cpb
from .ports import PortAllocator, PortRangeError
from .status import StatusSink, make_status

log = logging.getLogger(__name__)

P = cpb.SessionPhase
R = cpb.FailureReason

# The environment variable carrying a spawn's unique tag.
SPAWN_ENV = "STREAMSPACE_SPAWN"
READY_TIMEOUT = 60.0


class RuntimeError_(Exception):
    """A failed action, with a typed FailureReason and whether a retry can help."""

    def __init__(self, reason: cpb.FailureReason, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


def substitute(arg: str, variables: Mapping[str, str]) -> str:
    """Replaces every "${NAME}" of `variables` in `arg`, in one pass (a value is never
    substituted again); nothing else is expanded: no shell, no $NAME."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: variables.get(m.group(1), m.group(0)), arg)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, kernel start time) of `pid` from /proc/<pid>/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = s[s.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int, start_time: int) -> bool:
    """Whether the process we started (pid and start time) exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[1] == start_time and st[0] not in ("Z", "X")


def find_tagged(tag: str) -> tuple[int, int] | None:
    """The session leader whose environment carries STREAMSPACE_SPAWN=<tag>, as (pid, start time)."""
    needle = f"{SPAWN_ENV}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle not in env.split(b"\0"):
            continue
        pid = int(entry)
        st = proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        with contextlib.suppress(OSError):
            found.append((os.getpgid(pid) != pid, pid, st[1]))
    found.sort()
    return (found[0][1], found[0][2]) if found else None


def signal_group(pid: int, sig: int) -> None:
    """Signals the session's process group (the process itself if it has none yet)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    except OSError:
        pass


@dataclass
class ProcState:
    """What survives an agent restart, per session (sessions/<id>.json)."""

    session: str
    user: str
    # 0 while the record is only an intent (written before the spawn).
    pid: int
    spawn_tag: str
    # Kernel start time of pid (/proc/<pid>/stat field 22): tells our process from a
    # later one that reused the pid.
    start_time: int
    port: int
    hibernated: bool
    home: str
    persistent_home: bool

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def workload(self) -> str:
        return f"pid {self.pid}"


@dataclass
class _Proc:
    state: ProcState
    ready: bool = False
    stopping: bool = False
    monitor: asyncio.Task | None = field(default=None, repr=False)


class ProcessRuntime:
    def __init__(
        self,
        data_dir: str,
        status: StatusSink,
        ports: PortAllocator,
        max_sessions: int = 0,
        stop_grace: float = 10.0,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.root = data_dir
        self.status = status
        self.ports = ports
        self.max_sessions = max_sessions
        self.stop_grace = stop_grace
        self.ready_timeout = ready_timeout
        self._procs: dict[str, _Proc] = {}
        self._lock = asyncio.Lock()
        for sub in ("sessions", "logs", "homes", "scratch"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    # -- files -----------------------------------------------------------------------

    def _path(self, sub: str, name: str) -> str:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise RuntimeError_(R.FAILURE_REASON_INVALID, f"{sub}: not one path component: {names.quote(name)}")
        return os.path.join(self.root, sub, name)

    def _state_path(self, session: str) -> str:
        return self._path("sessions", f"{session}.json")

    def _save(self, st: ProcState) -> None:
        path = self._state_path(st.session)
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(asdict(st), f, indent=2)
            os.replace(tmp, path)
        except OSError as e:
            raise RuntimeError_(R.FAILURE_REASON_PLATFORM, f"writing session state: {e.strerror}", True) from None

    def _forget(self, session: str) -> None:
        with contextlib.suppress(OSError, RuntimeError_):
            os.remove(self._state_path(session))

    def _remove_home(self, home: str) -> None:
        # Only a directory strictly inside homes/ or scratch/ (a record may hold any path).
        for sub in ("homes", "scratch"):
            root = os.path.join(self.root, sub)
            if os.path.dirname(os.path.normpath(home)) == root and os.path.basename(home) not in ("", ".", ".."):
                if os.path.islink(home):
                    os.remove(home)
                else:
                    shutil.rmtree(home, ignore_errors=True)
                return
        log.warning("not removing home %r: not directly inside homes/ or scratch/", home)

    # -- re-adoption -----------------------------------------------------------------

    async def open(self) -> None:
        """Re-adopts every session whose process still lives (call once, before the stream)."""
        sessions = os.path.join(self.root, "sessions")
        for entry in sorted(os.listdir(sessions)):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(sessions, entry)
            try:
                with open(path) as f:
                    st = ProcState(**json.load(f))
                names.check_session(st.session)
            except (OSError, ValueError, TypeError) as e:
                log.warning("ignoring unreadable session state %s: %s", path, e)
                continue
            if st.pid == 0:
                # The agent died while starting this session: maybe it spawned, maybe not.
                found = find_tagged(st.spawn_tag) if st.spawn_tag else None
                if found is None:
                    log.info("session %s: an interrupted start spawned nothing", st.session)
                    self._forget(st.session)
                    continue
                st.pid, st.start_time = found
                self._save(st)
            if not alive(st.pid, st.start_time):
                log.info("session %s: process %d gone while the agent was away", st.session, st.pid)
                self._forget(st.session)
                continue
            log.info("session %s: re-adopted process %d on port %d", st.session, st.pid, st.port)
            self.ports.adopt(st.port)
            p = _Proc(st)
            self._procs[st.session] = p
            if st.hibernated:
                # Level-triggered: a session recorded hibernated is stopped.
                signal_group(st.pid, signal.SIGSTOP)
            else:
                # Whether it answers is known only after a probe: quick one now, so the
                # inventory says RUNNING for a session that serves.
                p.ready = await _connects(st.port)
            self._watch(p, None)

    # -- observation -----------------------------------------------------------------

    def _report(self, st: ProcState, phase: cpb.SessionPhase,
                reason: cpb.FailureReason = R.FAILURE_REASON_UNSPECIFIED, message: str = "") -> None:
        url = st.url() if phase == P.SESSION_PHASE_RUNNING else ""
        self.status.report(st.session, phase, url, reason, message, st.workload())

    def _phase(self, p: _Proc) -> cpb.SessionPhase:
        if p.state.hibernated:
            return P.SESSION_PHASE_HIBERNATED
        return P.SESSION_PHASE_RUNNING if p.ready else P.SESSION_PHASE_PROVISIONING

    def inventory(self) -> list[pb.SessionStatus]:
        out = []
        for p in self._procs.values():
            phase = self._phase(p)
            url = p.state.url() if phase == P.SESSION_PHASE_RUNNING else ""
            out.append(make_status(p.state.session, phase, url, workload=p.state.workload()))
        return out

    def in_use(self) -> cpb.Capacity:
        return cpb.Capacity(max_sessions=len(self._procs))

    def _watch(self, p: _Proc, child: asyncio.subprocess.Process | None) -> None:
        p.monitor = asyncio.get_running_loop().create_task(self._monitor(p, child))

    async def _monitor(self, p: _Proc, child: asyncio.subprocess.Process | None) -> None:
        """Reports RUNNING once the port accepts connections, FAILED when the process
        exits while nobody stopped it (or never opens its port)."""
        st = p.state

        async def wait_exit() -> str:
            if child is not None:
                code = await child.wait()
                if code < 0:
                    return f"the process was killed by signal {-code}"
                return f"the process exited (status {code})"
            while alive(st.pid, st.start_time):
                await asyncio.sleep(0.25)
            return "the process exited"

        async def probe() -> None:
            # The deadline counts only time awake: a session hibernated before it opened
            # its port is not failed for it.
            waited, last = 0.0, time.monotonic()
            while not p.ready:
                now = time.monotonic()
                if not p.state.hibernated:
                    waited += now - last
                    if await _connects(st.port):
                        p.ready = True
                        if not p.stopping and not p.state.hibernated:
                            self._report(st, P.SESSION_PHASE_RUNNING)
                        return
                    if waited > self.ready_timeout and not p.stopping:
                        self._report(
                            st, P.SESSION_PHASE_FAILED, R.FAILURE_REASON_CRASH_LOOP,
                            f"the process did not open port {st.port} within {self.ready_timeout:.0f}s",
                        )
                        return
                last = now
                await asyncio.sleep(0.05)

        exit_task = asyncio.ensure_future(wait_exit())
        probe_task = asyncio.ensure_future(probe())
        try:
            await asyncio.wait({exit_task, probe_task}, return_when=asyncio.FIRST_COMPLETED)
            why = await exit_task
        finally:
            probe_task.cancel()
            exit_task.cancel()
        if p.stopping or self._procs.get(st.session) is not p:
            return
        del self._procs[st.session]
        self.ports.release(st.port)
        self._forget(st.session)
        log.warning("session %s: %s (pid %d)", st.session, why, st.pid)
        self._report(st, P.SESSION_PHASE_FAILED, R.FAILURE_REASON_CRASH_LOOP, why)

    # -- actions -----------------------------------------------------------------------

    async def start(self, session: str, start: pb.StartSession) -> None:
        _check(session, start.user)
        async with self._lock:
            p = self._procs.get(session)
            if p is not None and alive(p.state.pid, p.state.start_time):
                if p.state.hibernated:
                    signal_group(p.state.pid, signal.SIGCONT)
                    p.state.hibernated = False
                    self._save(p.state)
                self._report(p.state, self._phase(p), message="already running")
                return
            if p is not None:
                # Died, and its monitor has not noticed yet.
                p.stopping = True
                self._procs.pop(session, None)
                self.ports.release(p.state.port)
            if self.max_sessions and len(self._procs) >= self.max_sessions:
                raise RuntimeError_(
                    R.FAILURE_REASON_CAPACITY,
                    f"this agent runs {len(self._procs)} of {self.max_sessions} sessions",
                    True,
                )
            p, child = await self._spawn(session, start)
            self._procs[session] = p
            self._report(p.state, P.SESSION_PHASE_PROVISIONING, message="process started; waiting for its port")
            self._watch(p, child)

    async def _spawn(
        self, session: str, start: pb.StartSession
    ) -> tuple[_Proc, asyncio.subprocess.Process]:
        w = start.workload
        if not w.command:
            raise RuntimeError_(
                R.FAILURE_REASON_INVALID,
                f"template {names.quote(start.template)} has no command; the process runtime runs commands, not images",
            )
        program = shutil.which(w.command[0]) if "/" not in w.command[0] else (
            w.command[0] if os.access(w.command[0], os.X_OK) and os.path.isfile(w.command[0]) else None
        )
        if program is None:
            raise RuntimeError_(
                R.FAILURE_REASON_IMAGE,
                f"command {names.quote(w.command[0])} cannot be executed: not found or not executable",
            )
        home = (
            self._path("homes", start.user) if w.persistent_home else self._path("scratch", session)
        )
        try:
            claim = self.ports.allocate()
        except PortRangeError as e:
            raise RuntimeError_(R.FAILURE_REASON_PLATFORM, str(e), True) from None
        st = ProcState(
            session=session, user=start.user, pid=0, spawn_tag=str(uuid.uuid4()), start_time=0,
            port=claim.port, hibernated=False, home=home, persistent_home=w.persistent_home,
        )
        variables = {"PORT": str(claim.port), "SESSION_ID": session, "USER": start.user, "HOME": home}
        argv = [substitute(a, variables) for a in w.command]
        env = dict(os.environ)
        env.update(w.env)
        env.update(variables)
        env[SPAWN_ENV] = st.spawn_tag
        try:
            os.makedirs(home, exist_ok=True)
            # The intent before the spawn: an agent killed in between finds the process by its tag.
            self._save(st)
            logf = open(self._path("logs", f"{session}.log"), "ab")
        except OSError as e:
            self.ports.release(claim.port)
            self._forget(session)
            if claim.lock_fd is not None:
                os.close(claim.lock_fd)
            raise RuntimeError_(R.FAILURE_REASON_PLATFORM, f"preparing the session: {e.strerror}", True) from None
        except RuntimeError_:
            self.ports.release(claim.port)
            if claim.lock_fd is not None:
                os.close(claim.lock_fd)
            raise
        try:
            child = await asyncio.create_subprocess_exec(
                program, *argv[1:],
                stdin=claim.lock_fd if claim.lock_fd is not None else asyncio.subprocess.DEVNULL,
                stdout=logf, stderr=logf, env=env, cwd=home,
                # setsid(): a session of its own, so the process (even hibernated) survives
                # the agent's death and its group can be signalled as one.
                start_new_session=True,
            )
        except OSError as e:
            self.ports.release(claim.port)
            self._forget(session)
            raise RuntimeError_(
                R.FAILURE_REASON_IMAGE, f"command {names.quote(argv[0])} cannot be executed: {e.strerror}"
            ) from None
        finally:
            logf.close()
            if claim.lock_fd is not None:
                os.close(claim.lock_fd)
        st.pid = child.pid
        stat = proc_stat(child.pid)
        st.start_time = stat[1] if stat else 0
        try:
            self._save(st)
        except RuntimeError_:
            signal_group(child.pid, signal.SIGKILL)
            await child.wait()
            self.ports.release(claim.port)
            self._forget(session)
            raise
        log.info("session %s: started pid %d on port %d: %s", session, child.pid, claim.port, argv)
        return _Proc(st), child

    async def stop(self, session: str, delete_home: bool) -> None:
        _check(session, None)
        async with self._lock:
            p = self._procs.pop(session, None)
            if p is None:
                self._forget(session)
                self.status.report(session, P.SESSION_PHASE_STOPPED, message="not running")
                return
            p.stopping = True
        # Outside the table's lock: a process taking its grace period to exit does not hold
        # up other sessions (this session's next command waits in the stream's order).
        st = p.state
        signal_group(st.pid, signal.SIGTERM)
        signal_group(st.pid, signal.SIGCONT)
        if not await _gone_within(st, self.stop_grace):
            log.warning("session %s: pid %d ignored SIGTERM; sending SIGKILL", session, st.pid)
            signal_group(st.pid, signal.SIGKILL)
            await _gone_within(st, 5.0)
        # What is left of the group (children that outlived the leader) goes too.
        signal_group(st.pid, signal.SIGKILL)
        if p.monitor is not None:
            p.monitor.cancel()
        self.ports.release(st.port)
        self._forget(session)
        if not st.persistent_home or delete_home:
            self._remove_home(st.home)
        log.info("session %s: pid %d stopped", session, st.pid)
        self._report(st, P.SESSION_PHASE_STOPPED)

    async def hibernate(self, session: str) -> None:
        _check(session, None)
        async with self._lock:
            p = self._get(session)
            signal_group(p.state.pid, signal.SIGSTOP)
            if not p.state.hibernated:
                p.state.hibernated = True
                self._save(p.state)
            self._report(p.state, P.SESSION_PHASE_HIBERNATED, message="process stopped (SIGSTOP)")

    async def wake(self, session: str) -> None:
        _check(session, None)
        async with self._lock:
            p = self._get(session)
            signal_group(p.state.pid, signal.SIGCONT)
            if p.state.hibernated:
                p.state.hibernated = False
                self._save(p.state)
            self._report(p.state, self._phase(p))

    def _get(self, session: str) -> _Proc:
        p = self._procs.get(session)
        if p is None:
            raise RuntimeError_(R.FAILURE_REASON_NOT_FOUND, f"session {session} does not run on this agent")
        return p

    def close(self) -> None:
        """Stops watching (the agent exits; session processes keep running and are
        re-adopted by the next agent)."""
        for p in self._procs.values():
            if p.monitor is not None:
                p.monitor.cancel()


def _check(session: str, user: str | None) -> None:
    try:
        names.check_session(session)
        if user is not None:
            names.check_user(user)
    except names.NameError_ as e:
        raise RuntimeError_(R.FAILURE_REASON_INVALID, str(e)) from None


async def _connects(port: int) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, asyncio.TimeoutError):
        return False
    w.close()
    with contextlib.suppress(Exception):
        await w.wait_closed()
    return True


async def _gone_within(st: ProcState, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while alive(st.pid, st.start_time):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.025)
    return True
