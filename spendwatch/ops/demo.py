"""A reproducible synthetic stream of multi-tenant LLM usage with planted incidents.

Used by ``make run`` (the bundled demo), the tests and the benchmarks. The stream has
a daily cycle (night trough, afternoon peak), a quieter weekend, one noisy-but-normal
tenant, unattributed events and billing credits, and three planted incidents whose
exact onsets are returned so tests can check the alerts against them:

* ``spend_spike``: one tenant's request rate jumps ×8 (an agent loop) for two hours;
* ``token_regression``: one prompt's output tokens grow ×5 (a prompt edit) for the rest
  of the stream, its request rate unchanged;
* optionally ``model_switch``: one tenant's feature silently moves to a pricier model
  (same tokens, same volume, higher unit cost), and ``session_loop``: one user session
  of one tenant calls ×N as often as usual (an agent stuck in a loop);
* the demo budget (``config/demo.yaml``) is sized so the biggest tenant crosses it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import orjson

TENANTS = {  # name: (requests per minute at peak, overdispersion: 0 = Poisson)
    "acme": (60.0, 0.05),
    "globex": (25.0, 0.05),
    "initech": (8.0, 0.6),  # noisy but normal
    "umbrella": (15.0, 0.1),
    "hooli": (4.0, 0.1),
}
FEATURES = {  # feature: (team, prompt_id, model, mean input tokens, mean output tokens, share)
    "chat": ("assistant", "chat@v3", "gpt-4o-mini", 1200, 350, 0.45),
    "ai-search": ("search", "rerank@v7", "gpt-4o-mini", 1800, 120, 0.30),
    "summarize": ("docs", "summarize@v2", "gpt-4o", 3000, 400, 0.15),
    "agent": ("platform", "agent-plan@v1", "claude-3-5-sonnet", 2500, 600, 0.10),
}
PRICES = {  # USD per million tokens: input, cached input, output
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4o": (2.50, 1.25, 10.0),
    "claude-3-5-sonnet": (3.0, 0.30, 15.0),
}
DEFAULT_START = datetime(2026, 11, 16, tzinfo=timezone.utc)  # a Monday
USERS_PER_TENANT = 40
SESSION_HOURS = 4
"""A user's session id changes every four hours of event time."""


@dataclass
class Incident:
    kind: str
    scope: dict[str, str]
    start: float
    end: float
    factor: float


@dataclass
class DemoStream:
    """What was generated: the JSONL lines and the incidents planted in them."""

    lines: list[bytes]
    incidents: list[Incident] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0

    def write(self, path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in self.lines))

    def text(self) -> bytes:
        buffer = io.BytesIO()
        for line in self.lines:
            buffer.write(line + b"\n")
        return buffer.getvalue()


def diurnal(hour_of_day: np.ndarray, weekday: np.ndarray) -> np.ndarray:
    """Load factor: ~0.15 at 03:00 UTC, 1.0 at 15:00, weekends at 55 %."""
    shape = 0.575 - 0.425 * np.cos((hour_of_day - 3.0) / 24.0 * 2 * np.pi)
    return shape * np.where(weekday >= 5, 0.55, 1.0)


