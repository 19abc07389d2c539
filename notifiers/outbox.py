"""The durable outbox between the dataflow and the receivers (SQLite, WAL).

Why a table and not a queue: an alert must survive a crash between "raised" and
"sent", and a replay after recovery must not page anybody twice. So

* an alert is stored once: ``UNIQUE(fingerprint, status, episode)``; putting it again
  (a replay, a retried batch) is a no-op and creates no deliveries;
* each (alert, receiver) pair is a delivery row. Each receiver has its own thread that
  sends its deliveries **in order** (a resolved alert never overtakes its firing alert,
  a restore never overtakes a throttle); a failing receiver waits with exponential
  backoff and jitter, or exactly ``retry_after`` when the receiver said so, without
  holding up the others;
* the attempt counter is committed *before* calling the receiver, so after a crash the
  receiver is told (``Delivery.attempt > 1``) that its earlier attempt may have landed
  and checks before acting again;
* a delivery is given up only when it is older than ``max_age`` (logged as an error and
  counted in ``spendwatch_deliveries_total{outcome="expired"}``). Non-retryable errors
  (bad token, unknown channel) stop that delivery for this run; a restart tries such
  deliveries again, which is what an operator wants after fixing the token.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import Counter, Gauge
from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Duration, StrictModel
from spendwatch.core.logging import get_logger
from spendwatch.notifiers.base import Delivery, Notifier, NotifyError
from spendwatch.notifiers.redaction import GENERIC, Redactor
from spendwatch.notifiers.router import Dispatcher, Plan, SilenceConfig

log = get_logger("spendwatch.outbox")

# Registered on no registry here (``registry=None``): the worker's HTTP server puts them on
# its own (``spendwatch.service.metrics.build_registry``), never on the process-global one.
DELIVERIES = Counter(
    "spendwatch_deliveries",
    "Outcomes of delivery attempts by receiver",
    ["receiver", "outcome"],  # sent | retry | failed | expired
    registry=None,
)
PENDING = Gauge(
    "spendwatch_deliveries_pending", "Deliveries not yet sent", ["receiver"], registry=None
)
ERROR_LIMIT = 1000
"""Characters of a receiver's error kept in ``deliveries.error`` and in the log line."""
PRUNE_EVERY = 3600.0
"""Seconds of wall time between deletions of alerts past ``delivery.retention``."""


class DeliveryConfig(StrictModel):
    """``delivery:``: where the outbox lives and how hard it tries."""

    outbox_path: str = Field(
        default="out/outbox.sqlite", description="SQLite file of the durable outbox"
    )
    max_age: Duration = Field(
        default=86400, description="give up on a delivery this long after the alert was stored"
    )
    backoff_initial: float = Field(default=1.0, gt=0, description="seconds before the 1st retry")
    backoff_max: float = Field(default=300.0, gt=0, description="cap on the backoff, seconds")
    flush_timeout: Duration = Field(
        default=30, description="at shutdown/end of input, wait this long for pending deliveries"
    )
    retention: Duration = Field(
        default=30 * 86400,
        description="stored alerts whose deliveries are all finished are deleted this long "
        "after they were stored (0: kept forever); the firing alert of an episode not yet "
        "resolved is kept. Longer than any outage to resume from: a replay of an alert "
        "already deleted sends it again",
    )

    @model_validator(mode="after")
    def _retention_outlives_deliveries(self) -> DeliveryConfig:
        if self.retention and self.retention <= self.max_age:
            raise ValueError("retention must be longer than max_age (or 0: keep forever)")
        return self


