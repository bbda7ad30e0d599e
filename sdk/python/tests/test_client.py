"""The stream's protocol rules, against a scripted stream (no network): Hello first,
heartbeats from sequence 1, an ack per delivery, de-duplication, a status after every
result, max_in_flight and max_message_bytes honoured, Drain finishing in-flight work."""

import asyncio
import unittest

import grpc

from streamspace_agent._gen.streamspace.v1 import agent_pb2 as pb
from streamspace_agent._gen.streamspace.v1 import common_pb2 as cpb
from streamspace_agent.client import Agent, _Drained
from streamspace_agent.config import Config
from streamspace_agent.ports import PortRange
from streamspace_agent.process import RuntimeError_
from streamspace_agent.status import StatusSink, make_status

P = cpb.SessionPhase


class FakeRuntime:
    """Records what runs; a start waits for `release` (so tests control timing)."""

    def __init__(self, sink: StatusSink) -> None:
        self.sink = sink
        self.running: set[str] = set()
        self.release = asyncio.Event()
        self.active = 0
        self.most_active = 0
        self.starts = 0

    async def start(self, s, start):
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        if start.template == "fail":
            raise RuntimeError_(cpb.FAILURE_REASON_IMAGE, "x" * 10_000)
        self.starts += 1
        self.running.add(s)
        self.sink.report(s, P.SESSION_PHASE_RUNNING, f"http://127.0.0.1/{s}")

    async def stop(self, s, delete_home):
        self.running.discard(s)
        self.sink.report(s, P.SESSION_PHASE_STOPPED)

    async def hibernate(self, s):
        raise RuntimeError_(cpb.FAILURE_REASON_NOT_FOUND, f"session {s} does not run on this agent")

    async def wake(self, s):
        raise RuntimeError_(cpb.FAILURE_REASON_NOT_FOUND, f"session {s} does not run on this agent")

    def inventory(self):
        return [make_status(s, P.SESSION_PHASE_RUNNING) for s in sorted(self.running)]

    def in_use(self):
        return cpb.Capacity(max_sessions=len(self.running))

    def close(self):
        pass


class FakeCall:
    def __init__(self) -> None:
        self.inbound: asyncio.Queue = asyncio.Queue()
        self.sent: list[pb.AgentFrame] = []
        self.sent_event = asyncio.Event()
        self.closed = False

    async def write(self, f):
        if self.closed:
            raise RuntimeError("the stream is closed")
        self.sent.append(f)
        self.sent_event.set()

    async def read(self):
        return await self.inbound.get()

    async def done_writing(self):
        self.closed = True

    def done(self):
        return False

    def push(self, **frame):
        self.inbound.put_nowait(pb.ControlFrame(**frame))

    def of(self, kind):
        return [getattr(f, kind) for f in self.sent if f.WhichOneof("frame") == kind]

    def kinds(self):
        out = []
        for f in self.sent:
            k = f.WhichOneof("frame")
            if k == "heartbeat":
                continue
            if k == "status":
                out.append(f"status:{f.status.session_id}:{P.Name(f.status.phase)}")
            elif k == "result":
                out.append(f"result:{f.result.command_id}:{f.result.WhichOneof('outcome')}")
            elif k == "ack":
                out.append(f"ack:{f.ack.command_id}")
            else:
                out.append(k)
        return out


def config() -> Config:
    return Config(
        control_plane_url="https://x:1", target="x:1", agent_id="py-1", tls_cert="", tls_key="",
        ca_cert="", tls_server_name="", data_dir="/nonexistent", platform="process", region="r",
        max_sessions=5, cpu_millis=0, memory_bytes=0, session_ports=PortRange(20000, 20001),
        port_lock_dir="", stop_grace=1, backoff_base=0.01, backoff_max=0.1, log_format="text",
    )


def start(cid, session, template="t"):
    return pb.Command(command_id=cid, session_id=session,
                      start=pb.StartSession(user="alice", template=template))


