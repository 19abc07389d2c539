"""``type: fan_out``: sessions (or agent tasks) far above the design estimate of their calls.

Retries that multiply (a client retrying a failing tool call, a framework retrying the
retry) and agents that fan out into sub-agents cost in proportion to the calls one task
makes, and the people who built the feature know how many that should be: "a support
chat makes about 12 model calls". ``agent_loop`` compares a session with its peers, which
cannot see a whole feature fanning out at once (its peers fan out too); this rule
compares each session with the estimate written in YAML.

Per peer group (``peers: [tenant, feature]``) it keeps each live session's cumulative
requests (or output tokens) since the session was first seen. A session fires once, when
its total reaches ``factor`` × the design estimate of its feature (``expected:`` a map from
the value of ``design_by``, default ``feature``, to calls per session; ``"*"`` for the
rest) and at least ``min_requests``; it resolves when it has been idle for
``session_ttl``, after which it is forgotten. Memory is bounded per group
(``max_sessions``; the longest idle go first). The estimate is the operator's: there is
no false-alarm budget to set, the alert says how far above the estimate the task went.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Dimension, Duration
from spendwatch.detectors.base import GroupRule, RuleConfig, Totals, register_detector


class FanOutConfig(RuleConfig):
    """Sessions whose calls (or tokens) pass ``factor`` × their feature's design estimate."""

    type: Literal["fan_out"] = "fan_out"
    scope: list[Dimension] = Field(
        default_factory=lambda: ["session"], description="the unit of work: session, user, …"
    )
    peers: list[Dimension] = Field(
        default_factory=lambda: ["tenant", "feature"], description="the group a unit belongs to"
    )
    design_by: Dimension = Field(
        default="feature", description="peer dimension whose value picks the estimate"
    )
    expected: dict[str, float] = Field(
        description="design estimate per unit (calls, or tokens) by value of design_by; "
        '"*" for any other value',
    )
    metric: Literal["requests", "output_tokens"] = Field(
        default="requests", description="what a unit of work is counted in"
    )
    window: Duration = Field(default=900)
    factor: float = Field(default=3.0, gt=1, description="× the estimate that fires")
    min_requests: int = Field(default=5, ge=1, description="units with fewer calls never fire")
    session_ttl: Duration = Field(
        default=2 * 3600, description="a unit idle this long has ended (resolved, forgotten)"
    )
    max_sessions: int = Field(default=100_000, ge=1, description="live units kept per group")

    @model_validator(mode="after")
    def _consistent(self) -> FanOutConfig:
        if set(self.scope) & set(self.peers):
            raise ValueError("a dimension cannot be both in scope and in peers")
        if self.design_by not in self.peers:
            raise ValueError("design_by must be one of peers")
        if any(value <= 0 for value in self.expected.values()):
            raise ValueError("expected estimates must be positive")
        return self


class FanOutState:
    """One peer group's live units: key -> [first window, last window, total, requests,
    fired (0/1)]."""

    __slots__ = ("units",)

    def __init__(self) -> None:
        self.units: dict[tuple[str, ...], list[float]] = {}

    def __getstate__(self) -> dict:
        return self.units

    def __setstate__(self, state: dict) -> None:
        self.units = state


@register_detector("fan_out", FanOutConfig)
class FanOut(GroupRule):
    """Judges a peer group's units per window (``observe_group``), against the YAML estimate."""

    config: FanOutConfig

    def __init__(self, config: FanOutConfig) -> None:
        super().__init__(config, config.peers, config.scope)

    def new_state(self) -> FanOutState:
        return FanOutState()

    def keep_state(self, state: FanOutState) -> bool:
        return bool(state.units)

    def estimate(self, peers: Mapping[str, str]) -> float | None:
        """The design estimate for this group (``None``: no estimate, not judged)."""
        expected = self.config.expected
        value = peers.get(self.config.design_by, "")
        return expected.get(value, expected.get("*"))

    def _amount(self, totals: Totals) -> float:
        if self.config.metric == "requests":
            return float(totals.requests)
        return float(totals.output_tokens)

    def explain_group(
        self, members: Mapping[tuple[str, ...], Totals], state: FanOutState | None = None
    ) -> dict[tuple[str, ...], dict[str, float]]:
        """Each unit's total so far (with this window) against the estimate's threshold;
        the estimate needs the group's values, which members do not carry: expected is the
        fraction of the threshold reached instead."""
        state = state or FanOutState()
        out = {}
        for member, totals in members.items():
            before = state.units.get(member)
            total = (before[2] if before else 0.0) + self._amount(totals)
            out[member] = {"value": total, "expected": 0.0, "z": 0.0, "warm": 1.0}
        return out

    def observe_group(
        self,
        state: FanOutState,
        peers: Mapping[str, str],
        window_start: int,
        members: Mapping[tuple[str, ...], Totals],
    ) -> list[Alert]:
        """Add one window's calls to each unit; fire units crossing the estimate, resolve
        units that have ended."""
        c = self.config
        estimate = self.estimate(peers)
        alerts: list[Alert] = []
        for member, totals in sorted(members.items()):
            unit = state.units.get(member)
            if unit is None:
                unit = state.units[member] = [window_start, window_start, 0.0, 0.0, 0.0]
            unit[1] = window_start
            unit[2] += self._amount(totals)
            unit[3] += totals.requests
            if estimate is None or unit[4] or unit[3] < c.min_requests:
                continue
            if unit[2] >= c.factor * estimate:
                unit[4] = 1.0
                alerts.append(self._alert(peers, member, "firing", window_start, unit, estimate))
        for member in [m for m, u in state.units.items() if window_start - u[1] > c.session_ttl]:
            unit = state.units.pop(member)
            if unit[4] and estimate is not None:
                alerts.append(self._alert(peers, member, "resolved", window_start, unit, estimate))
        if len(state.units) > c.max_sessions:
            idle = sorted(state.units, key=lambda m: (state.units[m][1], m))
            for member in idle[: len(state.units) - c.max_sessions]:
                del state.units[member]
        return alerts

    def _alert(
        self,
        peers: Mapping[str, str],
        member: tuple[str, ...],
        status: str,
        window_start: int,
        unit: list[float],
        estimate: float,
    ) -> Alert:
        c = self.config
        total = unit[2]
        return self.anomaly_alert(
            {**peers, **dict(zip(c.scope, member, strict=True))},
            status,  # type: ignore[arg-type]
            window_start,
            total,
            estimate,
            total / estimate,
            int(unit[0]),
            threshold=c.factor,
            rarity=f"{total / estimate:.1f}× the design estimate of {estimate:g} per "
            f"{'/'.join(c.scope)}",
        )
