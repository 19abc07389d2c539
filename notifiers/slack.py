"""``type: slack``: one Block Kit message per firing alert, updated and replied to on resolve.

* A budget's thresholds in one period share a thread: the first crossing is posted to
  the channel, later ones reply in its thread (critical ones also broadcast).
* A resolved alert updates its firing message (``chat.update``) and replies in its thread.
* Exactly once: the slack-sdk retry handlers are switched off (its default re-sends a
  post once after a connection reset, which can double-post); the outbox retries
  instead, and on any attempt after the first we look for our own earlier post
  (message metadata carries the alert id) before posting again.
* Errors: 429 → retry after ``Retry-After``; token errors are not retried; messages
  never contain the token.
* Decisions: with a ``signing_secret`` (clicks to the worker's ``POST /slack/actions``)
  or an ``app_token`` (Socket Mode), a firing alert's message carries the buttons
  **Approve throttle** (when a receiver proposes a throttle for it), **Reject**,
  **Silence** and **Acknowledge**; ``spendwatch.notifiers.slack_actions`` handles the
  clicks and :meth:`SlackNotifier.show_decision` replaces the buttons by who decided
  what, and when.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
from typing import Any, Literal

from pydantic import Field, SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Duration, StrictModel
from spendwatch.notifiers import render
from spendwatch.notifiers import slack_blocks as sb
from spendwatch.notifiers.base import (
    Delivery,
    MemoryState,
    Notifier,
    NotifyError,
    ReceiverState,
    register_notifier,
)
from spendwatch.notifiers.redaction import Redactor, guard_library_logs
from spendwatch.notifiers.router import SlackId

SDK_LOGGERS = ("slack_sdk.web.base_client", "slack_sdk.web.slack_response")
"""Where slack-sdk logs requests and response bodies (an error body may echo the token)."""

TOKEN_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "not_allowed_token_type",
        "missing_scope",
        "no_permission",
        "ekm_access_denied",
    }
)
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


class SlackConfig(StrictModel):
    """A Slack channel reached with a bot token (scopes: chat:write, channels:history)."""

    type: Literal["slack"] = "slack"
    name: str = Field(default="slack", description="receiver name used by routes")
    token: SecretStr = Field(description="bot token, e.g. ${SLACK_BOT_TOKEN}; never logged")
    channel: str = Field(min_length=1, description="channel id (C...), needed to update messages")
    base_url: str = Field(default="https://slack.com/api/", description="Web API base URL")
    timeout: float = Field(default=10.0, gt=0, description="seconds per HTTP request")
    thread_budgets: bool = Field(
        default=True, description="one thread per budget scope and period for its thresholds"
    )
    reply_on_resolve: bool = Field(default=True, description="also reply in the thread")
    signing_secret: SecretStr | None = Field(
        default=None,
        description="the Slack app's signing secret, e.g. ${SLACK_SIGNING_SECRET}: messages get "
        "decision buttons whose clicks POST /slack/actions verifies; never logged",
    )
    app_token: SecretStr | None = Field(
        default=None,
        description="app-level token (xapp-…, scope connections:write), e.g. ${SLACK_APP_TOKEN}: "
        "clicks arrive over Socket Mode, an outbound WebSocket (no public URL); never logged",
    )
    approvers: list[SlackId] = Field(
        default_factory=list,
        description="Slack user ids (U…/W…) or user group ids (S…) who may decide on every "
        "alert this receiver posts, beside the approvers of the routes that sent it",
    )
    silence_for: Duration = Field(
        default=4 * 3600, description="how long the Silence button silences a rule and scope"
    )

    @property
    def interactive(self) -> bool:
        """Whether clicks can reach the worker (HTTP or Socket Mode): only then buttons."""
        return self.signing_secret is not None or self.app_token is not None


@register_notifier("slack", SlackConfig)
class SlackNotifier(Notifier):
    idempotent = True

    def __init__(self, config: SlackConfig) -> None:
        self.name = config.name
        self.config = config
        self._token = config.token.get_secret_value()
        self.redactor = Redactor(
            [
                self._token,
                *(s.get_secret_value() for s in (config.signing_secret, config.app_token) if s),
            ]
        )
        guard_library_logs(self.redactor, *SDK_LOGGERS)
        # retry_handlers=[]: no silent re-posts; the outbox retries after checking.
        self.client = WebClient(
            token=self._token,
            base_url=config.base_url,
            timeout=int(max(config.timeout, 1)),
            retry_handlers=[],
        )
        self._memory = MemoryState()

    def notify(self, alert: Alert) -> None:
        self.deliver(alert, Delivery(state=self._memory))

    def deliver(self, alert: Alert, delivery: Delivery) -> None:
        failure: NotifyError | None = None
        try:
            if alert.status == "resolved":
                self._resolve(alert, delivery)
            else:
                self._fire(alert, delivery)
        except SlackApiError as error:
            failure = self._api_error(error)
        except (SlackClientError, urllib.error.URLError, OSError, http.client.HTTPException) as e:
            # A timed-out post may still land: wait as long again before looking for it.
            timed_out = isinstance(e, TimeoutError) or isinstance(
                getattr(e, "reason", None), TimeoutError
            )
            failure = NotifyError(
                f"slack: connection failed ({type(e).__name__}); will check before re-posting",
                retryable=True,
                retry_after=self.config.timeout if timed_out else None,
            )
        if failure is not None:
            # Raised outside the handler: no __context__ carrying the SDK's error (its
            # response body may echo the request) reaches a traceback or a log.
            raise failure

    # -- firing ---------------------------------------------------------------------------------

    def _fire(self, alert: Alert, delivery: Delivery, notes: list[str] | None = None) -> None:
        state = delivery.state
        thread_key = self._thread_key(alert)
        thread = _load(state.get(thread_key)) if thread_key else None
        thread_ts = thread["ts"] if thread else None
        channel = thread["channel"] if thread else self.config.channel
        if delivery.maybe_done:
            found = self._find(alert, channel, thread_ts, delivery)
            if found is not None:
                self._remember(state, alert, channel, found, thread_ts, thread_key)
                return
        response = self.client.chat_postMessage(
            channel=channel,
            text=sb.fallback_text(alert),
            blocks=sb.blocks(
                alert,
                delivery.notes if notes is None else notes,
                actions=self._actions(alert, delivery),
            ),
            thread_ts=thread_ts,
            reply_broadcast=True if thread_ts and alert.severity == "critical" else None,
            metadata=sb.metadata(alert),
            unfurl_links=False,
        )
        self._remember(state, alert, response["channel"], response["ts"], thread_ts, thread_key)

    def _remember(
        self,
        state: Any,
        alert: Alert,
        channel: str,
        ts: str,
        thread_ts: str | None,
        thread_key: str | None,
    ) -> None:
        record = {"channel": channel, "ts": ts, "thread_ts": thread_ts or ts}
        state.put(_message_key(alert), json.dumps(record))
        if thread_key and thread_ts is None:
            state.put(thread_key, json.dumps({"channel": channel, "ts": ts}))

    def _thread_key(self, alert: Alert) -> str | None:
        if not self.config.thread_budgets or alert.kind != "budget" or not alert.period:
            return None
        return f"thread:{alert.rule}|{render.scope_key(alert)}|{alert.period}"

    # -- resolved -------------------------------------------------------------------------------

    def _resolve(self, alert: Alert, delivery: Delivery) -> None:
        original = _load(delivery.state.get(_message_key(alert)))
        if original is None:  # firing never posted here (routed elsewhere, or state lost)
            self._fire(alert, delivery)
            return
        channel = original["channel"]
        self.client.chat_update(  # idempotent: the same content twice is one message
            channel=channel,
            ts=original["ts"],
            text=sb.fallback_text(alert),
            blocks=sb.blocks(
                alert, delivery.notes, decision=delivery.state.get(_decision_key(alert))
            ),
        )
        if not self.config.reply_on_resolve:
            return
        thread_ts = original["thread_ts"]
        if delivery.maybe_done and self._find(alert, channel, thread_ts, delivery) is not None:
            return
        self.client.chat_postMessage(
            channel=channel,
            thread_ts=thread_ts,
            text=sb.fallback_text(alert),
            blocks=sb.resolved_reply(alert),
            metadata=sb.metadata(alert),
        )

    # -- decisions ------------------------------------------------------------------------------

    def _actions(self, alert: Alert, delivery: Delivery) -> list[dict[str, Any]] | None:
        if not self.config.interactive or alert.status != "firing":
            return None
        return sb.actions(
            alert, self.name, approve=bool(delivery.proposals), silence_for=self.config.silence_for
        )

    def message_of(self, alert: Alert, state: ReceiverState) -> dict[str, str] | None:
        """Where this receiver posted ``alert`` (channel, ts), if it did."""
        return _load(state.get(_message_key(alert)))

    def show_decision(
        self,
        alert: Alert,
        state: ReceiverState,
        decision: str,
        notes: list[str],
        where: dict[str, str] | None = None,
    ) -> None:
        """Replace the buttons of ``alert``'s message by ``decision`` (mrkdwn, built by
        :func:`~spendwatch.notifiers.slack_blocks.decision_text`); kept for its resolve."""
        state.put(_decision_key(alert), decision)
        where = where or self.message_of(alert, state)
        if not where:
            return
        try:
            self.client.chat_update(
                channel=where["channel"],
                ts=where["ts"],
                text=sb.fallback_text(alert),
                blocks=sb.blocks(alert, notes, decision=decision),
            )
        except SlackApiError as error:
            failure = self._api_error(error)
        except (SlackClientError, urllib.error.URLError, OSError, http.client.HTTPException) as e:
            failure = NotifyError(f"slack: connection failed ({type(e).__name__})", retryable=True)
        else:
            return
        raise failure

    def members(self, group: str) -> set[str]:
        """User ids in a Slack user group (scope usergroups:read)."""
        try:
            response = self.client.usergroups_users_list(usergroup=group)
        except (SlackClientError, urllib.error.URLError, OSError, http.client.HTTPException):
            return set()  # unknown membership: nobody is let in through this group
        return {str(u) for u in response.get("users", [])}

    # -- finding an earlier post ----------------------------------------------------------------

    def _find(
        self, alert: Alert, channel: str, thread_ts: str | None, delivery: Delivery
    ) -> str | None:
        """ts of our earlier post of ``alert`` (attempts > 1 only), or None."""
        oldest = f"{(delivery.first_attempt_at or 0) - 60:.6f}"
        cursor = None
        for _ in range(10):  # at most 10 pages of 200 messages since the first attempt
            if thread_ts:
                page = self.client.conversations_replies(
                    channel=channel,
                    ts=thread_ts,
                    include_all_metadata=True,
                    limit=200,
                    cursor=cursor,
                )
            else:
                page = self.client.conversations_history(
                    channel=channel,
                    oldest=oldest,
                    include_all_metadata=True,
                    limit=200,
                    cursor=cursor,
                )
            for message in page.get("messages", []):
                if thread_ts and message.get("ts") == thread_ts:
                    continue  # the thread's parent is never the reply we look for
                if sb.is_ours(message, alert):
                    return str(message["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        return None

    # -- errors ---------------------------------------------------------------------------------

    def _api_error(self, error: SlackApiError) -> NotifyError:
        response = error.response
        status = getattr(response, "status_code", 0) or 0
        data = response.data if isinstance(getattr(response, "data", None), dict) else {}
        code = self.redactor.clip(str(data.get("error", f"http_{status}")), 200)
        if status == 429 or code == "ratelimited":
            headers = {k.lower(): v for k, v in (response.headers or {}).items()}
            retry_after = _seconds(headers.get("retry-after"))
            return NotifyError(
                f"slack: rate limited, retry after {retry_after:g}s",
                retryable=True,
                retry_after=retry_after,
            )
        if code in TOKEN_ERRORS:
            return NotifyError(
                f"slack: the token was rejected ({code}); fix the token and restart",
                retryable=False,
            )
        if status >= 500 or code in TRANSIENT_ERRORS:
            return NotifyError(f"slack: server error ({code}, HTTP {status})", retryable=True)
        return NotifyError(f"slack: request rejected ({code}, HTTP {status})", retryable=False)


def _message_key(alert: Alert) -> str:
    return f"msg:{alert.fingerprint}:{alert.episode}"


def _decision_key(alert: Alert) -> str:
    return f"decision:{alert.fingerprint}:{alert.episode}"


def _load(value: str | None) -> dict[str, str] | None:
    return json.loads(value) if value else None


def _seconds(value: object) -> float:
    try:
        return max(float(str(value)), 0.0)
    except (TypeError, ValueError):
        return 1.0
