"""Removing a receiver's credentials from any text before it is logged, raised or stored.

A receiver's error text is whatever the remote side chose to answer, and some servers
echo the request back, ``Authorization`` header included. So redaction does not look
for the raw token alone; :class:`Redactor` removes every form a credential travels in:

* the raw secret;
* the HTTP Basic value, ``base64(user:secret)``, standard and URL-safe alphabets, with
  or without padding, and the inner characters of *any* base64 text that contains the
  secret (whatever bytes surround it);
* percent-encoded forms (``urllib.parse.quote``/``quote_plus``, either hex case) and the
  JSON-escaped form of each of the above;
* whatever follows ``Bearer``/``Basic``/``Token`` and header names such as
  ``Authorization``, credentials embedded in URLs (``https://user:pass@host``), and
  Slack and Atlassian token shapes, known or not.

Redact whole texts, then truncate: a secret cut in half by truncation is no longer
recognised. :meth:`Redactor.clip` does both in that order.

Third-party clients log through the standard :mod:`logging` module (slack-sdk logs
undecodable response bodies at ERROR; the ``jira`` session dumps responses at DEBUG).
:func:`guard_library_logs` puts a filter on those loggers that applies every live
receiver's redactor to each record before any handler sees it.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import weakref
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "[redacted]"
MIN_SECRET = 4
"""Shorter values are not treated as secrets (they would match ordinary text)."""
MIN_CORE = 8
"""Shortest base64 fragment searched for inside longer base64 text."""

_HEADER_VALUE = re.compile(
    r"""(?ix)
    \b((?:proxy-)?authorization|x-api-key|api[-_]?key|x-auth-token|set-cookie|cookie
       |(?:access_|refresh_|api_|auth_)?token|password|passwd|client_secret|secret)
    (["']?\s*[:=]\s*["']?)          # "Authorization": "  /  authorization=  /  Authorization:
    ([^"'\r\n,;}\]]+)               # the value, up to the end of the quoted string or line
    """
)
_SCHEME_VALUE = re.compile(r"(?i)\b(bearer|basic|token)(\s+|%20|\+)([A-Za-z0-9._~+/=\-%]{8,})")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s:@\"'<>]+:[^/\s@\"'<>]*@")
_KNOWN_TOKENS = re.compile(
    r"\b(?:xox[abposre]-[A-Za-z0-9\-]{6,}|xapp-[A-Za-z0-9\-]{6,}|ATATT[A-Za-z0-9_\-=]{16,})"
)
_SLACK_HOOK = re.compile(r"(?i)(hooks\.slack\.com/(?:services|workflows|triggers)/)[^\s\"'<>]+")
_LOWER_HEX = re.compile(r"%[0-9A-F]{2}")


def _looks_secret(value: str) -> bool:
    """A word after ``Basic``/``Bearer`` that is a credential, not prose ("Basic plan")."""
    return bool(re.search(r"[0-9+/=_.~\-%]", value) or re.search(r"[A-Z]", value[1:]))


def _scheme(match: re.Match[str]) -> str:
    if not _looks_secret(match.group(3)):
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{MASK}"


def _header(match: re.Match[str]) -> str:
    if match.group(3).lstrip().startswith(MASK[:-1]):  # already redacted: idempotent
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{MASK}"


def _b64_variants(data: bytes) -> set[str]:
    standard = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    return {standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("=")}


def _b64_cores(data: bytes) -> set[str]:
    """Characters fixed by ``data`` in any base64 text containing it, at each of 3 alignments."""
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode()
        start = math.ceil(offset * 8 / 6)
        end = ((offset + len(data)) * 8) // 6
        core = encoded[start:end]
        if len(core) >= MIN_CORE:
            cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def _encodings(form: str) -> set[str]:
    """``form`` as it may appear in URLs, form bodies and JSON."""
    found = {form, json.dumps(form)[1:-1]}
    for encoded in (quote(form), quote(form, safe=""), quote_plus(form), quote_plus(form, safe="")):
        found |= {encoded, _LOWER_HEX.sub(lambda m: m.group(0).lower(), encoded)}
    return found


def secret_forms(secrets: Iterable[str | None], users: Iterable[str | None] = ()) -> list[str]:
    """Every text form of ``secrets`` (and of ``user:secret`` pairs), longest first."""
    names = [u for u in users if u]
    forms: set[str] = set()
    for secret in secrets:
        if not secret or len(secret) < MIN_SECRET:
            continue
        raw = secret.encode()
        texts = {secret}
        for plain in {raw, b":" + raw, *(f"{user}:{secret}".encode() for user in names)}:
            texts |= _b64_variants(plain)
        texts |= _b64_cores(raw)
        for text in texts:
            forms |= _encodings(text)
    return sorted((f for f in forms if len(f) >= MIN_SECRET), key=lambda f: (-len(f), f))


class Redactor:
    """Removes the given secrets, in every form, and anything credential-shaped, from text."""

    def __init__(
        self, secrets: Iterable[str | None] = (), users: Iterable[str | None] = ()
    ) -> None:
        self.forms = secret_forms(secrets, users)
        self._exact = re.compile("|".join(map(re.escape, self.forms))) if self.forms else None

    @property
    def has_secrets(self) -> bool:
        return bool(self.forms)

    def __call__(self, text: str) -> str:
        # Credential shapes first (whole header values), then this receiver's own secrets.
        text = _HEADER_VALUE.sub(_header, text)
        text = _SCHEME_VALUE.sub(_scheme, text)
        text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASK}@", text)
        text = _KNOWN_TOKENS.sub(MASK, text)
        text = _SLACK_HOOK.sub(lambda m: f"{m.group(1)}{MASK}", text)
        if self._exact is not None:
            text = self._exact.sub(MASK, text)
        return text

    def clip(self, text: str, limit: int) -> str:
        """Redact all of ``text``, then cut it to ``limit`` characters."""
        clean = self(text)
        return clean if len(clean) <= limit else clean[: max(limit - 1, 0)] + "…"


GENERIC = Redactor()
"""Credential shapes only: for receivers without secrets of their own."""


def redact(text: str, secrets: Iterable[str | None], users: Iterable[str | None] = ()) -> str:
    """``text`` without any form of ``secrets`` (see :class:`Redactor`)."""
    return Redactor(secrets, users)(text)


class _LogFilter(logging.Filter):
    """Applies every registered redactor to the records of one library logger."""

    def __init__(self) -> None:
        super().__init__()
        self.redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        redactors = [GENERIC, *list(self.redactors)]
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        clean = message
        for redactor in redactors:
            clean = redactor(clean)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for redactor in redactors:
                record.exc_text = redactor(record.exc_text)
        if record.stack_info:
            for redactor in redactors:
                record.stack_info = redactor(record.stack_info)
        return True


_FILTER = _LogFilter()
_FILTER_LOCK = threading.Lock()


def guard_library_logs(redactor: Redactor, *logger_names: str) -> None:
    """Redact ``redactor``'s secrets from what the named library loggers emit.

    A filter only sees records created on its own logger (not those of children), so
    name the exact loggers the library writes to.
    """
    with _FILTER_LOCK:
        _FILTER.redactors.add(redactor)
        for name in logger_names:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