_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    episode TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    stored_at REAL NOT NULL,
    silenced TEXT,
    notes TEXT,
    UNIQUE (fingerprint, status, episode)
);
CREATE TABLE IF NOT EXISTS deliveries (
    receiver TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES alerts(seq),
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    first_at REAL,
    done_at REAL,
    error TEXT,
    PRIMARY KEY (receiver, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (receiver, state, seq);
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    definition TEXT NOT NULL,
    created_at REAL NOT NULL,
    ends_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL,
    episode TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    action TEXT NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT,
    via TEXT NOT NULL,
    decided_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    UNIQUE (fingerprint, episode)
);
CREATE TABLE IF NOT EXISTS receiver_state (
    receiver TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (receiver, key)
) WITHOUT ROWID;
"""


PRIVATE_MODE = 0o600
"""The outbox holds alerts and receivers' errors and state: readable by its owner only."""


def create_private(path: str) -> None:
    """Create the database file with mode 0600 before SQLite opens it; tighten an older one.

    SQLite creates ``-wal``, ``-shm`` and ``-journal`` with the database file's mode, so
    creating the file first (``os.open`` with 0600, no process-wide umask change) covers
    them too; existing companions from an older, looser file are tightened here.
    """
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE))
    except OSError:
        return  # sqlite3.connect reports the problem in its own words
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        try:
            if os.stat(name).st_mode & 0o777 & ~PRIVATE_MODE:
                os.chmod(name, PRIVATE_MODE)
        except FileNotFoundError:
            continue
        except OSError as error:  # not ours to change: say so, keep going
            log.warning("outbox file readable by others", path=name, error=type(error).__name__)


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode with WAL; one per thread. The files are mode 0600."""
    create_private(path)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class _State:
    """The durable :class:`~spendwatch.notifiers.base.ReceiverState` of one receiver."""

    def __init__(self, outbox: Outbox, receiver: str) -> None:
        self._outbox = outbox
        self._receiver = receiver

    def get(self, key: str) -> str | None:
        row = (
            self._outbox._conn()
            .execute(
                "SELECT value FROM receiver_state WHERE receiver=? AND key=?", (self._receiver, key)
            )
            .fetchone()
        )
        return row[0] if row else None

    def put(self, key: str, value: str) -> None:
        self._outbox._conn().execute(
            "INSERT INTO receiver_state(receiver, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(receiver, key) DO UPDATE SET value=excluded.value",
            (self._receiver, key, value),
        )

    def delete(self, key: str) -> None:
        self._outbox._conn().execute(
            "DELETE FROM receiver_state WHERE receiver=? AND key=?", (self._receiver, key)
        )

    def items(self, prefix: str = "") -> list[tuple[str, str]]:
        rows = self._outbox._conn().execute(
            "SELECT key, value FROM receiver_state WHERE receiver=? AND key >= ? AND key < ? "
            "ORDER BY key",
            (self._receiver, prefix, prefix + "\U0010ffff"),
        )
        return [(k, v) for k, v in rows]


_DECISION_COLUMNS = (
    "fingerprint, episode, alert_id, action, user_id, user_name, via, decided_at, outcome"
)


@dataclass(frozen=True)
class Decision:
    """One person's decision on one alert episode (a row of the ``decisions`` audit table)."""

    fingerprint: str
    episode: str
    alert_id: str
    action: str
    user_id: str
    user_name: str | None
    via: str
    decided_at: float
    outcome: str = "pending"


@dataclass(frozen=True)
class StepResult:
    """What one delivery step did: ``delivered`` rows, or when the head is next due."""

    delivered: int
    next_due: float | None  # None: nothing pending for this receiver


