"""``type: agent_loop``: one session (user, agent task…) calling far more than its peers.

Per-session baselines do not work for agent loops: sessions are short-lived and there
are hundreds of thousands of them, so there is no history to compare with and no memory
to keep one. What a loop does have is peers: in the same window, the other sessions of
the same tenant. Each window the detector takes the request counts of all sessions of a
peer group, and a session fires when it is ``factor`` × above the group's median, at
least ``min_requests``, and a robust z (median/MAD, floored by overdispersed Poisson noise) above
``threshold``. State is per *peer group* (the few sessions currently firing, capped),
never per session, so memory does not grow with the number of sessions. Rows are routed
by the peer dimensions, so a whole group is judged on one shard.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert, make_alert
from spendwatch.core.configtypes import Dimension, Duration
from spendwatch.detectors.base import (
    Aggregation,
    ConfiguredRule,
    GroupDetector,
    RuleConfig,
    Totals,
    register_detector,
)
from spendwatch.detectors.robust import MAD_TO_STD

MAX_FIRING = 10_000


class AgentLoopConfig(RuleConfig):
    """Sessions whose request rate is far above their peers' in the same window."""

    type: Literal["agent_loop"] = "agent_loop"
    scope: list[Dimension] = Field(
        default_factory=lambda: ["session"], description="what loops: session, user, …"
    )
    peers: list[Dimension] = Field(
        default_factory=lambda: ["tenant"], description="who a session is compared with"
    )
    metric: Literal["requests"] = Field(default="requests", description="requests per session")
    window: Duration = Field(default=900)
    factor: float = Field(default=4.0, gt=1, description="× the peers' median needed")
    threshold: float = Field(default=4.5, gt=0, description="robust z among peers needed")
    overdispersion: float = Field(
        default=2.0, ge=1.0, description="count variance over the peers' median (1 = Poisson)"
    )
    min_requests: int = Field(
        default=8, ge=1, description="sessions with fewer requests are not judged"
    )
    min_peers: int = Field(default=5, ge=2, description="smaller groups are not judged")

    @model_validator(mode="after")
    def _disjoint(self) -> AgentLoopConfig:
        if set(self.scope) & set(self.peers):
            raise ValueError("a dimension cannot be both in scope and in peers")
        return self


class PeerState:
    """Sessions of one peer group currently firing: key -> (episode start, quiet windows)."""

    __slots__ = ("firing",)

    def __init__(self) -> None:
        self.firing: OrderedDict[tuple[str, ...], list[int]] = OrderedDict()

    def __getstate__(self) -> OrderedDict:
        return self.firing

    def __setstate__(self, state: OrderedDict) -> None:
        self.firing = state


@register_detector("agent_loop", AgentLoopConfig)
class AgentLoop(ConfiguredRule, GroupDetector):
    """Judges a whole peer group per window (``observe_group``), not one scope at a time."""

    config: AgentLoopConfig

    def __init__(self, config: AgentLoopConfig) -> None:
        super().__init__(config)
        self.peer_dims = len(config.peers)
        self.aggregation = Aggregation(
            dims=(*config.peers, *config.scope),
            window=config.window,
            route_dims=self.peer_dims,
        )
        self.zero_fill = False

    def new_state(self) -> PeerState:
        return PeerState()

    def keep_state(self, state: PeerState) -> bool:
        return bool(state.firing)

    def explain_group(
        self, members: Mapping[tuple[str, ...], Totals]
    ) -> dict[tuple[str, ...], dict[str, float]]:
        """Each member's requests against its peers: median, the count that would fire, z."""
        c = self.config
        counts = sorted(t.requests for t in members.values())
        if len(counts) < c.min_peers:
            return {}
        median, scale = self._peer_baseline(counts)
        upper = max(median + c.threshold * scale, c.factor * max(median, 1.0), c.min_requests)
        return {
            member: {
                "value": float(totals.requests),
                "expected": median,
                "upper": upper,
                "z": (totals.requests - median) / scale,
                "warm": 1.0,
            }
            for member, totals in members.items()
        }

    def _peer_baseline(self, counts: list[int]) -> tuple[float, float]:
        """Median of the peers' counts and the spread a z is measured in (MAD, Poisson floor)."""
        median = _median(counts)
        spread = MAD_TO_STD * _median(sorted(abs(x - median) for x in counts))
        return median, max(spread, math.sqrt(self.config.overdispersion * max(median, 1.0)))

    def observe_group(
        self,
        state: PeerState,
        peers: Mapping[str, str],
        window_start: int,
        members: Mapping[tuple[str, ...], Totals],
    ) -> list[Alert]:
        """Judge every member of one peer group in one window."""
        c = self.config
        counts = sorted(t.requests for t in members.values())
        alerts: list[Alert] = []
        looping: set[tuple[str, ...]] = set()
        if len(counts) >= c.min_peers:
            median, scale = self._peer_baseline(counts)
            for member, totals in members.items():
                n = totals.requests
                z = (n - median) / scale
                if n >= c.min_requests and n >= c.factor * max(median, 1.0) and z >= c.threshold:
                    looping.add(member)
                    if member not in state.firing:
                        state.firing[member] = [window_start, 0]
                        alerts.append(
                            self._alert(peers, member, "firing", window_start, n, median, z)
                        )
                        while len(state.firing) > MAX_FIRING:
                            state.firing.popitem(last=False)
                    else:
                        state.firing[member][1] = 0
        for member in [m for m in state.firing if m not in looping]:
            record = state.firing[member]
            record[1] += 1
            if record[1] >= c.resolve_after:
                del state.firing[member]
                n = members[member].requests if member in members else 0
                alerts.append(
                    self._alert(peers, member, "resolved", window_start, n, 0.0, 0.0, record[0])
                )
        return alerts

    def _alert(self, peers, member, status, window_start, value, expected, z, episode=None):
        scope = {**peers, **dict(zip(self.config.scope, member, strict=True))}
        return make_alert(
            kind="anomaly",
            rule=self.name,
            status=status,
            severity=self.config.severity,
            scope=scope,
            metric="requests",
            window_start=window_start,
            window_end=window_start + self.config.window,
            observed=value,
            expected=expected,
            score=z,
            threshold=self.config.threshold,
            episode_start=window_start if episode is None else episode,
        )


def _median(values: list) -> float:
    n = len(values)
    mid = n // 2
    return float(values[mid]) if n % 2 else 0.5 * (values[mid - 1] + values[mid])
