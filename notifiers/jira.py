"""``type: jira``: an issue per alert condition for prompt and feature owners.

Exactly once with a client that can double-create: the ``jira`` session retries POSTs
after connection errors and a create whose response was lost leaves an issue we never
heard of. So every create is preceded by a JQL search for an open issue carrying the
fingerprint label (``spendwatch-<fingerprint>``); a found issue gets a comment instead,
and a comment is only added when no earlier comment carries this alert's id. The
client's own retries are switched off (``max_retries=0``): the outbox retries, with
backoff and ``Retry-After``, and every retry searches first.

The client picks the search endpoint from ``serverInfo.deploymentType`` (Server/Data
Center ``/search``, Cloud ``/search/jql``), so both work. Never ``str()`` a
``JIRAError``: it prints the request headers, credentials included.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Literal

import requests
from jira import JIRA, JIRAError
from pydantic import Field, SecretStr

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Severity, StrictModel
from spendwatch.notifiers import render
from spendwatch.notifiers.base import (
    Delivery,
    Notifier,
    NotifyError,
    register_notifier,
)
from spendwatch.notifiers.redaction import Redactor, guard_library_logs

CLIENT_LOGGERS = ("jira", "jira.resilientsession", "urllib3.connectionpool")
"""Where the client logs (its session dumps response headers and bodies at DEBUG)."""


class JiraConfig(StrictModel):
    """A Jira project that receives issues (Cloud: email + API token; Server/DC: token)."""

    type: Literal["jira"] = "jira"
    name: str = Field(default="jira", description="receiver name used by routes")
    url: str = Field(description="Jira base URL, e.g. https://example.atlassian.net")
    email: str | None = Field(default=None, description="Cloud: account email (basic auth)")
    token: SecretStr = Field(description="API token or personal access token; never logged")
    project: str = Field(min_length=1, description="project key, e.g. FINOPS")
    issue_type: str = Field(default="Task", description="issue type name")
    priorities: dict[Severity, str] = Field(
        default_factory=lambda: {"info": "Low", "warning": "Medium", "critical": "High"},
        description="Jira priority name per alert severity",
    )
    labels: list[str] = Field(
        default_factory=lambda: ["spendwatch"], description="added beside the fingerprint label"
    )
    resolve_transition: str | None = Field(
        default=None, description="transition to apply on resolved (e.g. Done); none: comment only"
    )
    rule_url: str | None = Field(
        default=None, description="link to the rule, '{rule}' is replaced by its name"
    )
    assign_owner: bool = Field(default=True, description="make the alert's owner the assignee")
    timeout: float = Field(default=15.0, gt=0, description="seconds per HTTP request")


@register_notifier("jira", JiraConfig)
class JiraNotifier(Notifier):
    idempotent = True

    def __init__(self, config: JiraConfig) -> None:
        self.name = config.name
        self.config = config
        self._token = config.token.get_secret_value()
        # The email is no secret, but base64(email:token) is the Basic credential.
        self.redactor = Redactor([self._token], users=[config.email])
        guard_library_logs(self.redactor, *CLIENT_LOGGERS)
        self._client: JIRA | None = None
        self._lock = threading.Lock()

    # -- client ---------------------------------------------------------------------------------

    def client(self) -> JIRA:
        """Connected lazily (so ``check-config`` never touches the network)."""
        with self._lock:
            if self._client is None:
                auth: dict[str, Any]
                if self.config.email:
                    auth = {"basic_auth": (self.config.email, self._token)}
                else:
                    auth = {"token_auth": self._token}
                self._client = JIRA(
                    server=self.config.url,
                    max_retries=0,
                    timeout=self.config.timeout,
                    options={"check_update": False},
                    **auth,
                )
            return self._client

    def notify(self, alert: Alert) -> None:
        self.deliver(alert, Delivery())

    def deliver(self, alert: Alert, delivery: Delivery) -> None:
        failure: NotifyError | None = None
        try:
            if alert.status == "resolved":
                self._resolve(alert)
            else:
                self._fire(alert)
        except JIRAError as error:
            failure = self._api_error(error)
        except requests.RequestException as error:
            # A timed-out create may still land: wait as long again before searching for it.
            timed_out = isinstance(error, requests.Timeout)
            failure = NotifyError(
                f"jira: connection failed ({type(error).__name__}); will search before creating",
                retryable=True,
                retry_after=self.config.timeout if timed_out else None,
            )
        if failure is not None:
            # Raised outside the handler: the JIRAError, whose str() prints the request
            # headers, is not kept as __context__ for a traceback or a log to print.
            raise failure

    # -- firing ---------------------------------------------------------------------------------

    def _fire(self, alert: Alert) -> None:
        jira = self.client()
        existing = self._open_issue(alert)
        if existing is not None:
            self._comment_once(existing, alert, self._fired_again(alert))
            return
        fields: dict[str, Any] = {
            "project": {"key": self.config.project},
            "issuetype": {"name": self.config.issue_type},
            "summary": summary(alert),
            "description": self._description(alert),
            "labels": [*self.config.labels, fingerprint_label(alert)],
            "priority": {"name": self.config.priorities.get(alert.severity, "Medium")},
        }
        assignee = render.owner_id(alert, "jira") or alert.owner
        if self.config.assign_owner and assignee:
            fields["assignee"] = {"accountId": assignee} if _is_cloud(jira) else {"name": assignee}
        try:
            jira.create_issue(fields=fields, prefetch=False)
        except JIRAError as error:
            if error.status_code == 400 and "assignee" in fields and _mentions(error, "assignee"):
                # An owner Jira does not know must not block the issue: create it unassigned.
                del fields["assignee"]
                jira.create_issue(fields=fields, prefetch=False)
            else:
                raise

    def _open_issue(self, alert: Alert) -> str | None:
        jql = (
            f"project = {jql_quote(self.config.project)} AND labels = "
            f"{jql_quote(fingerprint_label(alert))} AND statusCategory != Done ORDER BY created ASC"
        )
        result = self.client().search_issues(
            jql, maxResults=1, fields=["status", "labels"], json_result=True
        )
        issues = result.get("issues", []) if isinstance(result, dict) else []
        return issues[0]["key"] if issues else None

    def _comment_once(self, key: str, alert: Alert, body: str) -> None:
        jira = self.client()
        marker = _marker(alert)
        issue = jira.issue(key, fields="description")
        if marker in str(issue.raw.get("fields", {}).get("description") or ""):
            return  # the issue was created for this very alert
        if any(marker in str(comment.body) for comment in jira.comments(key)):
            return
        jira.add_comment(key, body)

    def comment(self, alert: Alert, body: str) -> str | None:
        """Comment ``body`` (plain text, escaped here) on the condition's open issue; its key,
        or None when no issue is open. For what people decided about the alert in Slack."""
        failure: NotifyError | None = None
        try:
            key = self._open_issue(alert)
            if key is not None:
                self.client().add_comment(key, wiki_escape(body))
            return key
        except JIRAError as error:
            failure = self._api_error(error)
        except requests.RequestException as error:
            failure = NotifyError(
                f"jira: connection failed ({type(error).__name__})", retryable=True
            )
        raise failure

    # -- resolved -------------------------------------------------------------------------------

    def _resolve(self, alert: Alert) -> None:
        key = self._open_issue(alert)
        if key is None:
            return  # nothing open for this condition (closed by hand, or never routed here)
        self._comment_once(key, alert, self._resolved_comment(alert))
        if self.config.resolve_transition:
            jira = self.client()
            wanted = self.config.resolve_transition.casefold()
            for transition in jira.transitions(key):
                if str(transition.get("name", "")).casefold() == wanted:
                    jira.transition_issue(key, transition["id"])
                    return
            raise NotifyError(
                f"jira: issue {key} has no transition named {self.config.resolve_transition!r}",
                retryable=False,
            )

    # -- text -----------------------------------------------------------------------------------

    def _description(self, alert: Alert) -> str:
        lines = [
            f"h3. {wiki_escape(render.title(alert))}",
            "",
            f"*Observed vs expected:* {wiki_escape(render.comparison(alert))}",
            f"*Scope:* {wiki_escape(render.scope_text(alert))}",
            f"*Window:* {wiki_escape(render.window_text(alert))}",
            f"*Severity:* {alert.severity}",
        ]
        if alert.period:
            lines.append(f"*Period:* {wiki_escape(alert.period)}")
        drivers = render.driver_lines(alert)
        if drivers:
            lines += ["", "*Drivers:*", *(f"* {wiki_escape(d)}" for d in drivers)]
        if alert.owner:
            lines.append(f"*Owner:* {wiki_escape(alert.owner)}")
        lines += ["", f"*Rule:* {self._rule_link(alert)}", "", _marker(alert)]
        return "\n".join(lines)

    def _fired_again(self, alert: Alert) -> str:
        return (
            f"Firing again: {wiki_escape(render.comparison(alert))} "
            f"(window {wiki_escape(render.window_text(alert))}).\n{_marker(alert)}"
        )

    def _resolved_comment(self, alert: Alert) -> str:
        return (
            f"Resolved: {wiki_escape(render.comparison(alert))} "
            f"(window {wiki_escape(render.window_text(alert))}).\n{_marker(alert)}"
        )

    def _rule_link(self, alert: Alert) -> str:
        name = wiki_escape(alert.rule)
        if self.config.rule_url:
            url = self.config.rule_url.replace(
                "{rule}", re.sub(r"[^A-Za-z0-9_.-]", "-", alert.rule)
            )
            return f"[{name}|{url}]"
        return f"{name} (spendwatch config)"

    # -- errors ---------------------------------------------------------------------------------

    def _api_error(self, error: JIRAError) -> NotifyError:
        status = error.status_code or 0
        text = self.redactor.clip(str(error.text or ""), 200)  # redact all, then cut
        if status == 429 or status == 503:
            headers = getattr(error.response, "headers", None) or {}
            retry_after = _seconds(headers.get("Retry-After"))
            return NotifyError(
                f"jira: HTTP {status}, retry after {retry_after:g}s",
                retryable=True,
                retry_after=retry_after,
            )
        if status in (401, 403):
            return NotifyError(
                f"jira: credentials rejected (HTTP {status}); fix the token and restart",
                retryable=False,
            )
        if status >= 500 or status == 0:
            return NotifyError(f"jira: server error (HTTP {status}): {text}", retryable=True)
        return NotifyError(f"jira: request rejected (HTTP {status}): {text}", retryable=False)


def fingerprint_label(alert: Alert) -> str:
    """The label that finds this condition's open issue again."""
    return f"spendwatch-{alert.fingerprint}"


