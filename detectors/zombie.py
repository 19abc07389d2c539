"""``type: zombie``: a feature whose spend holds up while the people using it go away.

A zombie feature keeps calling models after its users have left: a scheduled job that
summarises documents nobody opens, an agent polling for a screen no one looks at, a
deprecated endpoint still wired into a client. Its spend is stable, so no spend
detector fires; what changed is who it serves. This rule counts each feature's distinct
active users (or sessions) per UTC day with a HyperLogLog sketch (Apache DataSketches,
``lg_k`` 12: about 1.6 % error and at most 4 KB per feature whatever the user count),
and compares the last ``days`` days with the ``days`` before: it fires when the mean daily
users fell by ``min_user_drop`` while the mean daily spend did not fall by more than
``spend_tolerance`` (and is at least ``min_spend_usd`` a day), stating spend per active
user then and now. Whole weeks are compared (``days`` 7 by default), so a weekend is
not a drop. Judged once a day, when the next day's first window arrives; resolves when
the condition no longer holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from datasketches import hll_sketch, tgt_hll_type
from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import Dimension, Duration
from spendwatch.detectors.base import GroupRule, RuleConfig, Totals, register_detector
from spendwatch.ingest.pricing import NANOS_PER_USD

LG_K = 12
DAY = 86400


class ZombieConfig(RuleConfig):
    """Spend stable or rising while a feature's distinct daily users fall."""

    type: Literal["zombie"] = "zombie"
    scope: list[Dimension] = Field(
        default_factory=lambda: ["user"], description="who is counted: user, session, …"
    )
    peers: list[Dimension] = Field(
        default_factory=lambda: ["feature"], description="what can become a zombie"
    )
    metric: Literal["spend_usd"] = Field(default="spend_usd", description="spend per day")
    window: Duration = Field(default=3600)
    days: int = Field(default=7, ge=1, description="days compared with the days before them")
    min_user_drop: float = Field(
        default=0.5, gt=0, lt=1, description="fall of mean daily users that fires (0.5: half)"
    )
    spend_tolerance: float = Field(
        default=0.2, ge=0, lt=1, description="fall of mean daily spend still called stable"
    )
    min_spend_usd: float = Field(default=1.0, ge=0, description="mean daily spend needed, USD")

    @model_validator(mode="after")
    def _disjoint(self) -> ZombieConfig:
        if set(self.scope) & set(self.peers):
            raise ValueError("a dimension cannot be both in scope and in peers")
        return self


class ZombieState:
    """One feature: today's sketch and spend, finished days' (users, spend), firing since."""

    __slots__ = ("day", "days", "firing", "sketch", "spend_nanos")

    def __init__(self) -> None:
        self.day: int | None = None
        self.sketch = hll_sketch(LG_K, tgt_hll_type.HLL_8)
        self.spend_nanos = 0
        self.days: list[tuple[int, float, float]] = []  # (day, users, spend USD)
        self.firing: int | None = None

    def __getstate__(self) -> tuple:
        return (self.day, self.sketch.serialize_compact(), self.spend_nanos, self.days,
                self.firing)  # fmt: skip

    def __setstate__(self, state: tuple) -> None:
        self.day, sketch, self.spend_nanos, self.days, self.firing = state
        self.sketch = hll_sketch.deserialize(sketch)


@register_detector("zombie", ZombieConfig)
class Zombie(GroupRule):
    """Judges a feature's finished days from its members (users) per window."""

    config: ZombieConfig

    def __init__(self, config: ZombieConfig) -> None:
        super().__init__(config, config.peers, config.scope)

    def new_state(self) -> ZombieState:
        return ZombieState()

    def explain_group(
        self, members: Mapping[tuple[str, ...], Totals], state: ZombieState | None = None
    ) -> dict[tuple[str, ...], dict[str, float]]:
        """Each member's spend in the window, against the feature's users today so far."""
        state = state or ZombieState()
        users = state.sketch.get_estimate() + len(members)
        return {
            member: {
                "value": totals.spend_nanos / NANOS_PER_USD,
                "expected": float(users),
                "z": 0.0,
                "warm": float(len(state.days) >= 2 * self.config.days),
            }
            for member, totals in members.items()
        }

    def observe_group(
        self,
        state: ZombieState,
        peers: Mapping[str, str],
        window_start: int,
        members: Mapping[tuple[str, ...], Totals],
    ) -> list[Alert]:
        """Count the window's users into today's sketch; judge when a day is over."""
        alerts: list[Alert] = []
        day = window_start - window_start % DAY
        if state.day is not None and day != state.day:
            state.days.append(
                (state.day, state.sketch.get_estimate(), state.spend_nanos / NANOS_PER_USD)
            )
            del state.days[: -2 * self.config.days]
            state.sketch = hll_sketch(LG_K, tgt_hll_type.HLL_8)
            state.spend_nanos = 0
            alerts.extend(self._judge(state, peers, window_start))
        state.day = day
        for member, totals in members.items():
            state.sketch.update("\x1f".join(member))
            state.spend_nanos += totals.spend_nanos
        return alerts

    def _judge(
        self, state: ZombieState, peers: Mapping[str, str], window_start: int
    ) -> list[Alert]:
        c = self.config
        if len(state.days) < 2 * c.days:
            return []
        before, recent = state.days[: c.days], state.days[c.days :]
        users_before = sum(d[1] for d in before) / c.days
        users_now = sum(d[1] for d in recent) / c.days
        spend_before = sum(d[2] for d in before) / c.days
        spend_now = sum(d[2] for d in recent) / c.days
        zombie = (
            users_before > 0
            and users_now <= (1 - c.min_user_drop) * users_before
            and spend_now >= (1 - c.spend_tolerance) * spend_before
            and spend_now >= c.min_spend_usd
        )
        figures = (users_before, users_now, spend_before, spend_now)
        if zombie and state.firing is None:
            state.firing = window_start
            return [self._alert(peers, "firing", window_start, figures, window_start)]
        if not zombie and state.firing is not None:
            alert = self._alert(peers, "resolved", window_start, figures, state.firing)
            state.firing = None
            return [alert]
        return []

    def _alert(
        self,
        peers: Mapping[str, str],
        status: str,
        window_start: int,
        figures: tuple[float, float, float, float],
        episode: int,
    ) -> Alert:
        c = self.config
        users_before, users_now, spend_before, spend_now = figures
        per_user_before = spend_before / users_before if users_before else 0.0
        per_user_now = spend_now / users_now if users_now else float("inf")
        now_text = "no active users" if users_now < 0.5 else f"${per_user_now:.4g} per user"
        unit = "/".join(c.scope)
        return self.anomaly_alert(
            dict(peers),
            status,  # type: ignore[arg-type]
            window_start,
            round(users_now, 1),
            round(users_before, 1),
            users_now / users_before if users_before else 0.0,
            episode,
            metric=f"distinct_{unit}_per_day",
            threshold=1 - c.min_user_drop,
            spend_per_day_usd=round(spend_now, 4),
            rarity=f"daily {unit}s {users_before:,.0f} -> {users_now:,.0f} over {c.days} "
            f"days while spend held (${spend_before:,.2f} -> ${spend_now:,.2f} a day): "
            f"${per_user_before:.4g} per {unit} before, {now_text} now",
        )