def generate(
    days: float = 4.0,
    *,
    start: datetime = DEFAULT_START,
    seed: int = 7,
    scale: float = 1.0,
    spike_tenant: str | None = "globex",
    spike_at_hours: float = 3 * 24 + 10,
    spike_factor: float = 8.0,
    regression_prompt: str | None = "summarize@v2",
    regression_at_hours: float = 2 * 24 + 16,
    regression_factor: float = 5.0,
    shuffle_seconds: float = 20.0,
    monday_surge: float = 1.0,
    switch_tenant: str | None = None,
    switch_feature: str = "chat",
    switch_model: str = "gpt-4o",
    switch_at_hours: float = 0.0,
    loop_tenant: str | None = None,
    loop_at_hours: float = 0.0,
    loop_hours: float = 2.0,
    loop_factor: float = 8.0,
) -> DemoStream:
    """Generate ``days`` of usage; ``scale`` multiplies every rate (1.0 ≈ 60 k events/day)."""
    rng = np.random.default_rng(seed)
    t0 = start.timestamp()
    minutes = int(days * 1440)
    minute_starts = t0 + 60.0 * np.arange(minutes)
    hours = (minute_starts // 3600) % 24
    weekday = ((minute_starts // 86400).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    load = diurnal(hours, weekday)
    if monday_surge != 1.0:  # people back at work: Monday mornings run hot
        load = np.where((weekday == 0) & (hours >= 7) & (hours < 12), load * monday_surge, load)
    incidents: list[Incident] = []
    spike = None
    if spike_tenant:
        s0 = t0 + spike_at_hours * 3600
        spike = Incident("spend_spike", {"tenant": spike_tenant}, s0, s0 + 2 * 3600, spike_factor)
        incidents.append(spike)
    regression = None
    if regression_prompt:
        r0 = t0 + regression_at_hours * 3600
        regression = Incident(
            "token_regression",
            {"prompt_id": regression_prompt},
            r0,
            t0 + days * 86400,
            regression_factor,
        )
        incidents.append(regression)
    switch = None
    if switch_tenant:
        w0 = t0 + switch_at_hours * 3600
        switch = Incident(
            "model_switch",
            {"tenant": switch_tenant, "feature": switch_feature, "model": switch_model},
            w0,
            t0 + days * 86400,
            PRICES[switch_model][2] / PRICES[FEATURES[switch_feature][2]][2],
        )
        incidents.append(switch)
    extras = rng_extra = None
    loop_session = ""
    if loop_tenant:
        rng_extra = np.random.default_rng(seed + 1)
        l0 = t0 + loop_at_hours * 3600
        loop_session = _session(loop_tenant, 0, l0)
        extras = Incident(
            "session_loop",
            {"tenant": loop_tenant, "session": loop_session},
            l0,
            l0 + loop_hours * 3600,
            loop_factor,
        )
        incidents.append(extras)

    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "tenant", "feature", "in", "out")}
    tenant_names = list(TENANTS)
    feature_names = list(FEATURES)
    for tenant_index, (tenant, (peak_rate, dispersion)) in enumerate(TENANTS.items()):
        for feature_index, spec in enumerate(FEATURES.values()):
            _, prompt_id, _, mean_in, mean_out, share = spec
            rate = peak_rate * share * scale * load
            if dispersion:
                rate = rate * rng.gamma(1.0 / dispersion**2, dispersion**2, size=minutes)
            if spike and tenant == spike.scope["tenant"]:
                inside = (minute_starts >= spike.start) & (minute_starts < spike.end)
                rate = np.where(inside, rate * spike.factor, rate)
            counts = rng.poisson(rate)
            total = int(counts.sum())
            ts = np.repeat(minute_starts, counts) + rng.uniform(0, 60, total)
            out_mean = np.full(total, float(mean_out))
            if regression and prompt_id == regression.scope["prompt_id"]:
                out_mean = np.where(ts >= regression.start, out_mean * regression.factor, out_mean)
            columns["ts"].append(ts)
            columns["tenant"].append(np.full(total, tenant_index))
            columns["feature"].append(np.full(total, feature_index))
            columns["in"].append(np.maximum(rng.lognormal(np.log(mean_in), 0.4, total), 1))
            columns["out"].append(np.maximum(rng.lognormal(np.log(out_mean), 0.4), 1))
    if extras is not None and rng_extra is not None:  # the looping session's extra calls
        peak_rate, _ = TENANTS[extras.scope["tenant"]]
        inside = (minute_starts >= extras.start) & (minute_starts < extras.end)
        rate = (extras.factor - 1) * peak_rate * scale * load / USERS_PER_TENANT
        counts = rng_extra.poisson(np.where(inside, rate, 0.0))
        total = int(counts.sum())
        feature_index = list(FEATURES).index("agent")
        _, _, _, mean_in, mean_out, _ = FEATURES["agent"]
        columns["ts"].append(np.repeat(minute_starts, counts) + rng_extra.uniform(0, 60, total))
        columns["tenant"].append(np.full(total, tenant_names.index(extras.scope["tenant"])))
        columns["feature"].append(np.full(total, feature_index))
        columns["in"].append(np.maximum(rng_extra.lognormal(np.log(mean_in), 0.4, total), 1))
        columns["out"].append(np.maximum(rng_extra.lognormal(np.log(mean_out), 0.4, total), 1))
        looping = np.concatenate([np.zeros(len(c), dtype=bool) for c in columns["ts"][:-1]])
        looping = np.r_[looping, np.ones(total, dtype=bool)]
    ts = np.concatenate(columns["ts"])
    order = np.argsort(ts + rng.uniform(0, shuffle_seconds, ts.shape[0]))
    ts = ts[order]
    tenants = np.concatenate(columns["tenant"])[order]
    features = np.concatenate(columns["feature"])[order]
    input_tokens = np.concatenate(columns["in"])[order].astype(np.int64)
    output_tokens = np.concatenate(columns["out"])[order].astype(np.int64)
    unattributed = rng.random(ts.shape[0]) < 0.02
    cached = (rng.random(ts.shape[0]) < 0.3) * (input_tokens // 2)
    # Users come from their own generator, so adding them changed no other draw.
    users = np.random.default_rng(seed + 2).integers(0, USERS_PER_TENANT, ts.shape[0])
    if extras is not None:
        looped = looping[order]
        users[looped] = 0
    lines = []
    dumps = orjson.dumps
    stamp = _timestamps(ts)
    for i in range(ts.shape[0]):
        feature = feature_names[features[i]]
        team, prompt_id, model, *_ = FEATURES[feature]
        tenant = tenant_names[tenants[i]]
        if (
            switch is not None
            and tenant == switch_tenant
            and feature == switch_feature
            and ts[i] >= switch.start
        ):
            model = switch_model
        session = _session(tenant, int(users[i]), ts[i])
        if extras is not None:  # the looping session is the agent's alone
            if looped[i]:
                session = loop_session
            elif session == loop_session:
                session = f"{session}-b"
        event = {
            "event_id": f"d{seed}-{i:x}",
            "ts": stamp[i],
            "tenant": tenant,
            "user": f"{tenant}-u{users[i]}",
            "session": session,
            "team": team,
            "environment": "prod",
            "model": model,
            "provider": "anthropic" if model.startswith("claude") else "openai",
            "prompt_id": prompt_id,
            "input_tokens": int(input_tokens[i]),
            "cached_input_tokens": int(cached[i]),
            "output_tokens": int(output_tokens[i]),
            "latency_ms": 200 + int(output_tokens[i]) // 2,
        }
        if not unattributed[i]:
            event["feature"] = feature
        lines.append(dumps(event))
    # Credits go where their time puts them, as a billing feed would deliver them.
    for credit_ts, credit in sorted(_billing_credits(t0, days, seed), reverse=True):
        lines.insert(int(np.searchsorted(ts, credit_ts)), credit)
    return DemoStream(lines, incidents, t0, t0 + days * 86400)


def _session(tenant: str, user: int, ts: float) -> str:
    return f"{tenant}-u{user}-{int(ts // (SESSION_HOURS * 3600))}"


def _timestamps(ts: np.ndarray) -> list[str]:
    millis = (ts * 1000).astype("datetime64[ms]")
    return [f"{text}Z" for text in np.datetime_as_string(millis, unit="ms")]


def _billing_credits(t0: float, days: float, seed: int) -> Iterator[tuple[float, bytes]]:
    """One daily promotional credit per tenant: reduces budgets, never an anomaly input."""
    for day in range(int(days)):
        for tenant in TENANTS:
            yield (
                t0 + day * 86400 + 3600,
                orjson.dumps(
                    {
                        "event_id": f"credit{seed}-{tenant}-{day}",
                        "ts": datetime.fromtimestamp(t0 + day * 86400 + 3600, tz=timezone.utc)
                        .isoformat()
                        .replace("+00:00", "Z"),
                        "tenant": tenant,
                        "provider": "openai",
                        "cost_usd": -0.5,
                        "charge_category": "credit",
                    }
                ),
            )


def pricing_yaml() -> str:
    """The demo price catalog as YAML (kept in one place with the generator)."""
    rows = [
        f"    {model}: {{input: {p[0]}, cached_input: {p[1]}, output: {p[2]}}}"
        for model, p in PRICES.items()
    ]
    return "pricing:\n  models:\n" + "\n".join(rows) + "\n"
