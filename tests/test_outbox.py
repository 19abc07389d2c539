"""The durable outbox: stored once, ordered per receiver, retries, restarts, give-up, flush."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendwatch.notifiers.base import NotifyError
from spendwatch.notifiers.outbox import DeliveryConfig, Outbox
from spendwatch.notifiers.router import Dispatcher, Match, RouteConfig, SilenceConfig
from spendwatch.service.metrics import build_registry
from tests.notifier_kit import Recorder, anomaly_alert, budget_alert

FAST = DeliveryConfig(backoff_initial=0.01, backoff_max=0.05)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_alert_is_stored_once_and_delivered_once(tmp_path):
    rec = Recorder()
    outbox = Outbox(str(tmp_path / "o.db"), [rec], config=FAST)
    alert = anomaly_alert()
    assert outbox.put(alert) is True
    assert outbox.put(alert) is False
    assert outbox.put_many([alert, alert]) == 0
    assert outbox.drain(timeout=5)
    assert rec.effects == [alert.alert_id]
    assert outbox.counts() == {"rec": {"sent": 1}}
    outbox.close()


def test_restart_resumes_pending_and_a_replay_after_recovery_sends_nothing(tmp_path):
    path = str(tmp_path / "o.db")
    down = Recorder(fail=lambda a, d: NotifyError("down", retryable=True))
    first = Outbox(path, [down], config=FAST)
    alerts = [anomaly_alert(), anomaly_alert(status="resolved"), budget_alert()]
    first.put_many(alerts)
    first.drain(timeout=0.2)
    assert down.effects == [] and first.pending() == 3
    first.close()  # the process "dies" with everything pending

    rec = Recorder()
    second = Outbox(path, [rec], config=FAST)
    assert second.put_many(alerts) == 0  # the replayed stream raises the same alerts again
    assert second.drain(timeout=5)
    assert rec.effects == [a.alert_id for a in alerts]
    second.close()

    third = Outbox(path, [Recorder()], config=FAST)
    assert third.put_many(alerts) == 0 and third.pending() == 0
    third.close()


def test_a_resolved_alert_never_overtakes_its_firing_alert(tmp_path):
    firing, resolved = anomaly_alert(), anomaly_alert(status="resolved")
    failures = iter([NotifyError("flaky", retryable=True)] * 3)

    def fail(alert, delivery):
        return next(failures, None) if alert.alert_id == firing.alert_id else None

    rec = Recorder(fail=fail)
    outbox = Outbox(str(tmp_path / "o.db"), [rec], config=FAST).start()
    outbox.put(firing)
    outbox.put(resolved)
    assert outbox.flush(5)
    assert rec.effects == [firing.alert_id, resolved.alert_id]
    outbox.close()


def test_a_failing_receiver_does_not_hold_up_the_others(tmp_path):
    stuck = Recorder("stuck", fail=lambda a, d: NotifyError("down", retryable=True))
    fine = Recorder("fine")
    outbox = Outbox(str(tmp_path / "o.db"), [stuck, fine], config=FAST).start()
    outbox.put_many([anomaly_alert(), budget_alert()])
    deadline = time.monotonic() + 5
    while outbox.pending("fine") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fine.effects) == 2 and stuck.effects == []
    assert outbox.flush(0.2) is False
    outbox.close()


def test_retry_after_is_honoured_and_backoff_grows(tmp_path):
    clock = Clock()
    answers = iter(
        [
            NotifyError("429", retryable=True, retry_after=7.0),
            NotifyError("500", retryable=True),
            NotifyError("500", retryable=True),
        ]
    )
    rec = Recorder(fail=lambda a, d: next(answers, None))
    config = DeliveryConfig(backoff_initial=2.0, backoff_max=100.0)
    outbox = Outbox(str(tmp_path / "o.db"), [rec], config=config, clock=clock)
    outbox.put(anomaly_alert())
    due = outbox.step("rec").next_due
    assert 7.0 <= due - clock.now <= 7.0 * 1.1  # exactly as told (plus a little jitter)
    clock.now += 6.9
    assert outbox.step("rec").delivered == 0 and len(rec.calls) == 1  # not before its time
    clock.now = due
    first_backoff = outbox.step("rec").next_due - clock.now  # 2nd failure: 2 s x 2 x U(0.5, 1)
    clock.now += first_backoff
    second_backoff = outbox.step("rec").next_due - clock.now  # 3rd failure: 2 s x 4 x U(0.5, 1)
    assert 2.0 <= first_backoff <= 4.0 and 4.0 <= second_backoff <= 8.0
    clock.now += second_backoff
    assert outbox.step("rec").delivered == 1
    assert [attempt for _, attempt in rec.calls] == [1, 2, 3, 4]
    outbox.close()


def _counter(receiver: str, outcome: str) -> float:
    """The delivery counter as the worker's /metrics registry exports it."""
    value = build_registry().get_sample_value(
        "spendwatch_deliveries_total", {"receiver": receiver, "outcome": outcome}
    )
    return value or 0.0


