"""``type: new_value``: a model (prompt, feature…) new to a known scope, dearer per request.

A feature silently moved to a pricier model is, on a thin scope, the slowest incident for
a unit-cost test: two requests an hour of a ×2 model are a fraction of one request's
spread (one request's cost varies tenfold with its tokens), so the evidence takes hours.
Yet the data says more than the unit cost: a model this tenant feature has not used for
two weeks is answering its requests now. That is a categorical fact, decisive from the
first request, and it names its driver.

Per scope (``scope: [tenant, feature]``) the rule remembers the values of ``dimension``
(``model`` by default) it has seen and when, and the scope's usual price per token (an
exponentially weighted ratio of spend to tokens over its known values: the price, unlike
the cost of a request, hardly depends on how long one answer was). A window fires when
the scope has been known for ``known_after``, a value it has not seen for
``forget_after`` (or ever) answers requests in it, and its tokens cost at least
``1 + min_increase`` times the scope's usual price, with ``min_impact`` USD of spend
(a switch to a cheaper model, or a new value too small to matter, is not an incident).
A new scope's first values are not new: they are how it starts. The alert's scope carries
the new value and its ``drivers`` name it; it resolves once the value has been gone for
``resolve_after`` windows, or once it has been in use for ``accept_after`` (it is now
part of the scope's mix, and the unit-cost and spend rules judge it from there).

Its false-alarm rate is the rate at which a scope legitimately adopts a dearer model: a
deployment, announced or not, is exactly what this rule reports, so it has no evidence
budget; ``known_after`` and ``forget_after`` say what "new" means. State is per scope:
at most ``MAX_VALUES`` values with their last-seen window, two floats and the firing ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert, Driver
from spendwatch.core.configtypes import Dimension, Duration
from spendwatch.detectors.base import GroupRule, RuleConfig, Totals, register_detector
from spendwatch.ingest.pricing import NANOS_PER_USD

MAX_VALUES = 64
"""Values remembered per scope (the longest unseen are forgotten first)."""
UNIT_MEMORY = 96.0
"""Memory of the scope's usual price per token, in windows with tokens."""


class NewValueConfig(RuleConfig):
    """A value of ``dimension`` new to a known scope, with dearer requests."""

    type: Literal["new_value"] = "new_value"
    scope: list[Dimension] = Field(
        default_factory=lambda: ["tenant", "feature"], description="the scope a value is new to"
    )
    dimension: Dimension = Field(default="model", description="whose new values are judged")
    metric: Literal["spend_usd"] = Field(default="spend_usd", description="spend of the value")
    window: Duration = Field(default=900)
    known_after: Duration = Field(
        default=2 * 86400, description="event time a scope is seen before its values can be new"
    )
    forget_after: Duration = Field(
        default=14 * 86400, description="a value unseen this long is new again"
    )
    min_increase: float = Field(
        default=0.2, ge=0, description="the new value's price per token above the usual (+20 %)"
    )
    min_impact: float = Field(default=0.0, ge=0, description="spend of the new value needed, USD")
    accept_after: Duration = Field(
        default=86400, description="a new value in use this long is accepted into the mix"
    )

    @model_validator(mode="after")
    def _dimension_not_in_scope(self) -> NewValueConfig:
        if self.dimension in self.scope:
            raise ValueError("dimension cannot also be in scope")
        return self


class NewValueState:
    """One scope: when it was first seen, its values' last windows, its usual price."""

    __slots__ = ("firing", "first_seen", "last_seen", "spend", "tokens")

    def __init__(self) -> None:
        self.first_seen: int | None = None
        self.last_seen: dict[str, int] = {}
        self.spend = 0.0  # EW spend (USD) and tokens of the known values
        self.tokens = 0.0
        self.firing: dict[str, list[int]] = {}  # value -> [episode start, windows gone]

    def __getstate__(self) -> tuple:
        return (self.first_seen, self.last_seen, self.spend, self.tokens, self.firing)

    def __setstate__(self, state: tuple) -> None:
        self.first_seen, self.last_seen, self.spend, self.tokens, self.firing = state


