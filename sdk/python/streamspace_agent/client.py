"""The stream: dials the control plane over mTLS, says Hello with the runtime's
inventory, reads Welcome and then applies commands, streaming acks, results,
statuses and heartbeats. Reconnects forever with backoff.

The rules (agent.proto) this follows:
- Hello first, with the agent id of the certificate, protocol_version and
  supported_protocol_versions, capacity and the inventory of every live session.
- Welcome sets the heartbeat interval (heartbeat sequence starts at 1 on every
  stream), max_in_flight (never more commands applied at once) and
  max_message_bytes (no frame sent is larger: message texts are cut to fit).
- Every delivery of a command is acked, also a duplicate. A command id is applied
  once (dedup.py): a duplicate of a finished command gets the same result again,
  one still being applied gets only its ack.
- A session's commands apply in delivery order; different sessions concurrently.
- Statuses reported before a result are sent before it, and right after every
  result (fresh or replayed) goes the session's latest status (status.py).
- Drain: finish what is in flight, close, reconnect after reconnect_after.
- Attach refused with PERMISSION_DENIED, FAILED_PRECONDITION, INVALID_ARGUMENT,
  UNAUTHENTICATED or UNIMPLEMENTED cannot be fixed by retrying soon: logged as an
  error, retried after a long delay. Anything else is retried with backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc

from . import __version__
from ._gen.streamspace.v1 import agent_pb2 as pb
from ._gen.streamspace.v1 import agent_pb2_grpc as pb_grpc
from ._gen.streamspace.v1 import common_pb2 as cpb
from .backoff import Backoff
from .config import Config
from .dedup import Dedup, Seen
from .process import ProcessRuntime, RuntimeError_
from .status import StatusSink

log = logging.getLogger(__name__)

R = cpb.FailureReason

# Refusals a quick retry cannot fix: wrong identity, unsupported version, a bad frame.
FATALISH = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# Used until a Welcome says otherwise (gRPC's default message size limit).
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_HEARTBEAT = 10.0
# How long a drained stream waits for commands in flight before it closes.
DRAIN_FINISH_TIMEOUT = 30.0
# How long the control plane has to answer Hello.
WELCOME_TIMEOUT = 30.0
# A stream that lived this long resets the backoff.
STABLE_AFTER = 10.0


class StreamError(Exception):
    """The stream ended with a gRPC status (code, details)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class _Drained:
    reconnect_after: float


