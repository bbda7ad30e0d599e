"""Settings: every error names the variable (and its flag)."""

import os
import shutil
import subprocess
import tempfile
import unittest

from streamspace_agent.config import ConfigError, load


def _pki(d: str) -> dict:
    """A self-signed certificate and its key, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("openssl is required for these tests (CI=true: not skipped)")
        raise unittest.SkipTest("openssl not installed")
    crt, key = os.path.join(d, "a.crt"), os.path.join(d, "a.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", "/CN=test", "-days", "1", "-keyout", key, "-out", crt],
        check=True, capture_output=True,
    )
    return {"AGENT_TLS_CERT": crt, "AGENT_TLS_KEY": key, "AGENT_CA_CERT": crt}


class ConfigTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.env = {
            "CONTROL_PLANE_URL": "https://cp.example:7443",
            "AGENT_ID": "py-1",
            "AGENT_DATA_DIR": self.dir,
            **_pki(self.dir),
        }

    def refused(self, env=None, argv=(), *, names: str):
        with self.assertRaises(ConfigError) as e:
            load(list(argv), env if env is not None else self.env)
        for n in names.split():
            self.assertIn(n, str(e.exception))
        return str(e.exception)

    def test_defaults(self):
        c = load([], self.env)
        self.assertEqual(c.target, "cp.example:7443")
        self.assertEqual((c.platform, c.region, c.max_sessions), ("process", "", 100))
        self.assertEqual((c.session_ports.low, c.session_ports.high), (20000, 29999))
        self.assertEqual((c.backoff_base, c.backoff_max), (0.25, 30.0))
        self.assertEqual((c.cpu_millis, c.memory_bytes), (0, 0))
        self.assertEqual(c.tls_server_name, "")

    def test_flags_win_over_variables(self):
        c = load(["--region", "eu", "--max-sessions", "3", "--max-cpu", "2", "--max-memory", "1"],
                 {**self.env, "REGION": "us"})
        self.assertEqual((c.region, c.max_sessions, c.cpu_millis, c.memory_bytes), ("eu", 3, 2000, 1 << 30))

    def test_required_settings_are_named(self):
        for var, flag in [("CONTROL_PLANE_URL", "--control-plane-url"), ("AGENT_ID", "--agent-id"),
                          ("AGENT_TLS_CERT", "--tls-cert"), ("AGENT_TLS_KEY", "--tls-key"),
                          ("AGENT_CA_CERT", "--ca-cert")]:
            env = {k: v for k, v in self.env.items() if k != var}
            self.assertIn("required", self.refused(env, names=f"{var} {flag}"))
            self.refused({**self.env, var: "  "}, names=var)

    def test_bad_values_are_named(self):
        for var, value in [("CONTROL_PLANE_URL", "http://cp:7443"), ("CONTROL_PLANE_URL", "https://cp"),
                           ("CONTROL_PLANE_URL", "https://cp:99999"), ("CONTROL_PLANE_URL", "https://cp:7443/x"),
                           ("AGENT_ID", "a b"), ("PLATFORM", "kubernetes"), ("MAX_SESSIONS", "-1"),
                           ("MAX_SESSIONS", "ten"), ("MAX_CPU", "1.5"), ("SESSION_PORTS", "80-90"),
                           ("BACKOFF_BASE_MS", "0"), ("BACKOFF_MAX_MS", "100"), ("LOG_FORMAT", "xml"),
                           ("STOP_GRACE_SECONDS", "x")]:
            self.refused({**self.env, var: value}, names=var)

    def test_unreadable_or_mismatched_tls_files(self):
        self.refused({**self.env, "AGENT_CA_CERT": os.path.join(self.dir, "missing.crt")}, names="AGENT_CA_CERT")
        junk = os.path.join(self.dir, "junk.pem")
        with open(junk, "w") as f:
            f.write("not a certificate")
        msg = self.refused({**self.env, "AGENT_TLS_KEY": junk}, names="AGENT_TLS_KEY")
        self.assertNotIn("not a certificate", msg, "file contents never reach errors")
        self.refused({**self.env, "AGENT_CA_CERT": junk}, names="AGENT_CA_CERT")
        other = _pki(tempfile.mkdtemp(dir=self.dir))
        self.refused({**self.env, "AGENT_TLS_KEY": other["AGENT_TLS_KEY"]}, names="AGENT_TLS_CERT AGENT_TLS_KEY")

    def test_server_name_and_ipv6(self):
        c = load([], {**self.env, "CONTROL_PLANE_URL": "https://[::1]:7443", "AGENT_TLS_SERVER_NAME": "cp.internal"})
        self.assertEqual((c.target, c.tls_server_name), ("[::1]:7443", "cp.internal"))


if __name__ == "__main__":
    unittest.main()
