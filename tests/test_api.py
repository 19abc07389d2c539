"""The cost-guard API of a running worker: /costs, /unit-costs, /anomalies, budget amounts
set at run time (with a bearer token, kept across restart and reload), /openapi.json."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from spendwatch.ops import demo
from spendwatch.service.api import (
    AnomaliesResponse,
    BudgetAmountResponse,
    BudgetsResponse,
    CostsResponse,
    UnitCostsResponse,
    amount_key,
    pick_rule,
)
from tests.workers import CLI, free_port, http_get, wait_for, worker_config

TOKEN = "s3cret-token-for-tests-0123456789"


def _put(port: int, path: str, body: dict, token: str | None = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="PUT"
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _get(port: int, path: str) -> dict:
    status, body = http_get(port, path)
    assert status == 200, body
    return json.loads(body)


def _start(config: Path, state: Path) -> subprocess.Popen:
    env = {**os.environ, "SPENDWATCH_API_TOKEN": TOKEN}
    return subprocess.Popen(
        [*CLI, "run", "--config", str(config), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _stop(worker: subprocess.Popen) -> str:
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr.decode()[-3000:]
    return stderr.decode()


def _points(port: int, path: str) -> int:
    series = _get(port, path)["series"]
    return len(series[0]["points"]) if series else 0


def _acme_weekly(port: int) -> dict | None:
    rows = _get(port, "/budgets")["budgets"]
    found = [r for r in rows if r["budget"] == "tenant-weekly" and r["scope"]["tenant"] == "acme"]
    return found[0] if found else None


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stream = demo.generate(days=3, scale=0.2, seed=4, spike_at_hours=2 * 24 + 6)
    path = tmp_path_factory.mktemp("api") / "events.jsonl"
    stream.write(str(path))
    return path


def test_cost_guard_api_of_a_running_worker(tmp_path: Path, stream_file: Path):
    port = free_port()
    config, _ = worker_config(tmp_path, str(stream_file), port=port, follow=True)
    text = config.read_text().replace(
        "server:\n", "server:\n  api_token: ${SPENDWATCH_API_TOKEN}\n", 1
    )
    config.write_text(text)
    state = tmp_path / "state"
    worker = _start(config, state)
    try:
        wait_for(lambda: http_get(port, "/readyz")[0] == 200)
        # the whole stream judged (72 hours; the last one waits for more input)
        wait_for(
            lambda: _points(port, "/costs?tenant=acme&window=7d") >= 71,
            timeout=60,
        )

        costs = _get(port, "/costs?tenant=acme&from=2020-01-01T00:00:00Z")
        CostsResponse.model_validate(costs)
        assert costs["rule"] == "tenant-spend" and costs["dims"] == ["tenant"]
        assert costs["step_seconds"] == 3600
        (acme,) = costs["series"]
        assert acme["scope"] == {"tenant": "acme"}
        assert len(acme["points"]) > 48
        total = acme["total"]
        assert total["requests"] > 0 and total["spend_usd"] > 0
        assert abs(total["cost_per_request_usd"] - total["spend_usd"] / total["requests"]) < 1e-9
        assert abs(sum(p["spend_usd"] for p in acme["points"]) - total["spend_usd"]) < 1e-6
        # the same spend through the budget's own aggregation (5-minute windows)
        weekly = _get(port, "/costs?rule=tenant-weekly&tenant=acme&from=2020-01-01T00:00:00Z")
        budget = _acme_weekly(port)
        assert budget is not None
        assert weekly["series"][0]["total"]["spend_usd"] == pytest.approx(
            budget["spend_usd"], rel=0.02
        )

        daily = _get(port, "/costs?tenant=acme&from=2020-01-01T00:00:00Z&step=1d")
        assert 3 <= len(daily["series"][0]["points"]) <= 4
        assert daily["series"][0]["total"]["spend_usd"] == pytest.approx(total["spend_usd"])
        last_day = _get(port, "/costs?tenant=acme&window=1d")
        assert 20 <= len(last_day["series"][0]["points"]) <= 24
        everyone = _get(port, "/costs?rule=tenant-spend&from=2020-01-01T00:00:00Z")
        assert len(everyone["series"]) == 5
        assert everyone["total"]["total"]["spend_usd"] == pytest.approx(
            sum(s["total"]["spend_usd"] for s in everyone["series"])
        )
        assert _get(port, "/costs?tenant=nobody")["series"] == []
        assert http_get(port, "/costs?rule=no-such-rule")[0] == 400
        assert http_get(port, "/costs?tenant=acme&step=7m")[0] == 400
        assert http_get(port, "/costs?model=x")[0] == 400  # no rule is scoped by model

        units = _get(port, "/unit-costs?rule=prompt-output-tokens&from=2020-01-01T00:00:00Z")
        UnitCostsResponse.model_validate(units)
        assert units["series"]
        for series in units["series"]:
            assert series["total"]["output_tokens_per_request"] > 0
            assert series["total"]["cost_per_request_usd"] > 0

        anomalies = _get(port, "/anomalies")
        AnomaliesResponse.model_validate(anomalies)
        spike = [a for a in anomalies["anomalies"] if a["rule"] == "tenant-spend"]
        assert spike
        assert all(a["status"] in ("firing", "resolved") and a["since"] for a in spike)
        firing = _get(port, "/anomalies?status=firing")["anomalies"]
        assert all(a["status"] == "firing" for a in firing)

        # changing a budget: a bearer token, checked
        change = {"amount_usd": 50, "reason": "quarter-end freeze"}
        assert _put(port, "/budgets/tenant-weekly/acme", change, token=None)[0] == 401
        assert _put(port, "/budgets/tenant-weekly/acme", change, token="wrong")[0] == 403
        assert _put(port, "/budgets/no-such/acme", change)[0] == 404
        assert _put(port, "/budgets/tenant-weekly/acme", {"amount_usd": -1})[0] == 400
        assert _put(port, "/budgets/tenant-weekly/a/b", change)[0] == 400
        status, answer = _put(port, "/budgets/tenant-weekly/tenant=acme", change)
        assert status == 200, answer
        BudgetAmountResponse.model_validate(answer)
        assert answer["scope"] == "acme" and answer["previous_usd"] == 100000
        assert answer["applied"] is True
        row = _acme_weekly(port)
        assert row["amount_usd"] == 50 and "amount_set_at" in row
        assert row["percent"] == pytest.approx(100 * row["spend_usd"] / 50, rel=1e-6)
        BudgetsResponse.model_validate(_get(port, "/budgets"))
        others = [r for r in _get(port, "/budgets")["budgets"] if r["scope"]["tenant"] != "acme"]
        assert all(r["amount_usd"] != 50 for r in others)

        document = _get(port, "/openapi.json")
        assert document["openapi"].startswith("3.")
        assert {"/costs", "/unit-costs", "/anomalies", "/budgets/{name}/{scope}"} <= set(
            document["paths"]
        )
        assert "CostsResponse" in document["components"]["schemas"]
    finally:
        log = _stop(worker)
    assert "budget amount set" in log and "quarter-end freeze" in log
    assert "change refused" in log
    assert TOKEN not in log

    # a restart resumes from the recovered state: the amount set at run time is still in force
    worker = _start(config, state)
    try:
        wait_for(lambda: http_get(port, "/readyz")[0] == 200)
        row = wait_for(lambda: (r := _acme_weekly(port)) and r["amount_usd"] == 50 and r)
        assert "amount_set_at" in row
        # and a reload (SIGHUP) of a config with another default amount too
        config.write_text(text.replace("amount_usd: 100000", "amount_usd: 90000"))
        worker.send_signal(signal.SIGHUP)

        def reloaded() -> list[dict]:
            rows = [r for r in _get(port, "/budgets")["budgets"] if r["budget"] == "tenant-weekly"]
            amounts = {r["scope"]["tenant"]: r["amount_usd"] for r in rows}
            return rows if amounts.get("globex") == 90000 else []

        rows = wait_for(reloaded)
        assert {r["scope"]["tenant"]: r["amount_usd"] for r in rows}["acme"] == 50
    finally:
        log = _stop(worker)
    assert TOKEN not in log


class _FakeHandler:
    path = "/budgets/b/acme"
    client_address = ("127.0.0.1", 1)

    def __init__(self, authorization: str | None) -> None:
        self.headers = {} if authorization is None else {"Authorization": authorization}
        self.answers: list[tuple[int, dict]] = []
        self.status: int | None = None
        self.wfile = io.BytesIO()

    def _json(self, code: int, body: dict) -> None:
        self.answers.append((code, body))

    def send_response(self, code: int) -> None:
        self.status = code

    def send_header(self, name: str, value: str) -> None:
        pass

    def end_headers(self) -> None:
        pass


@pytest.mark.parametrize(
    ("configured", "given", "code"),
    [
        (None, f"Bearer {TOKEN}", 403),  # no token configured: changes are off
        (TOKEN, None, 401),
        (TOKEN, f"Basic {TOKEN}", 401),
        (TOKEN, "Bearer wrong", 403),
        (TOKEN, f"Bearer {TOKEN}x", 403),
        (TOKEN, f"Bearer {TOKEN}", None),
    ],
)
def test_changes_need_the_configured_bearer_token(configured, given, code):
    from types import SimpleNamespace

    from spendwatch.core import liveview
    from spendwatch.service.api import authorize

    view = liveview.current()
    saved = view.config
    view.config = SimpleNamespace(server=SimpleNamespace(api_token=configured))
    try:
        handler = _FakeHandler(given)
        allowed = authorize(handler)  # type: ignore[arg-type]
    finally:
        view.config = saved
    assert allowed is (code is None)
    answered = handler.answers[0][0] if handler.answers else handler.status
    assert answered == code


def test_amount_keys_and_rule_choice():
    from spendwatch.config import SpendwatchConfig
    from spendwatch.detectors.budget import BudgetConfig

    budget = BudgetConfig(name="b", scope_by=["tenant", "feature"], amount_usd=10)
    assert amount_key(budget, "*") == "*"
    assert amount_key(budget, "acme/chat") == "acme/chat"
    assert amount_key(budget, "feature=chat,tenant=acme") == "acme/chat"
    for wrong in ("acme", "tenant=acme", "acme/"):
        with pytest.raises(ValueError):
            amount_key(budget, wrong)
    config = SpendwatchConfig(
        detectors=[
            {"name": "wide", "type": "robust_seasonal", "scope": ["tenant", "feature"]},
            {"name": "narrow", "type": "robust_seasonal", "scope": ["tenant"]},
        ],
        budgets=[{"name": "all", "amount_usd": 5}],
    )
    assert pick_rule(config, None, {"tenant": "a"}) == ("narrow", ["tenant"])
    assert pick_rule(config, None, {"feature": "x"})[0] == "wide"
    assert pick_rule(config, None, {})[0] == "all"
    with pytest.raises(ValueError):
        pick_rule(config, "narrow", {"feature": "x"})


def test_the_series_per_scope_is_bounded_exact_and_recovered():
    from spendwatch.dataflows.engine import SERIES_FIELDS, EnginePlan, ShardEngine
    from spendwatch.detectors.budget import BudgetConfig, BudgetRule

    rule = BudgetRule(BudgetConfig(name="b", scope_by=["tenant"], amount_usd=1e9, window=300))
    plan = EnginePlan(
        detectors=[],
        budgets=[rule],
        allowed_lateness=0,
        scope_idle_ttl=10**9,
        series_horizon=3600,
        series_resolution=900,
        series_max_scopes=3,
    )
    engine = ShardEngine(plan)
    for start in range(0, 7200, 300):
        engine.on_message(start + 300, [(0, ("a",), start, 10**9, 1, 2, 3, 1)])
    (points,) = engine.series[rule.aggregation].values()
    steps = [points[i : i + SERIES_FIELDS] for i in range(0, len(points), SERIES_FIELDS)]
    assert [s[0] for s in steps] == [3600, 4500, 5400, 6300]  # one hour of 15-minute steps
    assert all(list(s[1:]) == [3 * 10**9, 3, 6, 9, 3] for s in steps)  # 3 windows each

    big = 2**62  # past int64 when summed: kept exact
    engine.on_message(
        7800, [(0, ("a",), 7200, big, 0, 0, 0, 1), (0, ("a",), 7500, big, 0, 0, 0, 1)]
    )
    engine.on_message(8100, [])
    points = engine.series[rule.aggregation][("a",)]
    assert list(points[-SERIES_FIELDS:])[:2] == [7200, 2 * big]

    for index, tenant in enumerate("bcde"):
        engine.on_message(8400 + index, [(0, (tenant,), 8100, 1, 1, 0, 0, 1)])
    engine.on_message(9000, [])
    assert len(engine.series[rule.aggregation]) <= 3

    restored = ShardEngine(plan, engine.snapshot())
    assert {k: list(v) for k, v in restored.series[rule.aggregation].items()} == {
        k: list(v) for k, v in engine.series[rule.aggregation].items()
    }