class Limiter:
    """At most `limit` holders at once; the limit can change (each Welcome sets it)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = 0
        self._cond = asyncio.Condition()

    async def set_limit(self, limit: int) -> None:
        async with self._cond:
            self.limit = max(1, limit)
            self._cond.notify_all()

    async def __aenter__(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.active < self.limit)
            self.active += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._cond:
            self.active -= 1
            self._cond.notify_all()


def cut(text: str, max_bytes: int) -> str:
    """At most `max_bytes` UTF-8 bytes of `text` (never inside a character), marked when cut."""
    b = text.encode()
    if len(b) <= max_bytes:
        return text
    mark = f"... ({len(b)} bytes)"
    keep = max(0, max_bytes - len(mark.encode()))
    return b[:keep].decode("utf-8", "ignore") + mark if keep else b[:max_bytes].decode("utf-8", "ignore")


def fit(frame: pb.AgentFrame, max_bytes: int) -> pb.AgentFrame:
    """The frame, with its message texts cut so it is at most `max_bytes` when encoded.
    Only free text is cut (failure and status messages); ids, urls and phases never."""
    size = frame.ByteSize()
    if size <= max_bytes:
        return frame
    out = pb.AgentFrame()
    out.CopyFrom(frame)
    texts = []
    which = out.WhichOneof("frame")
    if which == "result" and out.result.HasField("failed"):
        texts.append(out.result.failed)
    elif which == "status":
        texts.append(out.status)
    elif which == "hello":
        texts.extend(out.hello.inventory)
    for msg in sorted(texts, key=lambda m: -len(m.message.encode())):
        excess = out.ByteSize() - max_bytes
        if excess <= 0:
            break
        n = len(msg.message.encode())
        # A shorter string can also shorten its length prefix; a few spare bytes cover it.
        msg.message = cut(msg.message, max(0, n - excess - 8))
    if out.ByteSize() > max_bytes:
        log.error("a %s frame of %d bytes exceeds max_message_bytes %d even with its messages cut",
                  which, out.ByteSize(), max_bytes)
    return out


class Agent:
    def __init__(self, cfg: Config, runtime: ProcessRuntime, statuses: StatusSink) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.statuses = statuses
        self.dedup: Dedup[pb.CommandResult] = Dedup(100_000)
        self.limiter = Limiter(DEFAULT_MAX_IN_FLIGHT)
        self.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        # Finished results (with their session), sent on whichever stream is current.
        self._results: collections.deque[tuple[str, pb.CommandResult]] = collections.deque()
        self._tasks: set[asyncio.Task] = set()
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._session_users: collections.Counter[str] = collections.Counter()
        self._write_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self.attaches = 0

    # -- the reconnect loop -------------------------------------------------------------

    async def run(self, shutdown: asyncio.Event) -> None:
        backoff = Backoff(self.cfg.backoff_base, self.cfg.backoff_max)
        log.info("starting agent %s -> %s (platform %s, region %r)", self.cfg.agent_id,
                 self.cfg.control_plane_url, self.cfg.platform, self.cfg.region)
        while not shutdown.is_set():
            started = time.monotonic()
            try:
                end = await self._until_shutdown(self._attach_once(shutdown), shutdown)
            except StreamError as e:
                if time.monotonic() - started > STABLE_AFTER:
                    backoff.reset()
                if e.code in FATALISH:
                    delay = backoff.long_delay()
                    log.error("the control plane refused this agent (%s: %s); fix the configuration "
                              "or certificate; retrying in %.1fs", e.code.name, e.details, delay)
                else:
                    delay = backoff.next_delay()
                    log.warning("control plane stream ended (%s: %s); retrying in %.1fs",
                                e.code.name, e.details, delay)
            except Exception as e:  # noqa: BLE001 - every other failure is retried with backoff
                if time.monotonic() - started > STABLE_AFTER:
                    backoff.reset()
                delay = backoff.next_delay()
                log.warning("control plane stream ended (%s); retrying in %.1fs", e or type(e).__name__, delay)
            else:
                if end is None:
                    break
                backoff.reset()
                delay = end.reconnect_after + backoff.next_delay()
                log.info("drained by the control plane; reconnecting in %.1fs", delay)
            try:
                await asyncio.wait_for(shutdown.wait(), delay)
            except asyncio.TimeoutError:
                pass
        for t in list(self._tasks):
            t.cancel()
        self.runtime.close()
        log.info("agent stopped")

    @staticmethod
    async def _until_shutdown(work, shutdown: asyncio.Event):
        """`work`'s result, or None as soon as `shutdown` is set (a connect or a
        Welcome that hangs does not delay the exit)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(shutdown.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return None
        finally:
            stop.cancel()

    def _credentials(self) -> grpc.ChannelCredentials:
        # Re-read at every connect: a rotated certificate is used without a restart.
        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.cfg.ca_cert),
            private_key=read(self.cfg.tls_key),
            certificate_chain=read(self.cfg.tls_cert),
        )

    async def _attach_once(self, shutdown: asyncio.Event) -> _Drained | None:
        """One stream, from Hello to its end: None on shutdown, _Drained on Drain;
        raises StreamError (or another exception) when it breaks."""
        options: list[tuple[str, int | str]] = [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 16 << 20),
            ("grpc.enable_retries", 0),
        ]
        if self.cfg.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.cfg.tls_server_name))
        async with grpc.aio.secure_channel(self.cfg.target, self._credentials(), options=options) as channel:
            stub = pb_grpc.AgentServiceStub(channel)
            # Changes from before this snapshot are in it: none is sent on its own.
            self.statuses.clear_dirty()
            hello = pb.Hello(
                agent_id=self.cfg.agent_id,
                platform=self.cfg.platform,
                region=self.cfg.region,
                capacity=cpb.Capacity(
                    max_sessions=self.cfg.max_sessions,
                    cpu_millis=self.cfg.cpu_millis,
                    memory_bytes=self.cfg.memory_bytes,
                ),
                agent_version=f"python-{__version__}",
                protocol_version=pb.PROTOCOL_VERSION_1,
                supported_protocol_versions=[pb.PROTOCOL_VERSION_1],
                inventory=self.runtime.inventory(),
            )
            call = stub.Attach()
            try:
                return await self._converse(call, hello, shutdown)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as e:
                code = e.code() if isinstance(e, grpc.aio.AioRpcError) else None
                details = e.details() if isinstance(e, grpc.aio.AioRpcError) else None
                if code is None and call.done():
                    code, details = await call.code(), await call.details()
                raise StreamError(code or grpc.StatusCode.UNKNOWN, details or str(e)) from None
            finally:
                call.cancel()

    async def _converse(self, call: grpc.aio.StreamStreamCall, hello: pb.Hello,
                        shutdown: asyncio.Event) -> _Drained | None:
        await call.write(fit(pb.AgentFrame(hello=hello), self.max_message_bytes))
        try:
            first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT)
        except asyncio.TimeoutError:
            raise RuntimeError(f"no Welcome within {WELCOME_TIMEOUT:.0f}s of Hello") from None
        if first is grpc.aio.EOF:
            raise StreamError(await call.code(), await call.details() or "closed before Welcome")
        if first.WhichOneof("frame") != "welcome":
            raise RuntimeError(f"expected Welcome as the first frame, got {first.WhichOneof('frame')}")
        w = first.welcome
        if w.protocol_version not in (pb.PROTOCOL_VERSION_UNSPECIFIED, pb.PROTOCOL_VERSION_1):
            raise RuntimeError(f"the control plane chose protocol version {w.protocol_version}, "
                               "this agent speaks only PROTOCOL_VERSION_1")
        interval = w.heartbeat_interval.ToNanoseconds() / 1e9 or DEFAULT_HEARTBEAT
        self.max_message_bytes = w.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
        await self.limiter.set_limit(w.max_in_flight or DEFAULT_MAX_IN_FLIGHT)
        self.attaches += 1
        log.info("connected to the control plane %s (heartbeat %.1fs, max_in_flight %d, "
                 "max_message_bytes %d, %d sessions in inventory)", w.server_version or "", interval,
                 self.limiter.limit, self.max_message_bytes, len(hello.inventory))

        async def send(frame: pb.AgentFrame) -> None:
            async with self._write_lock:
                await call.write(fit(frame, self.max_message_bytes))

        reader = asyncio.ensure_future(self._read(call, send))
        pump = asyncio.ensure_future(self._pump(send))
        beat = asyncio.ensure_future(self._heartbeat(send, interval))
        stop = asyncio.ensure_future(shutdown.wait())
        all_ = {reader, pump, beat, stop}
        try:
            done, _ = await asyncio.wait(all_, return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                return None
            if reader in done and reader.exception() is None:
                drained = reader.result()
                await self._finish_in_flight(shutdown, watch=(pump, beat))
                # The control plane closes a drained stream after its own grace period;
                # whatever could not be sent by then goes on the next stream.
                try:
                    await self._flush(send)
                    await asyncio.wait_for(call.done_writing(), 5)
                except Exception as e:  # noqa: BLE001
                    log.info("drained stream closed before everything was sent (%s)", e or type(e).__name__)
                return drained
            for t in done:
                t.result()  # raises what ended the stream
            raise RuntimeError("stream task ended unexpectedly")
        finally:
            for t in all_:
                t.cancel()

    async def _finish_in_flight(self, shutdown: asyncio.Event, watch: tuple[asyncio.Future, ...]) -> None:
        """After a Drain: wait (bounded) for the commands being applied; the sender keeps
        sending their results meanwhile. Stops waiting when the stream breaks (a task in
        `watch` ends) or on shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_FINISH_TIMEOUT
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            log.info("drain: finishing %d commands in flight", len(pending))
        stop = asyncio.ensure_future(shutdown.wait())
        try:
            while pending and not stop.done() and not any(t.done() for t in watch) and loop.time() < deadline:
                await asyncio.wait([*pending, stop, *watch], timeout=deadline - loop.time(),
                                   return_when=asyncio.FIRST_COMPLETED)
                pending = [t for t in pending if not t.done()]
        finally:
            stop.cancel()

    # -- inbound ------------------------------------------------------------------------

    async def _read(self, call: grpc.aio.StreamStreamCall, send) -> _Drained:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                raise StreamError(await call.code(), await call.details() or "the control plane closed the stream")
            which = msg.WhichOneof("frame")
            if which == "command":
                await self._command(msg.command, send)
            elif which == "drain":
                d = msg.drain
                after = d.reconnect_after.ToNanoseconds() / 1e9 if d.HasField("reconnect_after") else 1.0
                log.info("drain requested (%s); reconnecting after %.1fs", d.reason, after)
                return _Drained(max(0.0, after))
            else:
                log.debug("ignoring unexpected frame %s", which)

    async def _command(self, c: pb.Command, send) -> None:
        """Acks a delivery and applies it unless it is a duplicate."""
        await send(pb.AgentFrame(ack=pb.CommandAck(command_id=c.command_id)))
        seen, result = self.dedup.deliver(c.command_id)
        if seen is Seen.IN_PROGRESS:
            log.info("command %s for %s: duplicate delivery, still being applied", c.command_id, c.session_id)
            return
        if seen is Seen.DONE:
            assert result is not None
            log.info("command %s for %s: duplicate delivery, result sent again", c.command_id, c.session_id)
            self._push_result(c.session_id, result)
            return
        t = asyncio.ensure_future(self._apply_in_order(c))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _apply_in_order(self, c: pb.Command) -> None:
        s = c.session_id
        lock = self._session_locks.setdefault(s, asyncio.Lock())
        self._session_users[s] += 1
        try:
            # The session's lock first, so a command waiting behind its session's
            # previous one does not hold one of the max_in_flight slots.
            async with lock, self.limiter:
                result = await self.apply(c)
        finally:
            self._session_users[s] -= 1
            if self._session_users[s] <= 0:
                del self._session_users[s]
                self._session_locks.pop(s, None)
        self.dedup.finish(c.command_id, result)
        self._push_result(s, result)

    async def apply(self, c: pb.Command) -> pb.CommandResult:
        """Applies one command on the runtime; never raises."""
        action = c.WhichOneof("action")
        s = c.session_id
        try:
            if action == "start":
                await self.runtime.start(s, c.start)
            elif action == "stop":
                await self.runtime.stop(s, c.stop.delete_home)
            elif action == "hibernate":
                await self.runtime.hibernate(s)
            elif action == "wake":
                await self.runtime.wake(s)
            else:
                raise RuntimeError_(R.FAILURE_REASON_INVALID, "command has no action (start, stop, hibernate or wake)")
        except RuntimeError_ as e:
            log.warning("command %s %s %s failed: %s", c.command_id, action, s, cut(e.message, 500))
            return pb.CommandResult(
                command_id=c.command_id,
                failed=pb.CommandFailed(reason=e.reason, message=e.message, retryable=e.retryable),
            )
        except Exception as e:  # noqa: BLE001 - a bug or an OS error must still answer
            log.exception("command %s %s %s failed unexpectedly", c.command_id, action, s)
            return pb.CommandResult(
                command_id=c.command_id,
                failed=pb.CommandFailed(reason=R.FAILURE_REASON_INTERNAL, message=str(e), retryable=True),
            )
        log.info("command %s %s %s applied", c.command_id, action, s)
        return pb.CommandResult(command_id=c.command_id, succeeded=pb.CommandSucceeded())

    # -- outbound -----------------------------------------------------------------------

    def _push_result(self, session: str, result: pb.CommandResult) -> None:
        self._results.append((session, result))
        self.statuses.event.set()

    async def _pump(self, send) -> None:
        """Sends statuses and results as they come."""
        while True:
            await self.statuses.changed()
            await self._flush(send)

    async def _flush(self, send) -> None:
        async with self._flush_lock:
            # Unsent statuses first: a status the command reported precedes its result.
            for s in self.statuses.take_dirty():
                await send(pb.AgentFrame(status=s))
            while self._results:
                session, result = self._results[0]
                for s in self.statuses.take_dirty():
                    await send(pb.AgentFrame(status=s))
                await send(pb.AgentFrame(result=result))
                self._results.popleft()
                # The session's latest status, read now, follows every result.
                latest = self.statuses.take_latest(session)
                if latest is not None:
                    await send(pb.AgentFrame(status=latest))

    async def _heartbeat(self, send, interval: float) -> None:
        seq = 0
        while True:
            seq += 1
            await send(pb.AgentFrame(heartbeat=pb.Heartbeat(sequence=seq, in_use=self.runtime.in_use())))
            await asyncio.sleep(interval)
