"""The flag receiver as a service sees it: OpenFeature SDK + flagd provider reading the file."""

from __future__ import annotations

import json
import time

import pytest
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext

from spendwatch.notifiers.flags import FlagConfig, FlagNotifier
from spendwatch.notifiers.outbox import DeliveryConfig, Outbox
from tests.notifier_kit import DAY, budget_alert


@pytest.fixture
def flag_file(tmp_path):
    path = tmp_path / "flags.json"
    other = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
    path.write_text(json.dumps({"flags": {"new-ui": other}}))
    return path


def evaluate_until(client, tenant: str, expected: str, timeout: float = 10.0) -> str:
    context = EvaluationContext(attributes={"tenant": tenant})
    deadline = time.monotonic() + timeout
    value = ""
    while time.monotonic() < deadline:
        value = client.get_string_value("llm-spend-throttle", "missing", context)
        if value == expected:
            return value
        time.sleep(0.05)
    return value


def test_openfeature_sees_normal_degrade_block_normal_across_thresholds_and_rollover(
    flag_file, tmp_path
):
    receiver = FlagNotifier(FlagConfig(path=str(flag_file), mode="apply"))
    outbox = Outbox(str(tmp_path / "o.db"), [receiver], config=DeliveryConfig()).start()
    outbox.put(budget_alert(70.0))  # no variant for 70 %: the flag stays at its default
    assert outbox.flush(5)
    api.set_provider_and_wait(
        FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(flag_file))
    )
    client = api.get_client()
    try:
        assert evaluate_until(client, "acme", "normal") == "normal"
        outbox.put(budget_alert(85.0))
        assert outbox.flush(5)
        assert evaluate_until(client, "acme", "degrade") == "degrade"
        assert evaluate_until(client, "globex", "normal") == "normal"
        outbox.put(budget_alert(100.0))
        assert outbox.flush(5)
        assert evaluate_until(client, "acme", "block") == "block"
        # The day ends: the engine resolves every crossed threshold of the period.
        outbox.put_many([budget_alert(t, status="resolved") for t in (70.0, 85.0, 100.0)])
        assert outbox.flush(5)
        assert evaluate_until(client, "acme", "normal") == "normal"
        # The next day's 85 % throttles again, independently of yesterday's entries.
        outbox.put(budget_alert(85.0, period_start=DAY + 86400))
        assert outbox.flush(5)
        assert evaluate_until(client, "acme", "degrade") == "degrade"
    finally:
        api.shutdown()
        outbox.close()
    document = json.loads(flag_file.read_text())
    assert document["flags"]["new-ui"]["defaultVariant"] == "on"  # other flags kept


def test_propose_mode_leaves_the_live_file_alone_and_says_so(flag_file):
    before = flag_file.read_text()
    receiver = FlagNotifier(FlagConfig(path=str(flag_file), mode="propose"))
    alert = budget_alert(100.0, tenant="globex")
    note = receiver.describe(alert)
    receiver.notify(alert)
    assert flag_file.read_text() == before
    proposal = json.loads((flag_file.parent / "flags.json.proposed.json").read_text())
    targeting = proposal["flags"]["llm-spend-throttle"]["targeting"]
    assert targeting == {"if": [{"==": [{"var": "tenant"}, "globex"]}, "block", None]}
    assert note.startswith("Proposed, not applied") and "flags.json.proposed.json" in note


def test_most_severe_variant_wins_and_scopes_are_grouped(flag_file):
    receiver = FlagNotifier(FlagConfig(path=str(flag_file), mode="apply"))
    for alert in (budget_alert(85.0), budget_alert(85.0, tenant="b"), budget_alert(100.0)):
        receiver.notify(alert)
    targeting = json.loads(flag_file.read_text())["flags"]["llm-spend-throttle"]["targeting"]
    block, block_variant, degrade, degrade_variant, otherwise = targeting["if"]
    assert (block_variant, degrade_variant, otherwise) == ("block", "degrade", None)
    assert block == {"==": [{"var": "tenant"}, "acme"]}
    assert {"==": [{"var": "tenant"}, "b"]} in degrade["or"]


def test_a_broken_flag_file_is_not_overwritten(tmp_path):
    path = tmp_path / "flags.json"
    path.write_text("{ half written")
    receiver = FlagNotifier(FlagConfig(path=str(path), mode="apply"))
    with pytest.raises(Exception) as caught:
        receiver.notify(budget_alert(85.0))
    assert caught.value.retryable is False
    assert path.read_text() == "{ half written"


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ValueError, match="not listed in `variants`"):
        FlagConfig(path="x.json", thresholds={90: "slow"})
