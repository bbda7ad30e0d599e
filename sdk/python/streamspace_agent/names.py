"""Checks of names that come from the control plane (session ids, user names) before
they reach a path: a home directory is <data>/homes/<user>, and stopping a session may
delete it. The control plane validates them too; this is the agent's own defence."""

from __future__ import annotations

import re

MAX_NAME = 63

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


class NameError_(ValueError):
    """A name refused; the message names the field and the rule."""


def quote(s: str, limit: int = 64) -> str:
    """`s` as an error may show it: repr-quoted, cut with its length when long."""
    if len(s) > limit:
        return f"{s[:limit]!r}... ({len(s)} characters)"
    return repr(s)


def check_session(session_id: str) -> None:
    if len(session_id) > MAX_NAME or not _DNS_LABEL.fullmatch(session_id):
        raise NameError_(
            "session_id: expected a DNS label: 1-63 of a-z, 0-9 and '-', starting and "
            f"ending with a letter or digit, found {quote(session_id)}"
        )


def check_user(user: str) -> None:
    if len(user) > MAX_NAME or not _USER.fullmatch(user):
        raise NameError_(
            "user: expected 1-63 of letters, digits, '.', '_', '@' and '-', starting with "
            f"a letter or digit, found {quote(user)}"
        )