def test_gives_up_only_after_max_age_loudly_and_counted(tmp_path, capsys):
    clock = Clock()
    rec = Recorder("aging", fail=lambda a, d: NotifyError("down", retryable=True))
    config = DeliveryConfig(max_age=60, backoff_initial=10.0, backoff_max=10.0)
    outbox = Outbox(str(tmp_path / "o.db"), [rec], config=config, clock=clock)
    before = _counter("aging", "expired")
    outbox.put(anomaly_alert())
    for _ in range(20):
        result = outbox.step("aging")
        if result.next_due is None:
            break
        clock.now = max(clock.now, result.next_due)
    assert outbox.counts() == {"aging": {"expired": 1}}
    assert len(rec.calls) >= 4  # it kept trying until the age limit
    assert _counter("aging", "expired") == before + 1
    captured = capsys.readouterr()
    assert "delivery given up" in captured.out + captured.err
    outbox.close()


def test_non_retryable_failure_stops_and_a_restart_tries_again(tmp_path):
    path = str(tmp_path / "o.db")
    bad = Recorder(fail=lambda a, d: NotifyError("invalid_auth", retryable=False))
    outbox = Outbox(path, [bad], config=FAST)
    outbox.put(anomaly_alert())
    assert outbox.drain(timeout=2)
    assert len(bad.calls) == 1 and outbox.counts() == {"rec": {"failed": 1}}
    outbox.close()
    fixed = Recorder()
    again = Outbox(path, [fixed], config=FAST)
    assert again.drain(timeout=2)
    assert len(fixed.effects) == 1
    again.close()


def test_silenced_alerts_are_recorded_not_sent_and_their_resolution_follows(tmp_path):
    silence = SilenceConfig(
        match=Match(kind=["anomaly"]),
        start="2025-11-16T00:00:00Z",
        end="2025-11-16T01:00:00Z",
        reason="planned load test",
    )
    rec, audit = Recorder("rec"), Recorder("audit")
    outbox = Outbox(
        str(tmp_path / "o.db"),
        [rec, audit],
        dispatcher=Dispatcher(["rec"], silences=[silence]),
        audit=["audit"],
        config=FAST,
    )
    firing, resolved = anomaly_alert(), anomaly_alert(status="resolved")  # resolved is later
    outbox.put_many([firing, resolved, budget_alert()])
    assert outbox.drain(timeout=2)
    assert rec.effects == [budget_alert().alert_id]
    assert len(audit.effects) == 3  # the audit copy gets everything
    stored = dict(outbox.stored())
    assert stored[firing.alert_id] == stored[resolved.alert_id] == "planned load test"
    outbox.close()


def test_routes_pick_receivers(tmp_path):
    slack, jira = Recorder("slack"), Recorder("jira")
    routes = [
        RouteConfig(match=Match(kind=["anomaly"]), receivers=["jira"], **{"continue": True}),
        RouteConfig(receivers=["slack"]),
    ]
    outbox = Outbox(
        str(tmp_path / "o.db"),
        [slack, jira],
        dispatcher=Dispatcher(["slack", "jira"], routes),
        config=FAST,
    )
    outbox.put_many([anomaly_alert(), budget_alert()])
    assert outbox.drain(timeout=2)
    assert jira.effects == [anomaly_alert().alert_id]
    assert slack.effects == [anomaly_alert().alert_id, budget_alert().alert_id]
    outbox.close()


