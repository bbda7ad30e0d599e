"""Unit tests of the pure parts: de-duplication, backoff, substitution, names, ports,
status coalescing and frame fitting."""

import os
import random
import socket
import tempfile
import unittest

from streamspace_agent import names
from streamspace_agent._gen.streamspace.v1 import agent_pb2 as pb
from streamspace_agent._gen.streamspace.v1 import common_pb2 as cpb
from streamspace_agent.backoff import Backoff
from streamspace_agent.client import cut, fit
from streamspace_agent.dedup import Dedup, Seen
from streamspace_agent.ports import PortAllocator, PortRange, PortRangeError
from streamspace_agent.process import substitute
from streamspace_agent.status import StatusSink

P = cpb.SessionPhase


class DedupTest(unittest.TestCase):
    def test_a_second_delivery_gets_the_same_result(self):
        d = Dedup(2)
        self.assertEqual(d.deliver("a"), (Seen.NEW, None))
        self.assertEqual(d.deliver("a"), (Seen.IN_PROGRESS, None), "in progress: only an ack")
        r = pb.CommandResult(command_id="a", succeeded=pb.CommandSucceeded())
        d.finish("a", r)
        self.assertEqual(d.deliver("a"), (Seen.DONE, r))
        self.assertEqual(d.deliver("a"), (Seen.DONE, r), "every later delivery too")

    def test_finished_ids_are_bounded_oldest_evicted_first(self):
        d = Dedup(2)
        for i in "abc":
            d.deliver(i)
            d.finish(i, i.upper())
        self.assertEqual(d.deliver("a")[0], Seen.NEW, "evicted beyond capacity")
        self.assertEqual(d.deliver("b"), (Seen.DONE, "B"))
        self.assertEqual(d.deliver("c"), (Seen.DONE, "C"))
        self.assertLessEqual(len(d), 3)


