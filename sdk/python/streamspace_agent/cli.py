"""`streamspace-python-agent`: reads the settings, re-adopts live sessions, runs the
stream until SIGTERM or SIGINT. Session processes keep running when the agent exits;
the next agent re-adopts them."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time

from .client import Agent
from .config import Config, ConfigError, load
from .ports import PortAllocator
from .process import ProcessRuntime
from .status import StatusSink


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "target": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


async def run(cfg: Config) -> None:
    statuses = StatusSink()
    ports = PortAllocator(cfg.session_ports, cfg.port_lock_dir or None)
    try:
        runtime = ProcessRuntime(cfg.data_dir, statuses, ports, cfg.max_sessions, cfg.stop_grace)
    except OSError as e:
        raise ConfigError(f"AGENT_DATA_DIR (--data-dir): cannot use {cfg.data_dir!r}: {e.strerror}") from None
    await runtime.open()
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.set)
    await Agent(cfg, runtime, statuses).run(shutdown)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = load(argv)
    except ConfigError as e:
        print(f"streamspace-python-agent: error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_format)
    try:
        asyncio.run(run(cfg))
    except ConfigError as e:
        logging.getLogger("streamspace_agent").error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