def jql_quote(value: str) -> str:
    """A JQL string literal: double quotes with ``\\`` and ``"`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


SUMMARY_LIMIT = 255
"""Jira's limit on a summary, in UTF-16 code units (Java string length)."""
_WIKI_SPECIAL = re.compile(r"([{}\[\]|*_^~!#]|(?<![^\W_])[-+?]|[-+?](?![^\W_]))")
"""Wiki markup characters; ``-``/``+``/``?`` only where they can open or close a span."""


def summary(alert: Alert) -> str:
    """The issue summary: one line, no control characters, at most 255 characters."""
    text = " ".join(render.one_line(render.title(alert)).split())
    if _utf16_length(text) <= SUMMARY_LIMIT:
        return text
    text = text[: SUMMARY_LIMIT - 1]  # a character is at least one UTF-16 unit
    while _utf16_length(text) > SUMMARY_LIMIT - 1:
        text = text[:-1]
    return text + "…"


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def wiki_escape(text: str) -> str:
    """Jira wiki markup for user text that renders as typed, on one line.

    A backslash becomes a look-alike (``\\`` is Jira's forced line break), line breaks
    and control characters a space, and every markup character is escaped.
    """
    text = render.one_line(text).replace("\\", "\u29f5")
    return _WIKI_SPECIAL.sub(r"\\\1", text)


def _marker(alert: Alert) -> str:
    return f"spendwatch alert {alert.alert_id} fingerprint {alert.fingerprint}"


def _is_cloud(jira: JIRA) -> bool:
    return getattr(jira, "deploymentType", None) == "Cloud"


def _mentions(error: JIRAError, word: str) -> bool:
    return word in str(error.text or "") or word in str(getattr(error.response, "text", ""))


def _seconds(value: object) -> float:
    try:
        return max(float(str(value)), 0.0)
    except (TypeError, ValueError):
        return 1.0