class BackoffTest(unittest.TestCase):
    def test_grows_to_the_cap_with_full_jitter(self):
        b = Backoff(0.1, 2.0, random.Random(7))
        ceilings = []
        for _ in range(8):
            c = b.ceiling()
            d = b.next_delay()
            self.assertTrue(0 <= d <= c, (d, c))
            ceilings.append(round(c, 3))
        self.assertEqual(ceilings, [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
        b.reset()
        self.assertEqual(b.ceiling(), 0.1)

    def test_jitter_spreads_over_the_whole_window(self):
        b = Backoff(1.0, 1.0, random.Random(1))
        delays = [b.next_delay() for _ in range(2000)]
        self.assertLess(min(delays), 0.05)
        self.assertGreater(max(delays), 0.95)

    def test_refusals_wait_long(self):
        b = Backoff(0.25, 30.0, random.Random(3))
        for _ in range(100):
            d = b.long_delay()
            self.assertTrue(15.0 <= d <= 30.0, d)

    def test_many_attempts_do_not_overflow(self):
        b = Backoff(0.25, 30.0)
        b.attempt = 10_000
        self.assertEqual(b.ceiling(), 30.0)


class SubstituteTest(unittest.TestCase):
    VARS = {"PORT": "20001", "SESSION_ID": "s1", "USER": "alice", "HOME": "/data/homes/alice"}

    def test_every_name_every_occurrence(self):
        self.assertEqual(
            substitute("--port=${PORT} ${SESSION_ID}:${USER}@${HOME}/${PORT}", self.VARS),
            "--port=20001 s1:alice@/data/homes/alice/20001",
        )

    def test_nothing_else_is_expanded(self):
        for arg in ["$PORT", "${port}", "${OTHER}", "$(id)", "`id`", "${PORT", "~"]:
            self.assertEqual(substitute(arg, self.VARS), arg)

    def test_values_are_not_substituted_again(self):
        self.assertEqual(substitute("${USER}", {"USER": "${PORT}", "PORT": "1"}), "${PORT}")


class NamesTest(unittest.TestCase):
    def test_session_ids_are_dns_labels(self):
        names.check_session("alice-firefox-1")
        for bad in ["", "-a", "a-", "A", "a.b", "a/b", "..", "é", "a\n", "a" * 64]:
            with self.assertRaises(names.NameError_, msg=bad) as e:
                names.check_session(bad)
            self.assertIn("session_id", str(e.exception))

    def test_user_names(self):
        names.check_user("Alice@example.com")
        for bad in ["", ".", "..", ".a", "-a", "a/b", "a b", "a\0", "a" * 64]:
            with self.assertRaises(names.NameError_, msg=bad) as e:
                names.check_user(bad)
            self.assertIn("user", str(e.exception))

    def test_a_long_name_is_not_echoed_whole(self):
        with self.assertRaises(names.NameError_) as e:
            names.check_user("x" * 100_000)
        self.assertLess(len(str(e.exception)), 300)


class PortsTest(unittest.TestCase):
    def test_ranges_parse_and_are_checked(self):
        self.assertEqual(PortRange.parse("20000-29999"), PortRange(20000, 29999))
        self.assertEqual(PortRange.parse(" 2000 - 2000 "), PortRange(2000, 2000))
        for bad in ["", "80-90", "3000", "5000-4000", "1024-70000", "a-b", "2_000-3000", "+2000-3000", "２000-3000"]:
            with self.assertRaises(PortRangeError, msg=bad) as e:
                PortRange.parse(bad)
            self.assertIn("SESSION_PORTS", str(e.exception))

    def test_allocations_are_distinct_and_skip_busy_ports(self):
        with tempfile.TemporaryDirectory() as locks:
            base = _free_block(8)
            busy = socket.socket()
            busy.bind(("127.0.0.1", base + 3))
            busy.listen()
            try:
                a = PortAllocator(PortRange(base, base + 7), locks)
                claims = [a.allocate() for _ in range(7)]
                got = [c.port for c in claims]
                self.assertEqual(sorted(got), [p for p in range(base, base + 8) if p != base + 3])
                with self.assertRaises(PortRangeError):
                    a.allocate()
                # The session on got[0] ends: its process (holding the lock) is gone.
                os.close(claims[0].lock_fd)
                a.release(got[0])
                self.assertEqual(a.allocate().port, got[0])
            finally:
                busy.close()

    def test_a_port_locked_by_another_agent_is_not_handed_out(self):
        with tempfile.TemporaryDirectory() as locks:
            base = _free_block(2)
            first = PortAllocator(PortRange(base, base + 1), locks)
            claims = [first.allocate(), first.allocate()]
            second = PortAllocator(PortRange(base, base + 1), locks)
            with self.assertRaises(PortRangeError):
                second.allocate()
            os.close(claims[0].lock_fd)  # the session process holding it exited
            self.assertEqual(second.allocate().port, claims[0].port)


def _free_block(n: int) -> int:
    """A block of n ports nothing listens on (best effort, random above 40000)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(40000, 60000 - n)
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


class StatusSinkTest(unittest.TestCase):
    def test_reports_coalesce_to_the_latest_per_session(self):
        s = StatusSink()
        s.report("a", P.SESSION_PHASE_PROVISIONING)
        s.report("b", P.SESSION_PHASE_PROVISIONING)
        s.report("a", P.SESSION_PHASE_RUNNING, "u")
        s.report("a", P.SESSION_PHASE_FAILED, message="exited (3)")
        self.assertEqual(
            [(x.session_id, x.phase) for x in s.take_dirty()],
            [("b", P.SESSION_PHASE_PROVISIONING), ("a", P.SESSION_PHASE_FAILED)],
        )
        self.assertEqual(s.take_dirty(), [], "taken means sent")
        self.assertEqual(s.take_latest("a").message, "exited (3)", "the latest is kept for results")

    def test_a_crash_while_disconnected_follows_a_replayed_result(self):
        s = StatusSink()
        s.report("a", P.SESSION_PHASE_RUNNING, "u")
        s.take_dirty()
        s.report("a", P.SESSION_PHASE_FAILED, message="the process exited")
        s.clear_dirty()  # reconnect: Hello's inventory replaces unsent changes
        self.assertEqual(s.take_dirty(), [])
        self.assertEqual(s.take_latest("a").phase, P.SESSION_PHASE_FAILED)

    def test_stopped_sessions_are_forgotten_once_sent(self):
        s = StatusSink()
        s.report("a", P.SESSION_PHASE_RUNNING, "u")
        s.report("a", P.SESSION_PHASE_STOPPED)
        self.assertEqual([x.phase for x in s.take_dirty()], [P.SESSION_PHASE_STOPPED])
        self.assertEqual(len(s), 0)
        self.assertIsNone(s.take_latest("a"))

    def test_bounded_by_the_number_of_sessions(self):
        s = StatusSink()
        for i in range(10_000):
            s.report(f"s{i % 100}", P.SESSION_PHASE_RUNNING)
        self.assertEqual(len(s), 100)
        self.assertEqual(len(s.take_dirty()), 100)


class FitTest(unittest.TestCase):
    def test_a_long_failure_message_is_cut_to_the_limit(self):
        f = pb.AgentFrame(result=pb.CommandResult(
            command_id="c1",
            failed=pb.CommandFailed(reason=cpb.FAILURE_REASON_IMAGE, message="é" * 100_000, retryable=True),
        ))
        out = fit(f, 1024)
        self.assertLessEqual(out.ByteSize(), 1024)
        self.assertEqual(out.result.command_id, "c1")
        self.assertTrue(out.result.failed.retryable)
        self.assertTrue(out.result.failed.message.endswith("(200000 bytes)"), out.result.failed.message[-40:])
        self.assertEqual(len(f.result.failed.message), 100_000, "the original is untouched")

    def test_statuses_and_small_frames(self):
        small = pb.AgentFrame(ack=pb.CommandAck(command_id="x"))
        self.assertIs(fit(small, 1024), small)
        st = pb.AgentFrame(status=pb.SessionStatus(session_id="s", phase=P.SESSION_PHASE_FAILED, message="m" * 5000))
        self.assertLessEqual(fit(st, 512).ByteSize(), 512)

    def test_cut_never_splits_a_character(self):
        for n in range(0, 40):
            cut("ééééééééééééééééééééééééééééé", n).encode()  # decodes cleanly
        self.assertEqual(cut("short", 100), "short")


if __name__ == "__main__":
    unittest.main()
