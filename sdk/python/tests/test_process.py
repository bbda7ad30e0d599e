"""The process runtime on real processes: start (RUNNING once the port answers),
hibernate (SIGSTOP: state T), wake, re-adoption by a new runtime over the same
directory, a crash reported FAILED, stop (the group is gone), idempotent actions."""

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import unittest
import urllib.request

from streamspace_agent._gen.streamspace.v1 import agent_pb2 as pb
from streamspace_agent._gen.streamspace.v1 import common_pb2 as cpb
from streamspace_agent.ports import PortAllocator, PortRange
from streamspace_agent.process import ProcessRuntime, RuntimeError_, find_tagged, proc_stat
from streamspace_agent.status import StatusSink

P = cpb.SessionPhase
SERVER = [sys.executable, "-m", "http.server", "${PORT}", "--bind", "127.0.0.1", "--directory", "${HOME}"]


def start_cmd(command=SERVER, user="alice", env=None):
    return pb.StartSession(user=user, template="t", workload=pb.WorkloadSpec(command=command, env=env or {}))


class ProcessRuntimeTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.dir = tempfile.mkdtemp()
        self.locks = tempfile.mkdtemp()
        self.sink = StatusSink()
        self.rt = await self.open()
        self.pids: list[int] = []

    async def open(self, max_sessions=0):
        rt = ProcessRuntime(self.dir, self.sink, PortAllocator(PortRange(42000, 42999), self.locks),
                            max_sessions=max_sessions, stop_grace=2, ready_timeout=10)
        await rt.open()
        return rt

    async def asyncTearDown(self):
        for pid in self.pids:
            for kill in (os.killpg, os.kill):
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        kill(pid, sig)
                    except OSError:
                        pass
        self.rt.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.locks, ignore_errors=True)

    async def phase(self, session, want, timeout=10.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            s = self.sink._latest.get(session)
            if s is not None and s.phase == want:
                return s
            if loop.time() > deadline:
                raise AssertionError(f"{session}: wanted {P.Name(want)}, last {s}")
            await asyncio.sleep(0.02)

    async def test_lifecycle_and_re_adoption(self):
        await self.rt.start("s1", start_cmd(env={"GREETING": "hi"}))
        st = await self.phase("s1", P.SESSION_PHASE_RUNNING)
        pid = int(st.workload.split()[1])
        self.pids.append(pid)
        self.assertEqual(os.getpgid(pid), pid, "a process group of its own")
        self.assertEqual(os.getsid(pid), pid, "a session of its own")
        self.assertTrue(st.url.startswith("http://127.0.0.1:42"))
        with urllib.request.urlopen(st.url, timeout=5) as r:
            self.assertEqual(r.status, 200)
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
        port = st.url.rsplit(":", 1)[1].strip("/")
        for kv in [b"GREETING=hi", f"PORT={port}".encode(), b"SESSION_ID=s1", b"USER=alice"]:
            self.assertIn(kv, env)

        await self.rt.start("s1", start_cmd())  # idempotent
        self.assertEqual(len(self.rt.inventory()), 1)

        await self.rt.hibernate("s1")
        await self.phase("s1", P.SESSION_PHASE_HIBERNATED)
        await asyncio.sleep(0.1)
        self.assertEqual(proc_stat(pid)[0], "T")

        # The agent goes away; a new runtime over the same directory re-adopts.
        self.rt.close()
        self.rt = await self.open()
        inv = self.rt.inventory()
        self.assertEqual([(s.session_id, s.phase, s.workload) for s in inv],
                         [("s1", P.SESSION_PHASE_HIBERNATED, f"pid {pid}")])
        await self.rt.wake("s1")
        await self.phase("s1", P.SESSION_PHASE_RUNNING)
        self.assertIn(proc_stat(pid)[0], "SR")
        with urllib.request.urlopen(st.url, timeout=5) as r:
            self.assertEqual(r.status, 200)

        await self.rt.stop("s1", False)
        await self.phase("s1", P.SESSION_PHASE_STOPPED)
        self.assertTrue(proc_stat(pid) is None or proc_stat(pid)[0] == "Z")
        self.assertEqual(os.listdir(os.path.join(self.dir, "sessions")), [])
        await self.rt.stop("s1", False)  # stop of an unknown session: success
        with self.assertRaises(RuntimeError_) as e:
            await self.rt.hibernate("s1")
        self.assertEqual(e.exception.reason, cpb.FAILURE_REASON_NOT_FOUND)

    async def test_a_process_that_exits_is_failed(self):
        await self.rt.start("s2", start_cmd([sys.executable, "-c", "import sys; sys.exit(3)"]))
        st = await self.phase("s2", P.SESSION_PHASE_FAILED)
        self.assertEqual(st.reason, cpb.FAILURE_REASON_CRASH_LOOP)
        self.assertIn("status 3", st.message)
        self.assertEqual(self.rt.inventory(), [])

    async def test_a_process_that_dies_after_re_adoption_is_failed(self):
        await self.rt.start("s3", start_cmd())
        st = await self.phase("s3", P.SESSION_PHASE_RUNNING)
        pid = int(st.workload.split()[1])
        self.pids.append(pid)
        self.rt.close()
        self.rt = await self.open()
        os.killpg(pid, signal.SIGKILL)
        st = await self.phase("s3", P.SESSION_PHASE_FAILED)
        self.assertEqual(st.reason, cpb.FAILURE_REASON_CRASH_LOOP)

    async def test_an_interrupted_start_is_adopted_not_repeated(self):
        # An agent killed after spawning but before recording the pid: the record holds
        # only the intent and the tag the process carries in its environment.
        tag = "test-" + os.urandom(8).hex()
        import json
        import subprocess

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 env={**os.environ, "STREAMSPACE_SPAWN": tag}, start_new_session=True)
        self.pids.append(child.pid)
        # /proc/<pid>/environ reads empty for a moment while exec completes.
        for _ in range(200):
            if find_tagged(tag) is not None:
                break
            await asyncio.sleep(0.01)
        with open(os.path.join(self.dir, "sessions", "s5.json"), "w") as f:
            json.dump({"session": "s5", "user": "alice", "pid": 0, "spawn_tag": tag, "start_time": 0,
                       "port": 42999, "hibernated": False, "home": os.path.join(self.dir, "scratch", "s5"),
                       "persistent_home": False}, f)
        with open(os.path.join(self.dir, "sessions", "s6.json"), "w") as f:
            json.dump({"session": "s6", "user": "alice", "pid": 0, "spawn_tag": "never-spawned",
                       "start_time": 0, "port": 42998, "hibernated": False,
                       "home": os.path.join(self.dir, "scratch", "s6"), "persistent_home": False}, f)
        self.rt.close()
        self.rt = await self.open()
        self.assertEqual([(s.session_id, s.workload) for s in self.rt.inventory()], [("s5", f"pid {child.pid}")])
        self.assertEqual(sorted(os.listdir(os.path.join(self.dir, "sessions"))), ["s5.json"])
        await self.rt.stop("s5", False)
        self.assertEqual(child.wait(5), -signal.SIGTERM)

    async def test_refusals(self):
        cases = [
            ("Bad_Id", start_cmd(), cpb.FAILURE_REASON_INVALID),
            ("s4", start_cmd(user="../etc"), cpb.FAILURE_REASON_INVALID),
            ("s4", start_cmd(command=[]), cpb.FAILURE_REASON_INVALID),
            ("s4", start_cmd(command=["/nonexistent/program"]), cpb.FAILURE_REASON_IMAGE),
        ]
        for session, start, reason in cases:
            with self.assertRaises(RuntimeError_, msg=session) as e:
                await self.rt.start(session, start)
            self.assertEqual(e.exception.reason, reason, e.exception.message)
        self.assertEqual(os.listdir(os.path.join(self.dir, "sessions")), [])

    async def test_capacity(self):
        self.rt.close()
        self.rt = await self.open(max_sessions=1)
        await self.rt.start("a", start_cmd([sys.executable, "-c", "import time; time.sleep(60)"]))
        self.pids.append(int(self.rt.inventory()[0].workload.split()[1]))
        with self.assertRaises(RuntimeError_) as e:
            await self.rt.start("b", start_cmd())
        self.assertEqual((e.exception.reason, e.exception.retryable), (cpb.FAILURE_REASON_CAPACITY, True))
        await self.rt.start("a", start_cmd())  # a running session is always admitted
        await self.rt.stop("a", False)


if __name__ == "__main__":
    unittest.main()
