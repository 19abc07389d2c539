"""Redaction of a receiver's credentials in every form they travel in."""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
from urllib.parse import quote, quote_plus

import pytest

from spendwatch.notifiers.base import Notifier, NotifyError, redact
from spendwatch.notifiers.outbox import ERROR_LIMIT, Outbox
from spendwatch.notifiers.redaction import MASK, Redactor, guard_library_logs
from tests.notifier_kit import anomaly_alert

TOKEN = "tok-3x+amp/le=Secret_42"  # characters that base64, quote and JSON all treat specially
USER = "ops@example.com"


def forms(user: str, secret: str) -> dict[str, str]:
    """The forms a credential takes on the wire, computed independently of the redactor."""
    basic = f"{user}:{secret}".encode()
    found = {
        "raw": secret,
        "basic": base64.b64encode(basic).decode(),
        "basic-unpadded": base64.b64encode(basic).decode().rstrip("="),
        "basic-urlsafe": base64.urlsafe_b64encode(basic).decode(),
        "token-b64": base64.b64encode(secret.encode()).decode(),
        "quote": quote(secret, safe=""),
        "quote-default": quote(secret),
        "quote_plus": quote_plus(secret),
        "quote-lower-hex": re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), quote(secret, safe="")),
        "json": json.dumps(secret)[1:-1],
    }
    return found


@pytest.fixture
def redactor() -> Redactor:
    return Redactor([TOKEN], users=[USER])


@pytest.mark.parametrize("form", sorted(forms(USER, TOKEN)))
def test_every_form_of_the_secret_is_removed(redactor, form):
    value = forms(USER, TOKEN)[form]
    text = f"HTTP 400: the request had {value} in it"
    clean = redactor(text)
    assert value not in clean and MASK in clean
    for other in forms(USER, TOKEN).values():
        assert other not in clean


def test_any_base64_text_containing_the_secret_is_broken_up(redactor):
    rng = random.Random(7)
    for _ in range(300):
        before, after = os.urandom(rng.randint(0, 9)), os.urandom(rng.randint(0, 9))
        data = before + TOKEN.encode() + after
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(data).decode()
            clean = redactor(f"body={encoded};")
            assert MASK in clean
            rest = clean.split(MASK)
            # What is left around the mask decodes to at most a few bytes of the secret.
            assert all(len(part) < len(TOKEN) for part in rest)


@pytest.mark.parametrize(
    "text",
    [
        "{'Authorization': 'Basic Zm9vOmJhcjEyMzQ1Ng==', 'User-Agent': 'x'}",
        '{"authorization": "Bearer unknown-token-value-123"}',
        "Authorization: Bearer abc.def.ghi-123",
        "request failed: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
        "GET https://admin:hunter22@jira.example.com/rest/api/2/issue",
        "invalid_auth (xoxb-1234-5678-AbCdEfGh)",
        "posted to https://hooks.slack.com/services/T000/B000/XXXXXXXX failed",
        "token=abcdef123456&channel=C1",
    ],
)
def test_credential_shapes_are_removed_whoever_they_belong_to(text):
    clean = Redactor()(text)
    assert MASK in clean
    for secret in ("Zm9vOmJhcjEy", "unknown-token", "abc.def", "eyJhbG", "hunter22", "AbCdEf"):
        assert secret not in clean
    assert "XXXXXXXX" not in clean and "abcdef123456" not in clean


def test_prose_is_left_alone():
    text = "Basic authentication required; Bearer realm; authorization failed (HTTP 401)"
    assert Redactor()(text) == text


def test_redaction_is_idempotent(redactor):
    text = "Authorization: Basic " + forms(USER, TOKEN)["basic"] + f" and {TOKEN}"
    once = redactor(text)
    assert redactor(once) == once


def test_clip_redacts_before_cutting(redactor):
    # Cut first, the secret's first half would survive at the end of the message.
    text = "x" * (200 - len(TOKEN) // 2) + TOKEN
    clipped = redactor.clip(text, 200)
    assert len(clipped) <= 200 and TOKEN[: len(TOKEN) // 2] not in clipped


def test_the_module_function_covers_the_same_forms():
    assert redact(f"a {forms(USER, TOKEN)['basic']} b", [TOKEN], [USER]) == f"a {MASK} b"
    assert redact("short abc", ["abc"]) == "short abc"  # too short to be a secret


def test_library_loggers_are_filtered(caplog):
    redactor = Redactor(["library-secret-value"])
    guard_library_logs(redactor, "tests.fake_library")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("tests.fake_library").error("response body: %s", "library-secret-value")
    try:
        raise ValueError("library-secret-value")
    except ValueError:
        logging.getLogger("tests.fake_library").exception("failed")
    assert "library-secret-value" not in caplog.text
    assert MASK in caplog.text


class Leaky(Notifier):
    """A receiver whose errors carry its secret in full (redaction is the outbox's last line)."""

    def __init__(self) -> None:
        self.name = "leaky"
        self.redactor = Redactor([TOKEN])

    def notify(self, alert) -> None:
        raise NotifyError(f"echo: {TOKEN} " + "x" * 2000, retryable=True)


def test_the_outbox_redacts_what_it_stores_and_logs_then_cuts(tmp_path, capfd):
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(str(path), [Leaky()])
    outbox.put(anomaly_alert())
    outbox.step("leaky")
    [(error,)] = outbox._conn().execute("SELECT error FROM deliveries WHERE receiver='leaky'")
    assert TOKEN not in error and len(error) <= ERROR_LIMIT
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err
    outbox.close()
    for name in ("outbox.sqlite", "outbox.sqlite-wal"):
        if (tmp_path / name).exists():
            assert TOKEN.encode() not in (tmp_path / name).read_bytes()
