"""The agent's settings, from the environment variables every StreamSpace agent takes
(see the agent contract) or the same names as --kebab-case flags; a flag wins over its
variable. Every error names the variable and the rule."""

from __future__ import annotations

import argparse
import os
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Mapping, Sequence

from . import __version__
from .ports import PortRange, PortRangeError


class ConfigError(ValueError):
    """A setting refused; the message names the variable (and its flag)."""


# (variable, flag, help, default) in the order --help shows them. None = required.
_SETTINGS: list[tuple[str, str, str, str | None]] = [
    ("CONTROL_PLANE_URL", "--control-plane-url", "https://HOST:PORT of the control plane's agent listener", None),
    ("AGENT_ID", "--agent-id", "agent id; must match the certificate's SAN URI spiffe://<domain>/agent/<id>", None),
    ("AGENT_TLS_CERT", "--tls-cert", "client certificate (PEM)", None),
    ("AGENT_TLS_KEY", "--tls-key", "client certificate's private key (PEM)", None),
    ("AGENT_CA_CERT", "--ca-cert", "CA that signed the control plane's server certificate (PEM)", None),
    ("AGENT_TLS_SERVER_NAME", "--tls-server-name", "server name to verify if not the URL's host", ""),
    ("AGENT_DATA_DIR", "--data-dir", "state directory (sessions/<id>.json, logs, homes)", "/var/lib/streamspace-agent"),
    ("PLATFORM", "--platform", "runtime; only 'process' is supported", "process"),
    ("REGION", "--region", "free-text region for placement selectors", ""),
    ("MAX_SESSIONS", "--max-sessions", "most sessions run at once (0 = no limit)", "100"),
    ("MAX_CPU", "--max-cpu", "CPU cores to advertise (optional)", ""),
    ("MAX_MEMORY", "--max-memory", "memory in GiB to advertise (optional)", ""),
    ("SESSION_PORTS", "--session-ports", "LOW-HIGH port range for session processes", "20000-29999"),
    ("PORT_LOCK_DIR", "--port-lock-dir", "host-wide port lock directory (default <tmp>/streamspace-ports)", ""),
    ("STOP_GRACE_SECONDS", "--stop-grace-seconds", "seconds between SIGTERM and SIGKILL at stop", "10"),
    ("BACKOFF_BASE_MS", "--backoff-base-ms", "first reconnect delay ceiling (ms)", "250"),
    ("BACKOFF_MAX_MS", "--backoff-max-ms", "largest reconnect delay (ms)", "30000"),
    ("LOG_FORMAT", "--log-format", "text or json", "text"),
]


@dataclass
class Config:
    control_plane_url: str
    target: str  # host:port for gRPC
    agent_id: str
    tls_cert: str
    tls_key: str
    ca_cert: str
    tls_server_name: str
    data_dir: str
    platform: str
    region: str
    max_sessions: int
    cpu_millis: int
    memory_bytes: int
    session_ports: PortRange
    port_lock_dir: str
    stop_grace: float
    backoff_base: float
    backoff_max: float
    log_format: str


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamspace-python-agent",
        description="StreamSpace agent (Python reference, process runtime). Every flag "
        "defaults to the environment variable in brackets.",
    )
    p.add_argument("--version", action="version", version=f"streamspace-python-agent {__version__}")
    for var, flag, help_, default in _SETTINGS:
        shown = "required" if default is None else f"default {default!r}" if default else "optional"
        p.add_argument(flag, dest=var, default=None, help=f"{help_} [{var}; {shown}]")
    return p


def _int(var: str, flag: str, raw: str, low: int, high: int) -> int:
    try:
        v = int(raw.strip(), 10) if raw.strip().isascii() else None
    except ValueError:
        v = None
    if v is None or not (low <= v <= high):
        raise ConfigError(f"{var} ({flag}): expected an integer in {low}..{high}, found {raw[:40]!r}")
    return v