async def until(cond, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


class StreamTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.sink = StatusSink()
        self.rt = FakeRuntime(self.sink)
        self.agent = Agent(config(), self.rt, self.sink)
        self.call = FakeCall()
        self.shutdown = asyncio.Event()

    def converse(self, max_in_flight=64, max_bytes=4 << 20):
        w = pb.Welcome(max_in_flight=max_in_flight, max_message_bytes=max_bytes,
                       protocol_version=pb.PROTOCOL_VERSION_1)
        w.heartbeat_interval.FromMilliseconds(50)
        self.call.push(welcome=w)
        hello = pb.Hello(agent_id="py-1", protocol_version=pb.PROTOCOL_VERSION_1)
        return asyncio.ensure_future(self.agent._converse(self.call, hello, self.shutdown))

    async def asyncTearDown(self):
        self.shutdown.set()
        self.rt.release.set()

    async def test_hello_first_then_heartbeats_from_one(self):
        t = self.converse()
        await until(lambda: len(self.call.of("heartbeat")) >= 3)
        self.assertEqual(self.call.sent[0].WhichOneof("frame"), "hello")
        seqs = [h.sequence for h in self.call.of("heartbeat")]
        self.assertEqual(seqs[:3], [1, 2, 3])
        self.shutdown.set()
        self.assertIsNone(await t)

    async def test_duplicates_are_acked_and_answered_with_the_same_result(self):
        t = self.converse()
        self.call.push(command=start("c1", "s1"))
        self.call.push(command=start("c1", "s1"))  # in progress: only an ack
        await until(lambda: len(self.call.of("ack")) == 2)
        self.assertEqual(self.call.of("result"), [])
        self.rt.release.set()
        await until(lambda: len(self.call.of("result")) == 1)
        await asyncio.sleep(0.05)
        self.call.push(command=start("c1", "s1"))  # finished: the same result again
        await until(lambda: len(self.call.of("result")) == 2)
        await asyncio.sleep(0.05)
        self.assertEqual(self.rt.starts, 1, "applied once")
        self.assertEqual(
            self.call.kinds(),
            ["hello", "ack:c1", "ack:c1",
             "status:s1:SESSION_PHASE_RUNNING", "result:c1:succeeded", "status:s1:SESSION_PHASE_RUNNING",
             "ack:c1", "result:c1:succeeded", "status:s1:SESSION_PHASE_RUNNING"],
        )
        self.shutdown.set()
        await t

    async def test_max_in_flight_is_never_exceeded(self):
        t = self.converse(max_in_flight=2)
        for i in range(6):
            self.call.push(command=start(f"c{i}", f"s{i}"))
        await until(lambda: len(self.call.of("ack")) == 6)
        await until(lambda: self.rt.active == 2)
        await asyncio.sleep(0.1)
        self.assertEqual(self.rt.active, 2, "the others wait for a slot")
        self.rt.release.set()
        await until(lambda: len(self.call.of("result")) == 6)
        self.assertEqual(self.rt.most_active, 2)
        self.shutdown.set()
        await t

    async def test_frames_fit_max_message_bytes(self):
        t = self.converse(max_bytes=512)
        self.rt.release.set()
        self.call.push(command=start("c1", "s1", template="fail"))
        await until(lambda: len(self.call.of("result")) == 1)
        r = self.call.of("result")[0]
        self.assertEqual(r.failed.reason, cpb.FAILURE_REASON_IMAGE)
        self.assertTrue(all(f.ByteSize() <= 512 for f in self.call.sent))
        self.shutdown.set()
        await t

    async def test_a_stop_of_an_unknown_session_succeeds_with_stopped(self):
        t = self.converse()
        self.call.push(command=pb.Command(command_id="c9", session_id="gone", stop=pb.StopSession()))
        self.call.push(command=pb.Command(command_id="c10", session_id="gone", hibernate=pb.HibernateSession()))
        self.call.push(command=pb.Command(command_id="c11", session_id="gone"))
        await until(lambda: len(self.call.of("result")) == 3)
        results = {r.command_id: r for r in self.call.of("result")}
        self.assertTrue(results["c9"].HasField("succeeded"))
        self.assertEqual(results["c10"].failed.reason, cpb.FAILURE_REASON_NOT_FOUND)
        self.assertEqual(results["c11"].failed.reason, cpb.FAILURE_REASON_INVALID)
        self.assertIn("status:gone:SESSION_PHASE_STOPPED", self.call.kinds())
        self.shutdown.set()
        await t

    async def test_drain_finishes_in_flight_work_then_closes(self):
        t = self.converse()
        self.call.push(command=start("c1", "s1"))
        await until(lambda: len(self.call.of("ack")) == 1)
        d = pb.Drain(reason="bye")
        d.reconnect_after.FromMilliseconds(1500)
        self.call.push(drain=d)
        await asyncio.sleep(0.1)
        self.assertFalse(t.done(), "waits for the start in flight")
        self.rt.release.set()
        end = await asyncio.wait_for(t, 5)
        self.assertEqual(end, _Drained(1.5))
        self.assertTrue(self.call.closed)
        self.assertIn("result:c1:succeeded", self.call.kinds())

    async def test_a_drained_stream_closed_by_the_control_plane_ends_the_wait(self):
        # The control plane reads a drained stream only for its own grace period.
        t = self.converse()
        self.call.push(command=start("c1", "s1"))
        await until(lambda: len(self.call.of("ack")) == 1)
        d = pb.Drain(reason="bye")
        d.reconnect_after.FromSeconds(1)
        self.call.push(drain=d)
        await asyncio.sleep(0.1)
        self.call.closed = True
        end = await asyncio.wait_for(t, 2)  # not the 30 s a command in flight may take
        self.assertEqual(end, _Drained(1.0))
        self.rt.release.set()
        await until(lambda: len(self.agent._results) == 1)  # kept for the next stream

    async def test_a_closed_stream_is_an_error(self):
        t = self.converse()
        self.call.inbound.put_nowait(grpc.aio.EOF)
        self.call.code = lambda: _aw(grpc.StatusCode.UNAVAILABLE)
        self.call.details = lambda: _aw("gone")
        with self.assertRaises(Exception):
            await asyncio.wait_for(t, 5)


async def _aw(v):
    return v


if __name__ == "__main__":
    unittest.main()
