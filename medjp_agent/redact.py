"""Secrets kept out of everything medjp writes or prints.

A run folder is shared and archived, and a terminal is screen-shared: the command line a manifest records, a URL in
a log line or an error message must not carry an API key or a password. Three kinds are masked as ``***``:

- the value of a secret-bearing flag (``--api-key``, ``--hub-token``, ``--password``, ...), in both ``--flag VALUE``
  and ``--flag=VALUE`` forms;
- credentials in a URL (``http://user:pass@host`` becomes ``http://user:***@host``, ``http://token@host`` becomes
  ``http://***@host``) and secret query parameters (``?api_key=...``);
- any value registered with :func:`remember` (the API key, also when it came from ``MEDJP_API_KEY``), wherever it
  appears in a text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MASK = "***"
#: Words of a flag name (split at ``-``/``_``) that make its value a secret.
_SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pass", "auth",
                           "credential", "credentials"})
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?:(?P<user>[^\s/@:]*):)?[^\s/@]+@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:api[_-]?key|key|token|access[_-]token|secret|password|passwd)=)[^&#\s]+",
                           re.IGNORECASE)
#: Shorter values are not masked in free text: they would mask ordinary words and numbers too.
_MIN_REMEMBERED = 6
_remembered: set[str] = set()


def remember(secret: str | None) -> None:
    """Mask ``secret`` wherever :func:`redact_text` meets it from now on, in this process."""
    if secret and len(secret) >= _MIN_REMEMBERED:
        _remembered.add(secret)


def is_secret_flag(arg: str) -> bool:
    """Whether ``arg`` (``--api-key`` or ``--api-key=...``) is a flag whose value is a secret."""
    if not arg.startswith("-"):
        return False
    words = re.split(r"[-_]+", arg.lstrip("-").split("=", 1)[0].lower())
    return any(w in _SECRET_WORDS for w in words)


def redact_text(text: str) -> str:
    """``text`` with URL credentials, secret query parameters and remembered secrets masked."""
    # A user name before a password stays (it tells which account); a lone user part may be a token: masked.
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user'] + ':' if m['user'] else ''}{MASK}@", text)
    text = _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", text)
    for secret in sorted(_remembered, key=len, reverse=True):  # longest first: one secret may contain another
        text = text.replace(secret, MASK)
    return text


def without_masked_password(url: str) -> str:
    """A recorded URL made usable again: its masked password dropped, so the driver takes the password from where
    it keeps one (``PGPASSWORD``, ``~/.pgpass``) instead of trying ``***``."""
    return url.replace(f":{MASK}@", "@", 1)


def redact_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """A command line fit to record: secret flags' values and URL credentials masked."""
    out: list[str] = []
    masked_next = False
    for arg in argv:
        if masked_next:
            out.append(MASK)
            masked_next = False
        elif is_secret_flag(arg):
            flag, eq, _ = arg.partition("=")
            out.append(f"{flag}={MASK}" if eq else flag)
            masked_next = not eq
        else:
            out.append(redact_text(arg))
    return tuple(out)