def _readable(var: str, flag: str, path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"{var} ({flag}): cannot read {path!r}: {e.strerror}") from None
    return path


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Reads flags (argv) over variables (environ); raises ConfigError naming the setting."""
    env = os.environ if environ is None else environ
    args = vars(_parser().parse_args(argv))
    raw: dict[str, str] = {}
    flags = {var: flag for var, flag, _, _ in _SETTINGS}
    for var, flag, _, default in _SETTINGS:
        v = args.get(var)
        if v is None:
            v = env.get(var)
        if v is None or (default is None and not v.strip()):
            if default is None:
                raise ConfigError(f"{var} ({flag}): required, not set")
            v = default
        raw[var] = v

    def f(var: str) -> str:
        return flags[var]

    url = raw["CONTROL_PLANE_URL"].strip()
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port
    except ValueError:
        port = None
    if u.scheme != "https" or not u.hostname or port is None or u.path not in ("", "/") or u.query:
        raise ConfigError(
            f"CONTROL_PLANE_URL ({f('CONTROL_PLANE_URL')}): expected https://HOST:PORT, found {url[:80]!r}"
        )
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    agent_id = raw["AGENT_ID"].strip()
    if not agent_id or any(c.isspace() or c == "/" for c in agent_id) or len(agent_id) > 253:
        raise ConfigError(f"AGENT_ID ({f('AGENT_ID')}): expected a non-empty id without spaces or '/', found {agent_id[:80]!r}")
    platform = raw["PLATFORM"].strip()
    if platform != "process":
        raise ConfigError(f"PLATFORM ({f('PLATFORM')}): this agent supports only 'process', found {platform[:40]!r}")
    cert = _readable("AGENT_TLS_CERT", f("AGENT_TLS_CERT"), raw["AGENT_TLS_CERT"])
    key = _readable("AGENT_TLS_KEY", f("AGENT_TLS_KEY"), raw["AGENT_TLS_KEY"])
    ca = _readable("AGENT_CA_CERT", f("AGENT_CA_CERT"), raw["AGENT_CA_CERT"])
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError):
        raise ConfigError(
            "AGENT_TLS_CERT / AGENT_TLS_KEY (--tls-cert / --tls-key): not a PEM certificate and "
            "the private key that belongs to it"
        ) from None
    try:
        ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError):
        raise ConfigError(f"AGENT_CA_CERT ({f('AGENT_CA_CERT')}): not a PEM CA certificate: {ca!r}") from None
    try:
        ports = PortRange.parse(raw["SESSION_PORTS"], f"SESSION_PORTS ({f('SESSION_PORTS')})")
    except PortRangeError as e:
        raise ConfigError(str(e)) from None
    max_cpu = raw["MAX_CPU"].strip()
    max_mem = raw["MAX_MEMORY"].strip()
    base_ms = _int("BACKOFF_BASE_MS", f("BACKOFF_BASE_MS"), raw["BACKOFF_BASE_MS"], 1, 3_600_000)
    max_ms = _int("BACKOFF_MAX_MS", f("BACKOFF_MAX_MS"), raw["BACKOFF_MAX_MS"], 1, 3_600_000)
    if max_ms < base_ms:
        raise ConfigError(
            f"BACKOFF_MAX_MS ({f('BACKOFF_MAX_MS')}): must be at least BACKOFF_BASE_MS ({base_ms}), found {max_ms}"
        )
    log_format = raw["LOG_FORMAT"].strip()
    if log_format not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT ({f('LOG_FORMAT')}): expected text or json, found {log_format[:40]!r}")
    data_dir = raw["AGENT_DATA_DIR"].strip()
    if not data_dir:
        raise ConfigError(f"AGENT_DATA_DIR ({f('AGENT_DATA_DIR')}): must not be empty")
    return Config(
        control_plane_url=url,
        target=f"{host}:{port}",
        agent_id=agent_id,
        tls_cert=cert,
        tls_key=key,
        ca_cert=ca,
        tls_server_name=raw["AGENT_TLS_SERVER_NAME"].strip(),
        data_dir=os.path.abspath(data_dir),
        platform=platform,
        region=raw["REGION"],
        max_sessions=_int("MAX_SESSIONS", f("MAX_SESSIONS"), raw["MAX_SESSIONS"], 0, 1_000_000),
        cpu_millis=_int("MAX_CPU", f("MAX_CPU"), max_cpu, 0, 1 << 20) * 1000 if max_cpu else 0,
        memory_bytes=_int("MAX_MEMORY", f("MAX_MEMORY"), max_mem, 0, 1 << 24) << 30 if max_mem else 0,
        session_ports=ports,
        port_lock_dir=raw["PORT_LOCK_DIR"].strip(),
        stop_grace=float(_int("STOP_GRACE_SECONDS", f("STOP_GRACE_SECONDS"), raw["STOP_GRACE_SECONDS"], 0, 3600)),
        backoff_base=base_ms / 1000,
        backoff_max=max_ms / 1000,
        log_format=log_format,
    )
