"""A reference StreamSpace agent: dials the control plane over mTLS, keeps one
AgentService.Attach stream open and runs sessions as local processes.

Layout:
  config.py   environment variables / flags (the shared agent contract)
  client.py   the stream: Hello, Welcome, acks, results, statuses, heartbeats, Drain, reconnects
  dedup.py    command de-duplication by id (bounded)
  status.py   the latest status of every session, and which ones are unsent
  backoff.py  exponential backoff with full jitter
  process.py  the process runtime (setsid, SIGSTOP/SIGCONT, state files, re-adoption)
  ports.py    session port range and allocation
  names.py    checks of names that reach paths (session ids, users)
  cli.py      the `streamspace-python-agent` entry point
  _gen/       code generated from proto/ by scripts/sdk-python.sh (never edited by hand)
"""

__version__ = "0.1.0"