def test_flush_waits_for_the_delivery_threads(tmp_path):
    gate = threading.Event()
    rec = Recorder(fail=lambda a, d: None if gate.is_set() else NotifyError("x", retryable=True))
    outbox = Outbox(str(tmp_path / "o.db"), [rec], config=FAST).start()
    outbox.put(anomaly_alert())
    assert outbox.flush(0.1) is False
    gate.set()
    assert outbox.flush(5) is True
    assert rec.effects == [anomaly_alert().alert_id]
    outbox.close()


def test_concurrent_writers_store_each_alert_once(tmp_path):
    rec = Recorder()
    outbox = Outbox(str(tmp_path / "o.db"), [rec], config=FAST).start()
    alerts = [anomaly_alert(prompt=f"p{i}@v1") for i in range(40)]
    threads = [threading.Thread(target=outbox.put_many, args=(alerts,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outbox.flush(10)
    assert sorted(rec.effects) == sorted(a.alert_id for a in alerts)
    outbox.close()


class Crash(BaseException):
    """The process dying inside a receiver call (not an error the outbox may catch)."""


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    script=st.lists(
        st.tuples(
            st.sampled_from(["put", "step", "crash_before", "crash_after", "fail", "restart"]),
            st.integers(min_value=0, max_value=5),
        ),
        max_size=40,
    )
)
def test_no_identity_is_ever_delivered_twice(tmp_path_factory, script):
    """Any interleaving of inserts, crashes (before/after the effect), failures and restarts."""
    path = str(tmp_path_factory.mktemp("prop") / "o.db")
    pool = [anomaly_alert(prompt=f"p{i}@v1") for i in range(3)] + [
        anomaly_alert(prompt=f"p{i}@v1", status="resolved") for i in range(3)
    ]
    effects: list[str] = []
    plan: list[str] = []

    class Flaky(Recorder):
        def deliver(self, alert, delivery):
            action = plan.pop() if plan else "ok"
            if action == "crash_before":
                raise Crash()
            if action == "fail":
                raise NotifyError("boom", retryable=True)
            if not (delivery.maybe_done and alert.alert_id in effects):
                effects.append(alert.alert_id)  # the effect (a message, an issue)
            if action == "crash_after":
                raise Crash()

    clock = Clock()
    outbox = Outbox(path, [Flaky("r")], config=FAST, clock=clock)
    put: set[str] = set()
    for action, index in script:
        if action == "put":
            outbox.put(pool[index])
            put.add(pool[index].alert_id)
        elif action == "restart":
            outbox.close()
            outbox = Outbox(path, [Flaky("r")], config=FAST, clock=clock)
        else:
            if action != "step":
                plan.append(action)
            clock.now += 1.0
            try:
                outbox.step("r")
            except Crash:
                outbox.close()
                outbox = Outbox(path, [Flaky("r")], config=FAST, clock=clock)
            plan.clear()
    clock.now += 1000
    while outbox.step("r").next_due is not None:
        clock.now += 1000
    outbox.close()
    assert sorted(effects) == sorted(put)  # every stored alert delivered, none twice


def test_the_receiver_is_told_when_an_earlier_attempt_may_have_landed(tmp_path):
    rec = Recorder()
    outbox = Outbox(str(tmp_path / "o.db"), [rec], config=FAST)
    outbox.put(anomaly_alert())

    class Die(BaseException):
        pass

    def crash(alert, delivery):
        raise Die()

    rec.fail = crash
    with pytest.raises(Die):
        outbox.step("rec")
    outbox.close()
    rec.fail = None
    again = Outbox(str(tmp_path / "o.db"), [rec], config=FAST)
    assert again.drain(timeout=2)
    assert [attempt for _, attempt in rec.calls] == [1, 2]
    again.close()


def test_receivers_with_the_same_name_are_kept_apart(tmp_path):
    first, second = Recorder("file"), Recorder("file")
    outbox = Outbox(str(tmp_path / "o.db"), [first, second], audit="all", config=FAST)
    assert list(outbox.notifiers) == ["file", "file#2"]
    outbox.put(anomaly_alert())
    assert outbox.drain(timeout=2)
    assert first.effects == second.effects == [anomaly_alert().alert_id]
    outbox.close()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_outbox_files_are_readable_by_their_owner_only(tmp_path):
    previous = os.umask(0o022)  # the usual umask: files would be 0644
    try:
        path = tmp_path / "o.db"
        outbox = Outbox(str(path), [Recorder()])
        outbox.put(anomaly_alert())  # a write: SQLite creates the -wal and -shm files
        files = sorted(tmp_path.glob("o.db*"))
        assert {p.name for p in files} >= {"o.db", "o.db-wal", "o.db-shm"}
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
        outbox.close()
    finally:
        os.umask(previous)


def test_an_older_outbox_is_tightened_on_open(tmp_path):
    path = tmp_path / "o.db"
    Outbox(str(path), [Recorder()]).close()
    os.chmod(path, 0o644)
    outbox = Outbox(str(path), [Recorder()])
    assert _mode(path) == 0o600
    outbox.close()


def test_a_replayed_alert_is_counted_and_shown_once(tmp_path, monkeypatch):
    """A restart re-reads the input after the last snapshot and raises its alerts again:
    ``spendwatch_alerts_total`` and the recent alerts count each alert once."""
    from prometheus_client import generate_latest

    from spendwatch.core import liveview, stats
    from spendwatch.dataflows.sinks import AlertSink

    path = str(tmp_path / "o.db")
    alerts = [anomaly_alert(), anomaly_alert(status="resolved"), budget_alert()]
    counters = stats.reset()
    monkeypatch.setattr(liveview, "VIEW", liveview.LiveView())

    def write(outbox: Outbox, batch: list) -> None:
        AlertSink(outbox).build("alerts", 0, 1).write_batch(batch)

    first = Outbox(path, [Recorder()], config=FAST)
    write(first, alerts[:2])
    write(first, alerts[:2])  # a reload in the same process replays the same windows
    first.close()
    second = Outbox(path, [Recorder()], config=FAST)  # a restarted process
    write(second, alerts)
    second.close()

    anomaly, budget = (alerts[0].kind, alerts[0].rule), (alerts[2].kind, alerts[2].rule)
    assert dict(counters.alerts_by_kind_rule) == {anomaly: 2, budget: 1}
    assert sum(counters.alerts_by_rule.values()) == 3
    assert counters.alerts_replayed == 4
    recent = [a["alert_id"] for a in liveview.current().recent_alerts(limit=100)]
    assert sorted(recent) == sorted(a.alert_id for a in alerts)
    text = generate_latest(build_registry()).decode()
    assert f'spendwatch_alerts_total{{kind="{budget[0]}",rule="{budget[1]}"}} 1.0' in text
    assert "spendwatch_alerts_replayed_total 4.0" in text


def test_finished_alerts_are_deleted_after_the_retention_and_the_outbox_stays_bounded(tmp_path):
    """A month of alerts a day: the outbox holds the retention's worth, not all of them."""
    clock = Clock()
    config = DeliveryConfig(max_age=86400, retention=3 * 86400)
    down = Recorder(fail=lambda a, d: NotifyError("down", retryable=True))
    outbox = Outbox(
        str(tmp_path / "o.db"), {"rec": Recorder(), "down": down}, config=config, clock=clock
    )
    outbox.dispatcher = Dispatcher(["rec"])  # routed to "rec" only; "down" gets one below
    open_episode = anomaly_alert(prompt="still-firing@v1")
    outbox.put(open_episode)
    stuck = budget_alert(tenant="stuck")
    outbox.dispatcher = Dispatcher(["down"])
    outbox.put(stuck)
    outbox.dispatcher = Dispatcher(["rec"])
    for day in range(30):
        clock.now += 86400
        episode = anomaly_alert(prompt=f"p{day}@v1")
        outbox.put_many([episode, anomaly_alert(prompt=f"p{day}@v1", status="resolved")])
        assert outbox.drain("rec", timeout=5)
        outbox.prune()
        assert len(outbox.stored()) <= 2 * 4 + 2
    kept = {alert_id for alert_id, _ in outbox.stored()}
    assert open_episode.alert_id in kept  # its resolution, when it comes, shares its fate
    assert stuck.alert_id in kept  # still pending for "down" (expired ones are finished)
    assert anomaly_alert(prompt="p0@v1").alert_id not in kept
    assert anomaly_alert(prompt="p29@v1").alert_id in kept
    counts = outbox.counts()
    assert counts["rec"] == {"sent": 2 * 4 + 1}
    outbox.close()


def test_retention_zero_keeps_everything_and_must_outlive_max_age():
    assert DeliveryConfig(retention=0).retention == 0
    with pytest.raises(ValueError, match="retention"):
        DeliveryConfig(max_age=86400, retention=3600)