@register_detector("new_value", NewValueConfig)
class NewValue(GroupRule):
    """Judges a scope's values per window (``observe_group``): the scope is the group."""

    config: NewValueConfig

    def __init__(self, config: NewValueConfig) -> None:
        super().__init__(config, config.scope, [config.dimension])

    def new_state(self) -> NewValueState:
        return NewValueState()

    def _usual(self, state: NewValueState) -> float | None:
        return state.spend / state.tokens if state.tokens > 0 else None

    def _is_new(self, state: NewValueState, value: str, window_start: int) -> bool:
        c = self.config
        if state.first_seen is None or window_start - state.first_seen < c.known_after:
            return False
        seen = state.last_seen.get(value)
        return seen is None or window_start - seen > c.forget_after

    def explain_group(
        self, members: Mapping[tuple[str, ...], Totals], state: NewValueState | None = None
    ) -> dict[tuple[str, ...], dict[str, float]]:
        """Each value's price per token against the scope's usual one."""
        state = state or NewValueState()
        usual = self._usual(state)
        out = {}
        for member, totals in members.items():
            spend = totals.spend_nanos / NANOS_PER_USD
            tokens = totals.input_tokens + totals.output_tokens
            unit = spend / tokens if tokens > 0 else 0.0
            out[member] = {
                "value": unit,
                "expected": usual if usual is not None else 0.0,
                "upper": (usual or 0.0) * (1 + self.config.min_increase),
                "z": unit / usual if usual else 0.0,
                "spend": spend,
                "warm": float(state.first_seen is not None),
            }
        return out

    def observe_group(
        self,
        state: NewValueState,
        peers: Mapping[str, str],
        window_start: int,
        members: Mapping[tuple[str, ...], Totals],
    ) -> list[Alert]:
        """Judge one window of the scope's values, then learn them."""
        c = self.config
        alerts: list[Alert] = []
        usual = self._usual(state)
        present: set[str] = set()
        for (value,), totals in sorted(members.items()):
            tokens = totals.input_tokens + totals.output_tokens
            if totals.requests <= 0 or tokens <= 0:
                continue
            present.add(value)
            spend = totals.spend_nanos / NANOS_PER_USD
            unit = spend / tokens
            if value in state.firing:
                record = state.firing[value]
                record[1] = 0
                if window_start - record[0] >= c.accept_after:  # part of the mix now
                    del state.firing[value]
                    alerts.append(self._alert(peers, value, "resolved", window_start, unit, usual,
                                              record[0]))  # fmt: skip
                continue
            dearer = usual is not None and unit >= (1 + c.min_increase) * usual
            if self._is_new(state, value, window_start) and dearer and spend >= c.min_impact:
                state.firing[value] = [window_start, 0]
                alerts.append(self._alert(peers, value, "firing", window_start, unit, usual))
        for value in [v for v in state.firing if v not in present]:
            record = state.firing[value]
            record[1] += 1
            if record[1] >= c.resolve_after:
                del state.firing[value]
                alerts.append(
                    self._alert(peers, value, "resolved", window_start, 0.0, usual, record[0])
                )
        self._learn(state, window_start, members)
        return alerts

    def _learn(
        self, state: NewValueState, window_start: int, members: Mapping[tuple[str, ...], Totals]
    ) -> None:
        if state.first_seen is None and members:
            state.first_seen = window_start
        keep = 1.0 - 1.0 / UNIT_MEMORY
        spend = tokens = 0.0
        for (value,), totals in members.items():
            state.last_seen[value] = window_start
            if value not in state.firing:  # a firing value is not the usual yet
                spend += totals.spend_nanos / NANOS_PER_USD
                tokens += totals.input_tokens + totals.output_tokens
        if tokens > 0:
            state.spend = state.spend * keep + spend
            state.tokens = state.tokens * keep + tokens
        horizon = window_start - self.config.forget_after
        for value in [v for v, seen in state.last_seen.items() if seen < horizon]:
            del state.last_seen[value]
        if len(state.last_seen) > MAX_VALUES:
            oldest = sorted(state.last_seen, key=lambda v: (state.last_seen[v], v))
            for value in oldest[: len(state.last_seen) - MAX_VALUES]:
                del state.last_seen[value]

    def _alert(
        self,
        peers: Mapping[str, str],
        value: str,
        status: str,
        window_start: int,
        unit: float,
        usual: float | None,
        episode: int | None = None,
    ) -> Alert:
        c = self.config
        return self.anomaly_alert(
            {**peers, c.dimension: value},
            status,  # type: ignore[arg-type]
            window_start,
            unit,
            usual or 0.0,
            unit / usual if usual else 0.0,
            window_start if episode is None else episode,
            metric="cost_per_token_usd",
            threshold=1 + c.min_increase,
            drivers=[Driver(dimension=c.dimension, value=value, share=1.0)],
            rarity=f"{c.dimension} {value} not seen in this scope for "
            f"{c.forget_after // 86400} days",
        )