class Outbox:
    """Stores alerts once and delivers each to its routed receivers, in order, with retries.

    ``audit`` names receivers that get every alert, whatever the routes and silences say
    (the backtest's ``--alerts-out`` file); ``"all"`` makes every receiver one. Receivers
    given as a list are keyed by name (``name#2`` for a repeated one). Call :meth:`start`
    for the delivery threads, :meth:`flush` to wait for them, :meth:`close` to stop.
    """

    def __init__(
        self,
        path: str,
        notifiers: Mapping[str, Notifier] | Sequence[Notifier],
        *,
        dispatcher: Dispatcher | None = None,
        audit: Iterable[str] | Literal["all"] = (),
        config: DeliveryConfig | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(notifiers, Mapping):
            notifiers = _unique_names(notifiers)
        self.notifiers: dict[str, Notifier] = dict(notifiers)
        wanted = self.notifiers if audit == "all" else audit
        self.audit = [a for a in wanted if a in self.notifiers]
        routed = [n for n in self.notifiers if n not in self.audit]
        self.dispatcher = dispatcher or Dispatcher(routed)
        self.config = config or DeliveryConfig()
        self.path = path
        self._clock = clock
        self._rng = rng or random.Random()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pruner: threading.Thread | None = None
        if os.path.dirname(os.path.abspath(path)):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._conn().executescript(_SCHEMA)
        self._recover()
        self.prune()
        stored = self.stored_silences()
        if stored:  # silences set from Slack outlive restarts, like configured ones
            self.dispatcher.silences = [*self.dispatcher.silences, *stored]

    # -- connections ----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
            with self._lock:
                self._connections.append(conn)
        return conn

    def _recover(self) -> None:
        """On open: deliveries that failed permanently last run get another chance."""
        conn = self._conn()
        revived = conn.execute(
            "UPDATE deliveries SET state='pending', next_at=? WHERE state='failed'",
            (self._clock(),),
        ).rowcount
        pending = dict(
            conn.execute(
                "SELECT receiver, count(*) FROM deliveries WHERE state='pending' GROUP BY receiver"
            ).fetchall()
        )
        for receiver in self.notifiers:
            PENDING.labels(receiver).set(pending.get(receiver, 0))
        if pending:
            log.info("outbox resumed", path=self.path, pending=pending, revived=revived)

    def prune(self) -> int:
        """Delete alerts stored more than ``retention`` ago with no delivery pending, and
        their deliveries; return how many alerts. The firing alert of an episode whose
        resolution is not stored yet stays: that resolution shares its fate (silenced or
        not). Without this the outbox would grow by every alert for as long as it runs."""
        retention = self.config.retention
        if not retention:
            return 0
        cutoff = self._clock() - retention
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = conn.execute(
                "DELETE FROM alerts WHERE stored_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM deliveries d "
                "                WHERE d.seq = alerts.seq AND d.state = 'pending') "
                "AND (status != 'firing' OR EXISTS (SELECT 1 FROM alerts r "
                "     WHERE r.fingerprint = alerts.fingerprint AND r.episode = alerts.episode "
                "     AND r.status = 'resolved'))",
                (cutoff,),
            ).rowcount
            if deleted:
                conn.execute("DELETE FROM deliveries WHERE seq NOT IN (SELECT seq FROM alerts)")
            # silences set from Slack go as long after their end as alerts after storing
            conn.execute("DELETE FROM silences WHERE ends_at < ?", (cutoff,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if deleted:
            log.info("outbox pruned", path=self.path, alerts=deleted, retention_s=retention)
        return deleted

    def _redactor(self, receiver: str) -> Redactor:
        notifier = self.notifiers.get(receiver)
        return getattr(notifier, "redactor", None) or GENERIC

    def state(self, receiver: str) -> _State:
        """The durable key-value store of ``receiver``."""
        return _State(self, receiver)

    # -- storing --------------------------------------------------------------------------------

    def put(self, alert: Alert) -> bool:
        """Store ``alert`` and queue its deliveries; False when it was stored before."""
        return self.put_many([alert]) == 1

    def put_many(self, alerts: Sequence[Alert]) -> int:
        """Store a batch in one transaction; return how many were new."""
        return len(self.store(alerts))

    def store(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Store a batch in one transaction; return the alerts that were new (not a replay)."""
        if not alerts:
            return []
        conn = self._conn()
        now = self._clock()
        new: list[Alert] = []
        plans = [self.dispatcher.plan(alert) for alert in alerts]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for alert, plan in zip(alerts, plans, strict=True):
                if self._insert(conn, plan, now):
                    new.append(alert)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if new:
            with self._wake:
                self._wake.notify_all()
        return new

    def _insert(self, conn: sqlite3.Connection, plan: Plan, now: float) -> int:
        alert = plan.alert
        silenced = plan.silenced_by
        if alert.status == "resolved":
            firing = conn.execute(
                "SELECT silenced FROM alerts WHERE fingerprint=? AND status='firing' AND episode=?",
                (alert.fingerprint, alert.episode),
            ).fetchone()
            if firing is not None:
                silenced = firing[0]  # a resolved alert shares its firing alert's fate
        receivers = [] if silenced else [r for r in plan.receivers if r in self.notifiers]
        targets = list(dict.fromkeys([*self.audit, *receivers]))
        notes = [n for n in (self._describe(r, alert) for r in receivers) if n]
        cursor = conn.execute(
            "INSERT OR IGNORE INTO alerts(fingerprint, status, episode, alert_id, payload, "
            "stored_at, silenced, notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.fingerprint,
                alert.status,
                alert.episode,
                alert.alert_id,
                alert.to_json_bytes(),
                now,
                silenced,
                json.dumps(notes) if notes else None,
            ),
        )
        if cursor.rowcount == 0:
            log.debug("alert already stored", alert_id=alert.alert_id)
            return 0
        seq = cursor.lastrowid
        conn.executemany(
            "INSERT INTO deliveries(receiver, seq, next_at) VALUES (?, ?, ?)",
            [(receiver, seq, now) for receiver in targets],
        )
        if silenced:
            log.info("alert silenced", alert_id=alert.alert_id, rule=alert.rule, reason=silenced)
        elif not receivers and self.dispatcher.receivers:
            log.warning("alert matched no route", alert_id=alert.alert_id, rule=alert.rule)
        for receiver in targets:
            PENDING.labels(receiver).inc()
        return 1

    def _describe(self, receiver: str, alert: Alert) -> str | None:
        try:
            return self.notifiers[receiver].describe(alert)
        except Exception as error:  # a note is a nicety; never lose the alert over it
            log.warning("describe failed", receiver=receiver, error=type(error).__name__)
            return None

    def proposals(self, alert: Alert) -> dict[str, str]:
        """receiver → change it proposes for ``alert`` and awaits a human's approval for.

        Only receivers the alert is routed to propose; the same answer at delivery time
        and when the approval arrives, as both follow from the config and the alert.
        """
        if alert.status != "firing":
            return {}
        found: dict[str, str] = {}
        for receiver in self.dispatcher.route(alert):
            notifier = self.notifiers.get(receiver)
            try:
                text = notifier.proposal(alert) if notifier is not None else None
            except Exception as error:  # a proposal is optional; never lose the alert over it
                log.warning("proposal failed", receiver=receiver, error=type(error).__name__)
                text = None
            if text:
                found[receiver] = text
        return found

    # -- silences and decisions from people -------------------------------------------------------

    def add_silence(self, silence: SilenceConfig) -> None:
        """Store a silence set at run time: it applies from the next alert on, and on every
        later open of this outbox (a restart) until it ends."""
        self._conn().execute(
            "INSERT INTO silences(definition, created_at, ends_at) VALUES (?, ?, ?)",
            (silence.model_dump_json(by_alias=True), self._clock(), silence.end.timestamp()),
        )
        self.dispatcher.silences = [*self.dispatcher.silences, silence]  # swapped, not mutated

    def stored_silences(self) -> list[SilenceConfig]:
        """Silences set at run time (not those of the config), oldest first."""
        rows = self._conn().execute("SELECT definition FROM silences ORDER BY id")
        return [SilenceConfig.model_validate_json(definition) for (definition,) in rows]

    def firing_alert(self, fingerprint: str, episode: str) -> Alert | None:
        """The stored firing alert of one episode of a condition, or None."""
        row = (
            self._conn()
            .execute(
                "SELECT payload FROM alerts WHERE fingerprint=? AND episode=? AND status='firing'",
                (fingerprint, episode),
            )
            .fetchone()
        )
        return Alert.model_validate_json(row[0]) if row else None

    def notes(self, alert: Alert) -> list[str]:
        """The notes stored with ``alert`` (what other receivers said they would do)."""
        row = (
            self._conn()
            .execute(
                "SELECT notes FROM alerts WHERE fingerprint=? AND episode=? AND status=?",
                (alert.fingerprint, alert.episode, alert.status),
            )
            .fetchone()
        )
        return json.loads(row[0]) if row and row[0] else []

    def claim_decision(self, decision: Decision) -> Decision | None:
        """Record ``decision`` as pending unless the episode was decided before.

        Returns None when claimed, else the earlier decision: one decision per alert
        episode, whichever of two simultaneous clicks commits first wins.
        """
        conn = self._conn()
        cursor = conn.execute(
            "INSERT OR IGNORE INTO decisions(fingerprint, episode, alert_id, action, user_id, "
            "user_name, via, decided_at, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
            (
                decision.fingerprint,
                decision.episode,
                decision.alert_id,
                decision.action,
                decision.user_id,
                decision.user_name,
                decision.via,
                decision.decided_at,
            ),
        )
        if cursor.rowcount == 1:
            return None
        return self.decision(decision.fingerprint, decision.episode)

    def finish_decision(self, decision: Decision, outcome: str) -> None:
        """Set the outcome of a claimed decision (``applied``, ``recorded``, ...)."""
        self._conn().execute(
            "UPDATE decisions SET outcome=? WHERE fingerprint=? AND episode=?",
            (outcome, decision.fingerprint, decision.episode),
        )

    def release_decision(self, decision: Decision) -> None:
        """Forget a claimed decision whose effect failed, so the click can be repeated."""
        self._conn().execute(
            "DELETE FROM decisions WHERE fingerprint=? AND episode=? AND outcome='pending'",
            (decision.fingerprint, decision.episode),
        )

    def decision(self, fingerprint: str, episode: str) -> Decision | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE fingerprint=? AND episode=?",
                (fingerprint, episode),
            )
            .fetchone()
        )
        return Decision(*row) if row else None

    def decisions(self) -> list[Decision]:
        """Every decision, oldest first: the audit trail."""
        rows = self._conn().execute(f"SELECT {_DECISION_COLUMNS} FROM decisions ORDER BY id")
        return [Decision(*row) for row in rows]

    # -- delivering -----------------------------------------------------------------------------

    def step(self, receiver: str) -> StepResult:
        """Deliver ``receiver``'s oldest pending alert if it is due (the loop's unit of work)."""
        conn = self._conn()
        row = conn.execute(
            "SELECT d.seq, d.attempts, d.next_at, d.first_at, a.payload, a.stored_at, a.notes "
            "FROM deliveries d JOIN alerts a ON a.seq = d.seq "
            "WHERE d.receiver=? AND d.state='pending' ORDER BY d.seq LIMIT 1",
            (receiver,),
        ).fetchone()
        if row is None:
            return StepResult(0, None)
        seq, attempts, next_at, first_at, payload, stored_at, notes = row
        now = self._clock()
        if next_at > now:
            return StepResult(0, next_at)
        alert = Alert.model_validate_json(payload)
        if now - stored_at > self.config.max_age:
            self._finish(conn, receiver, seq, "expired", now, "older than delivery.max_age")
            log.error(
                "delivery given up",
                receiver=receiver,
                alert_id=alert.alert_id,
                rule=alert.rule,
                attempts=attempts,
                age_seconds=round(now - stored_at, 1),
            )
            return StepResult(0, now)
        attempt = attempts + 1
        first_at = first_at if first_at is not None else now
        conn.execute(  # intent first: after a crash the next attempt knows to check
            "UPDATE deliveries SET attempts=?, first_at=? WHERE receiver=? AND seq=?",
            (attempt, first_at, receiver, seq),
        )
        delivery = Delivery(
            attempt=attempt,
            state=self.state(receiver),
            first_attempt_at=first_at,
            notes=json.loads(notes) if notes else [],
            proposals=self.proposals(alert),
        )
        try:
            self.notifiers[receiver].deliver(alert, delivery)
        except NotifyError as error:  # backoff counts from the failure, not from the send
            return self._failed(conn, receiver, seq, alert, attempt, error, self._clock())
        except Exception as error:  # a bug in a receiver must not stop the others
            wrapped = NotifyError(f"unexpected {type(error).__name__}", retryable=True)
            return self._failed(conn, receiver, seq, alert, attempt, wrapped, self._clock())
        self._finish(conn, receiver, seq, "sent", self._clock(), None)
        return StepResult(1, now)

    def _failed(
        self,
        conn: sqlite3.Connection,
        receiver: str,
        seq: int,
        alert: Alert,
        attempt: int,
        error: NotifyError,
        now: float,
    ) -> StepResult:
        # The receiver redacts its own errors; redact again in case it missed a form, and
        # before cutting: what is stored and logged never carries a credential.
        message = self._redactor(receiver).clip(str(error), ERROR_LIMIT)
        if not error.retryable:
            self._finish(conn, receiver, seq, "failed", now, message)
            log.error(
                "delivery failed (not retryable)",
                receiver=receiver,
                alert_id=alert.alert_id,
                rule=alert.rule,
                error=message,
            )
            return StepResult(0, now)
        delay = self.backoff(attempt)
        if error.retry_after is not None:
            delay = max(error.retry_after, 0.0) * self._rng.uniform(1.0, 1.1)
        next_at = now + delay
        conn.execute(
            "UPDATE deliveries SET next_at=?, error=? WHERE receiver=? AND seq=?",
            (next_at, message, receiver, seq),
        )
        DELIVERIES.labels(receiver, "retry").inc()
        log.warning(
            "delivery failed, will retry",
            receiver=receiver,
            alert_id=alert.alert_id,
            attempt=attempt,
            retry_in=round(delay, 3),
            error=message,
        )
        return StepResult(0, next_at)

    def _finish(
        self,
        conn: sqlite3.Connection,
        receiver: str,
        seq: int,
        state: str,
        now: float,
        error: str | None,
    ) -> None:
        conn.execute(
            "UPDATE deliveries SET state=?, done_at=?, error=? WHERE receiver=? AND seq=?",
            (state, now, error, receiver, seq),
        )
        DELIVERIES.labels(receiver, state).inc()
        PENDING.labels(receiver).dec()
        with self._wake:
            self._wake.notify_all()

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: initial × 2^(attempt-1), capped, × U(0.5, 1)."""
        base = min(self.config.backoff_max, self.config.backoff_initial * 2 ** (attempt - 1))
        return base * self._rng.uniform(0.5, 1.0)

    def drain(self, receiver: str | None = None, timeout: float = 10.0) -> bool:
        """Deliver in the calling thread until nothing is pending or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        receivers = [receiver] if receiver else list(self.notifiers)
        while time.monotonic() < deadline:
            waits = []
            for name in receivers:
                result = self.step(name)
                if result.next_due is not None:
                    waits.append(result.next_due - self._clock())
            if not waits:
                return True
            pause = min(waits)
            if pause > 0:
                time.sleep(min(pause, max(deadline - time.monotonic(), 0), 0.5))
        return self.pending() == 0

    # -- threads --------------------------------------------------------------------------------

    def start(self) -> Outbox:
        """Start one delivery thread per receiver (idempotent)."""
        if self._threads:
            return self
        self._stop.clear()
        for receiver in self.notifiers:
            thread = threading.Thread(
                target=self._loop, args=(receiver,), name=f"outbox-{receiver}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        if self.config.retention and self._pruner is None:
            self._pruner = threading.Thread(
                target=self._prune_loop, name="outbox-prune", daemon=True
            )
            self._pruner.start()
        return self

    def _prune_loop(self) -> None:
        while not self._stop.wait(PRUNE_EVERY):
            try:
                self.prune()
            except sqlite3.Error as error:
                log.error("outbox prune failed", error=str(error))

    def _loop(self, receiver: str) -> None:
        while not self._stop.is_set():
            try:
                result = self.step(receiver)
            except sqlite3.Error as error:
                log.error("outbox error", receiver=receiver, error=str(error))
                result = StepResult(0, self._clock() + 1.0)
            if result.delivered or (
                result.next_due is not None and result.next_due <= self._clock()
            ):
                continue
            wait = 1.0 if result.next_due is None else min(result.next_due - self._clock(), 1.0)
            with self._wake:
                if not self._stop.is_set():
                    self._wake.wait(max(wait, 0.0))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every deliverable alert is delivered; False if ``timeout`` ran out first."""
        if not self._threads:
            return self.drain(timeout=timeout if timeout is not None else self.config.flush_timeout)
        limit = timeout if timeout is not None else self.config.flush_timeout
        deadline = time.monotonic() + limit
        while True:
            left = self.pending()
            if left == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("flush timed out", pending=left)
                return False
            with self._wake:
                self._wake.wait(min(remaining, 0.05))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the delivery threads (pending rows stay for the next start) and the receivers."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        if self._pruner is not None:
            self._pruner.join(timeout)
            self._pruner = None
        for notifier in self.notifiers.values():
            try:
                notifier.close()
            except Exception as error:
                log.warning(
                    "receiver close failed",
                    receiver=notifier.name,
                    error=notifier.redact(str(error)),
                )
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections = []
        self._local = threading.local()

    # -- inspection -----------------------------------------------------------------------------

    def pending(self, receiver: str | None = None) -> int:
        """Deliveries not yet sent, failed or expired."""
        sql = "SELECT count(*) FROM deliveries WHERE state='pending'"
        args: tuple[Any, ...] = ()
        if receiver:
            sql += " AND receiver=?"
            args = (receiver,)
        return self._conn().execute(sql, args).fetchone()[0]

    def counts(self) -> dict[str, dict[str, int]]:
        """receiver → state → number of deliveries."""
        result: dict[str, dict[str, int]] = {}
        for receiver, state, count in self._conn().execute(
            "SELECT receiver, state, count(*) FROM deliveries GROUP BY receiver, state"
        ):
            result.setdefault(receiver, {})[state] = count
        return result

    def stored(self) -> list[tuple[str, str | None]]:
        """(alert_id, silence reason) of every stored alert, in insertion order."""
        return list(self._conn().execute("SELECT alert_id, silenced FROM alerts ORDER BY seq"))


def _unique_names(notifiers: Iterable[Notifier]) -> dict[str, Notifier]:
    named: dict[str, Notifier] = {}
    for notifier in notifiers:
        key, index = notifier.name, 2
        while key in named:
            key, index = f"{notifier.name}#{index}", index + 1
        named[key] = notifier
    return named


def build_outbox(
    config: Any,
    *,
    path: str | None = None,
    extra: Sequence[Notifier] = (),
    audit: Iterable[str] | Literal["all"] = (),
    deliver: bool = True,
) -> Outbox:
    """The outbox of a :class:`~spendwatch.config.SpendwatchConfig`: receivers, routes, owners.

    ``extra`` notifiers are added beside the configured ones (``audit`` names the ones that
    get every alert); ``deliver=False`` leaves the configured receivers out.
    """
    from spendwatch.notifiers.registry import build_notifier

    delivery: DeliveryConfig = getattr(config, "delivery", None) or DeliveryConfig()
    configured = [build_notifier(r) for r in config.receivers] if deliver else []
    notifiers = _unique_names([*extra, *configured])
    names = [n.name for n in configured]
    dispatcher = Dispatcher.from_config(config, names) if deliver else Dispatcher([])
    return Outbox(
        path or delivery.outbox_path,
        notifiers,
        dispatcher=dispatcher,
        audit=audit,
        config=delivery,
    )
