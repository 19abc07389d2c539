"""Decisions on alerts from their Slack messages: one handler for both ways a click arrives.

A click on **Approve throttle**, **Reject**, **Silence** or **Acknowledge** reaches the
worker either as an HTTP ``POST /slack/actions`` (form-encoded ``payload=`` JSON, signed
with the app's signing secret) or, for a worker without a public address, over Socket
Mode (slack-sdk's ``SocketModeClient``: an outbound WebSocket, each envelope acked by its
``envelope_id``). Both end in :meth:`Approvals.decide`, which

1. finds the alert episode the button names in the outbox;
2. lets only the approvers of the routes that sent it there (or of the receiver) decide,
   user ids directly, user group ids through ``usergroups.users.list``;
3. claims the one decision an episode can have in the outbox database: a second click,
   or Slack retrying a request, finds it taken and is told who decided, changing nothing;
4. applies it: approve writes the proposed flag variant to the live flagd file
   (:meth:`~spendwatch.notifiers.flags.FlagNotifier.approve`), silence stores a silence
   like a configured one (event time from now for ``silence_for``, kept in the outbox so
   it outlives restarts), reject and acknowledge are recorded;
5. then, off the request thread (Slack wants an answer within 3 s), replaces the message's
   buttons by who decided what and when (``chat.update``) and comments on the alert's
   open Jira issue.

Every decision is a row of the outbox's ``decisions`` table and a ``decision`` log line.
Refusals (forged or stale requests, unknown users, repeats) are logged, never stored.
Secrets never reach a log line, an answer or a row.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from spendwatch.core.alerts import Alert
from spendwatch.core.logging import get_logger
from spendwatch.core.timefmt import rfc3339
from spendwatch.notifiers import slack_blocks as sb
from spendwatch.notifiers.base import NotifyError
from spendwatch.notifiers.flags import FlagNotifier
from spendwatch.notifiers.jira import JiraNotifier
from spendwatch.notifiers.outbox import Decision, Outbox
from spendwatch.notifiers.redaction import guard_library_logs
from spendwatch.notifiers.router import Match, SilenceConfig
from spendwatch.notifiers.slack import TOKEN_ERRORS, SlackNotifier

log = get_logger("spendwatch.slack_actions")

PATH = "/slack/actions"
MAX_BODY = 64 * 1024
"""A block_actions payload is a few kB; anything far larger is refused unread."""
ACTIONS = tuple(sb.ACTION_LABELS)


@dataclass(frozen=True)
class Answer:
    """What to answer an HTTP request: status and JSON body (None: an empty 200)."""

    status: int
    body: dict[str, Any] | None = None


def _ephemeral(text: str) -> dict[str, Any]:
    return {"response_type": "ephemeral", "replace_original": False, "text": text}


class Approvals:
    """Turns clicks into decisions against one outbox (the running worker's)."""

    def __init__(self, outbox: Outbox, clock: Callable[[], float] = time.time) -> None:
        self.outbox = outbox
        self._clock = clock
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- receivers --------------------------------------------------------------------------

    def slack_receivers(self) -> dict[str, SlackNotifier]:
        return {
            name: n
            for name, n in self.outbox.notifiers.items()
            if isinstance(n, SlackNotifier) and n.config.interactive
        }

    # -- HTTP -------------------------------------------------------------------------------

    def verified(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """Whether the request is signed by one of the configured apps, within 5 minutes."""
        for receiver in self.slack_receivers().values():
            secret = receiver.config.signing_secret
            if secret is None:
                continue
            verifier = SignatureVerifier(secret.get_secret_value())
            try:
                if verifier.is_valid_request(body, dict(headers)):
                    return True
            except (ValueError, TypeError):  # a timestamp that is not a number
                return False
        return False

    def handle_http(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """``POST /slack/actions``: 401 unless signed and fresh, else the decision's answer."""
        if not self.verified(body, headers):
            log.warning("slack request refused", reason="bad or stale signature")
            return Answer(401, {"error": "invalid signature"})
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=False)
            payload = json.loads(form["payload"][0])
        except (UnicodeDecodeError, KeyError, IndexError, ValueError):
            return Answer(400, {"error": "expected a form field payload with JSON"})
        if not isinstance(payload, dict):
            return Answer(400, {"error": "payload must be a JSON object"})
        return Answer(200, self.decide(payload, via="http"))

    # -- the decision -----------------------------------------------------------------------

    def decide(self, payload: Mapping[str, Any], via: str) -> dict[str, Any] | None:
        """Act on one ``block_actions`` payload; the ephemeral reply to the clicker, if any
        (also posted to the payload's ``response_url``)."""
        reply = self._decide(payload, via)
        if reply is not None:
            self._respond(payload, reply)
        return reply

    def _decide(self, payload: Mapping[str, Any], via: str) -> dict[str, Any] | None:
        if payload.get("type") != "block_actions":
            return None  # not a button click (a shortcut, a view): nothing of ours
        try:
            action = payload["actions"][0]
            name = str(action["action_id"]).removeprefix(sb.ACTION_PREFIX)
            value = json.loads(action["value"])
            fingerprint, episode, receiver = str(value["f"]), str(value["e"]), str(value["r"])
            user = payload["user"]
            user_id = str(user["id"])
        except (KeyError, IndexError, TypeError, ValueError):
            return _ephemeral("This button is not one of spendwatch's.")
        user_name = str(user.get("username") or user.get("name") or "") or None
        slack = self.slack_receivers().get(receiver)
        if name not in ACTIONS or slack is None:
            return _ephemeral("This button is not one of spendwatch's.")
        alert = self.outbox.firing_alert(fingerprint, episode)
        if alert is None:
            return _ephemeral("spendwatch no longer holds this alert; nothing was changed.")
        if not self._allowed(alert, receiver, slack, user_id):
            log.warning(
                "decision refused",
                reason="not an approver",
                user=user_id,
                action=name,
                fingerprint=fingerprint,
            )
            return _ephemeral("You are not allowed to decide on this alert; nothing was changed.")
        proposals = self.outbox.proposals(alert)
        if name == "approve" and not proposals:
            return _ephemeral("This alert proposes no throttle; nothing was changed.")
        now = self._clock()
        decision = Decision(
            fingerprint, episode, alert.alert_id, name, user_id, user_name, via, now
        )
        earlier = self.outbox.claim_decision(decision)
        if earlier is not None:
            log.warning(
                "decision refused",
                reason="already decided",
                user=user_id,
                action=name,
                fingerprint=fingerprint,
                decided_by=earlier.user_id,
            )
            return _ephemeral(
                f"Already decided: {earlier.action} by {_who(earlier)} at "
                f"{rfc3339(round(earlier.decided_at))}; nothing was changed."
            )
        try:
            outcome = self._apply(name, alert, proposals, decision, slack)
        except (NotifyError, OSError, ValueError) as error:
            self.outbox.release_decision(decision)
            message = slack.redact(str(error))
            log.error("decision failed", user=user_id, action=name, error=message)
            return _ephemeral(f"Could not {name}: {message}. Nothing was changed; try again.")
        self.outbox.finish_decision(decision, outcome)
        log.info(
            "decision",
            action=name,
            user=user_id,
            user_name=user_name,
            via=via,
            alert_id=alert.alert_id,
            fingerprint=fingerprint,
            rule=alert.rule,
            outcome=outcome,
        )
        where = _container(payload)
        self._later(self._follow_up, slack, alert, decision, outcome, where)
        return None

    def _allowed(self, alert: Alert, receiver: str, slack: SlackNotifier, user: str) -> bool:
        allowed = [*self.outbox.dispatcher.approvers(alert, receiver), *slack.config.approvers]
        if user in allowed:
            return True
        groups = [a for a in dict.fromkeys(allowed) if a.startswith("S")]
        return any(user in slack.members(group) for group in groups)

    def _apply(
        self,
        name: str,
        alert: Alert,
        proposals: dict[str, str],
        decision: Decision,
        slack: SlackNotifier,
    ) -> str:
        if name == "approve":
            applied = []
            for receiver in proposals:
                notifier = self.outbox.notifiers[receiver]
                if isinstance(notifier, FlagNotifier):
                    variant = notifier.approve(alert, self.outbox.state(receiver))
                    applied.append(f"flag {notifier.config.flag} set to {variant}")
            if not applied:
                raise NotifyError("no receiver could apply the proposal", retryable=False)
            return "applied: " + "; ".join(applied)
        if name == "reject":
            return "rejected: " + ("; ".join(proposals.values()) or "no change") + " not applied"
        if name == "silence":
            silence = self._silence(alert, decision, slack.config.silence_for)
            self.outbox.add_silence(silence)
            return f"silenced until {rfc3339(silence.end.timestamp())}"
        return "acknowledged"

    def _silence(self, alert: Alert, decision: Decision, seconds: float) -> SilenceConfig:
        """A silence of this alert's rule and exact scope, from now for ``seconds``."""
        start = datetime.fromtimestamp(decision.decided_at, tz=timezone.utc)
        end = datetime.fromtimestamp(decision.decided_at + seconds, tz=timezone.utc)
        return SilenceConfig(
            match=Match(
                kind=[alert.kind],
                rule=[_literal(alert.rule)],
                scope={k: _literal(v) for k, v in alert.scope.items()},
            ),
            start=start,
            end=end,
            reason=f"silenced from Slack by {_who(decision)}",
            created_by=decision.user_id,
        )

    # -- after the answer -------------------------------------------------------------------

    def _follow_up(
        self,
        slack: SlackNotifier,
        alert: Alert,
        decision: Decision,
        outcome: str,
        where: dict[str, str] | None,
    ) -> None:
        at = rfc3339(round(decision.decided_at))
        line = sb.decision_text(decision.action, decision.user_id, at, outcome)
        notes = self.outbox.notes(alert)
        try:
            slack.show_decision(alert, self.outbox.state(slack.name), line, notes, where)
        except NotifyError as error:
            log.warning("decision not shown in slack", error=slack.redact(str(error)))
        for name in self.outbox.dispatcher.route(alert):
            notifier = self.outbox.notifiers.get(name)
            if not isinstance(notifier, JiraNotifier):
                continue
            body = (
                f"{sb.DONE.get(decision.action, decision.action).split(' ', 1)[-1]} in Slack "
                f"by {_who(decision)} at {at}: {outcome}."
            )
            try:
                notifier.comment(alert, body)
            except NotifyError as error:
                log.warning("decision not commented in jira", error=notifier.redact(str(error)))

    def _respond(self, payload: Mapping[str, Any], reply: dict[str, Any]) -> None:
        url = payload.get("response_url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return

        def send() -> None:
            try:
                WebhookClient(url, timeout=10).send_dict(reply)
            except (SlackClientError, OSError, ValueError) as error:
                log.warning("slack response_url failed", error=type(error).__name__)

        self._later(send)

    def _later(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="slack-decision", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def wait(self, timeout: float = 10.0) -> None:
        """Wait for the follow-ups started so far (message updates, comments)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))


def _who(decision: Decision) -> str:
    return f"{decision.user_name} ({decision.user_id})" if decision.user_name else decision.user_id


def _literal(value: str) -> str:
    """A glob matching exactly ``value`` (silences match with globs)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in value)


def _container(payload: Mapping[str, Any]) -> dict[str, str] | None:
    container = payload.get("container") or {}
    channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
    ts = container.get("message_ts") or (payload.get("message") or {}).get("ts")
    if channel and ts:
        return {"channel": str(channel), "ts": str(ts)}
    return None


SOCKET_LOGGERS = (
    "slack_sdk.socket_mode.builtin.client",
    "slack_sdk.socket_mode.builtin.connection",
)


class SocketModeLink:
    """Clicks for one receiver over Socket Mode: ``apps.connections.open`` with the app
    token, then the ``wss`` URL it returns; each envelope is acked by its ``envelope_id``
    before the decision, as Slack expects within 3 seconds. Reconnects on its own."""

    def __init__(self, approvals: Approvals, slack: SlackNotifier) -> None:
        from slack_sdk import WebClient
        from slack_sdk.socket_mode import SocketModeClient

        assert slack.config.app_token is not None
        guard_library_logs(slack.redactor, *SOCKET_LOGGERS)
        self.approvals = approvals
        self.name = slack.name
        web = WebClient(base_url=slack.config.base_url, timeout=int(max(slack.config.timeout, 1)))
        self.client = SocketModeClient(
            app_token=slack.config.app_token.get_secret_value(), web_client=web
        )
        self.client.socket_mode_request_listeners.append(self._on_request)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._connect, name="slack-socket", daemon=True)

    def _on_request(self, client: Any, request: Any) -> None:
        from slack_sdk.socket_mode.response import SocketModeResponse

        client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type == "interactive" and isinstance(request.payload, dict):
            self.approvals.decide(request.payload, via="socket_mode")

    def _connect(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.client.connect()
            except SlackApiError as error:
                code = str((error.response.data or {}).get("error", "")) if error.response else ""
                if code in TOKEN_ERRORS:
                    log.error(
                        "slack socket mode: the app token was rejected; fix it and restart",
                        receiver=self.name,
                        error=code,
                    )
                    return
                self._retry_later(error, delay)
                delay = min(delay * 2, 60.0)
                continue
            except Exception as error:  # Slack unreachable: keep trying
                self._retry_later(error, delay)
                delay = min(delay * 2, 60.0)
                continue
            log.info("slack socket mode connected", receiver=self.name)
            return

    def _retry_later(self, error: Exception, delay: float) -> None:
        log.warning(
            "slack socket mode not connected, will retry",
            receiver=self.name,
            error=type(error).__name__,
            retry_in=delay,
        )
        self._stop.wait(delay)

    def start(self) -> SocketModeLink:
        self._thread.start()
        return self

    def connected(self) -> bool:
        return bool(self.client.is_connected())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            self.client.close()
        except Exception as error:  # closing a link that never opened
            log.debug("slack socket mode close", error=type(error).__name__)


class Interactivity:
    """What a worker runs for decisions: the shared handler and one Socket Mode link per
    receiver with an ``app_token`` (HTTP clicks reach the handler through the server)."""

    def __init__(self, outbox: Outbox) -> None:
        self.approvals = Approvals(outbox)
        self.links = [
            SocketModeLink(self.approvals, slack)
            for slack in self.approvals.slack_receivers().values()
            if slack.config.app_token is not None
        ]

    def start(self) -> Interactivity:
        for link in self.links:
            link.start()
        return self

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.approvals.wait(5.0)
