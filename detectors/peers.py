"""``type: agent_loop``: one session (user, agent task…) calling far more than its peers.

Per-session baselines do not work for agent loops: sessions are short-lived and there
are hundreds of thousands of them, so there is no history to compare with and no memory
to keep one. What a loop does have is peers: the other sessions of the same tenant. Each
window the detector judges every session of a peer group against the *upper tail* of
the distribution its peers' request counts have had (not their median: with geometric
calls per session, mean 6 and 2 % long ones, an ordinary busy session makes 8 calls while
the median makes 1). The distribution is learned per peer group as an exponentially
weighted histogram of member counts on log₂ bins (21 floats), with a geometric tail fitted
to the mean excess over its 90th percentile beyond what has been seen. A session fires
when the chance of a count this high, P(X ≥ n), is below what the false-alarm budget
allows: ``false_alarms_per_scope_per_month`` (the scope here is the peer group) divided
by the sessions it judges in a month, and it is at least ``min_requests`` and ``factor`` ×
the window's median (materiality). The alert states the rarity (once in how many days of
this group's sessions). State is per *peer group* (histogram, and the few sessions
currently firing, capped), never per session, and rows are routed by the peer dimensions,
so a whole group is judged on one shard.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert, make_alert
from spendwatch.core.configtypes import Dimension, Duration
from spendwatch.detectors import sequential
from spendwatch.detectors.base import GroupRule, RuleConfig, Totals, register_detector

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
    false_alarms_per_scope_per_month: float = Field(
        default=0.03,
        gt=0,
        description="false alarms a normal peer group may raise per month: sets the tail needed",
    )
    history: int = Field(
        default=96, ge=1, description="memory of the peers' distribution, in windows"
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


SUSPECT_DRIFT = math.log(30.0)
"""Evidence a session must bring per window before it counts toward a loop: under the
null −ln p is exponential, so a window adds to the CUSUM only once in thirty."""


def _exceedance_exponent(drift: float) -> float:
    """θ with E[exp(θ(X − drift))] = 1 for X ~ Exp(1): P(CUSUM reaches h) ≈ e^(−θh)."""
    low, high = 1e-9, 1.0 - 1e-12
    for _ in range(100):
        mid = 0.5 * (low + high)
        if -math.log(1 - mid) - mid * drift > 0:
            high = mid
        else:
            low = mid
    return low


THETA = _exceedance_exponent(SUSPECT_DRIFT)
MAX_SUSPECTS = 1000

BINS = 21
"""log₂ bins of a member's count: 1, 2–3, 4–7, … up to 2²⁰ and beyond."""


class PeerState:
    """One peer group: its members' count histogram, members per window, firing sessions."""

    __slots__ = ("firing", "hist", "members", "suspects")

    def __init__(self) -> None:
        self.firing: OrderedDict[tuple[str, ...], list[int]] = OrderedDict()
        self.hist = [0.0] * BINS
        self.members = 0.0  # EW members per window
        # sessions with evidence building: key -> CUSUM of −ln p − SUSPECT_DRIFT (bounded)
        self.suspects: dict[tuple[str, ...], float] = {}

    def __getstate__(self) -> tuple:
        return (self.firing, self.hist, self.members, self.suspects)

    def __setstate__(self, state: tuple | OrderedDict) -> None:
        if isinstance(state, OrderedDict):  # an older snapshot: firing sessions only
            state = (state, [0.0] * BINS, 0.0, {})
        self.firing, self.hist, self.members, self.suspects = state

    def idle(self) -> bool:
        """Nothing firing and nothing learned: the engine may forget the group."""
        return not self.firing and not self.suspects and not any(self.hist)


def _bin(n: int) -> int:
    return min(max(n, 1).bit_length() - 1, BINS - 1)


def tail_probability(hist: list[float], n: int) -> float:
    """P(X ≥ n) from a log₂ histogram: empirical inside, a geometric tail beyond its p90."""
    total = sum(hist)
    if total <= 0:
        return 1.0
    k = _bin(n)
    low = float(1 << k)
    inside = hist[k] * max(min((2.0 * low - n) / low, 1.0), 0.0)
    empirical = (sum(hist[k + 1 :]) + inside) / total
    # Geometric tails fitted to the mean excess above the 90th, 99th and 99.9th percentile's
    # bins (where at least 20 sessions lie that far out): a mixture (2 % of sessions far
    # longer than the rest) has its heavier tail far out, which a p90 fit alone would
    # miss. The heaviest of the fits is used.
    tail = max(empirical, 1e-12)
    for share in (0.1, 0.01, 0.001):
        if share < 0.1 and share * total < 20:
            break  # too few sessions that far out to fit a tail to
        u = _percentile_low(hist, total, share)
        if n <= u:
            continue
        q = _bin(int(u))
        mass = sum(hist[q:])
        excess = sum(hist[j] * (1.5 * (1 << j) - u) for j in range(q, BINS)) / max(mass, 1e-12)
        tail = max(tail, mass / total * math.exp(-(n - u) / max(excess, 1.0)))
    return tail


def _percentile_low(hist: list[float], total: float, share: float) -> float:
    """The lower edge of the bin holding the top ``share`` of the histogram's mass."""
    above = 0.0
    for q in range(BINS - 1, -1, -1):
        above += hist[q]
        if above >= share * total:
            return float(1 << q)
    return 1.0


@register_detector("agent_loop", AgentLoopConfig)
class AgentLoop(GroupRule):
    """Judges a whole peer group per window (``observe_group``), not one scope at a time."""

    config: AgentLoopConfig

    def __init__(self, config: AgentLoopConfig) -> None:
        super().__init__(config, config.peers, config.scope)

    def new_state(self) -> PeerState:
        return PeerState()

    def keep_state(self, state: PeerState) -> bool:
        return not state.idle()  # the learned distribution is the group's baseline

    def explain_group(
        self, members: Mapping[tuple[str, ...], Totals], state: PeerState | None = None
    ) -> dict[tuple[str, ...], dict[str, float]]:
        """Each member's requests against its peers: median, the count that would fire, z."""
        c = self.config
        counts = sorted(t.requests for t in members.values())
        if len(counts) < c.min_peers:
            return {}
        hist, allowed, median = self._null(state or PeerState(), counts)
        state = state or PeerState()
        fire_at = (-math.log(allowed) - SUSPECT_DRIFT) / THETA
        out = {}
        for member, totals in members.items():
            prior = state.suspects.get(member, 0.0)
            # the tail that would fire now, given the evidence this session already has
            needed_p = math.exp(-(fire_at - prior) - SUSPECT_DRIFT)
            k = _bin(totals.requests)
            hist[k] -= 1.0  # the count that would fire among this member's peers
            upper = self._needed(hist, needed_p, median)
            hist[k] += 1.0
            p = _tail_without(hist, totals.requests)
            out[member] = {
                "value": float(totals.requests),
                "expected": median,
                "upper": float(upper),
                "z": sequential.normal_upper_z(p),
                "tail_probability": p,
                "allowed_probability": allowed,
                "evidence": prior,
                "threshold": fire_at,
                "warm": 1.0,
            }
        return out

    def _null(self, state: PeerState, counts: list[int]) -> tuple[list[float], float, float]:
        """The peers' histogram (history + this window), the tail allowed, the median."""
        hist = list(state.hist)
        for n in counts:
            hist[_bin(n)] += 1.0
        members = state.members if state.members > 0 else float(len(counts))
        judged_per_month = members * sequential.MONTH / self.config.window
        return (
            hist,
            self.config.false_alarms_per_scope_per_month / judged_per_month,
            _median(counts),
        )

    def _needed(self, hist: list[float], allowed: float, median: float) -> int:
        """The smallest count that fires (for ``explain``'s upper edge)."""
        c = self.config
        n = max(c.min_requests, math.ceil(c.factor * max(median, 1.0)))
        while n < 1 << 24 and tail_probability(hist, n) > allowed:
            n = max(n + 1, int(n * 1.05))
        return n

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
        seen: set[tuple[str, ...]] = set()
        if len(counts) >= c.min_peers:
            hist, allowed, median = self._null(state, counts)
            for member, totals in members.items():
                n = totals.requests
                if n <= median:  # cannot be in the tail: adds no evidence
                    continue
                p = _tail_without(hist, n)
                # Evidence adds up over windows: a CUSUM of −ln p − drift per session, fired
                # at −ln(allowed) − drift (a single window still fires when p ≤ allowed, and
                # paths over several windows are rarer by e^-drift per extra window).
                evidence = state.suspects.get(member, 0.0) - math.log(max(p, 1e-300))
                evidence -= SUSPECT_DRIFT
                seen.add(member)
                if evidence <= 0:
                    state.suspects.pop(member, None)
                    continue
                state.suspects[member] = evidence
                if evidence < (-math.log(allowed) - SUSPECT_DRIFT) / THETA:
                    continue
                if n < c.min_requests or n < c.factor * max(median, 1.0):
                    continue  # decisive, but this window is not material
                looping.add(member)
                if member not in state.firing:
                    state.firing[member] = [window_start, 0]
                    z = sequential.normal_upper_z(p)
                    days = 1.0 / (p * max(state.members or len(counts), 1.0)) * c.window / 86400
                    alerts.append(
                        self._alert(
                            peers,
                            member,
                            "firing",
                            window_start,
                            n,
                            median,
                            z,
                            once_in_days=round(days, 1) if days < 1e12 else None,
                            rarity=sequential.describe_rarity(days),
                            threshold=round(sequential.normal_upper_z(allowed), 3),
                        )
                    )
                    while len(state.firing) > MAX_FIRING:
                        state.firing.popitem(last=False)
                else:
                    state.firing[member][1] = 0
        for member in [m for m in state.suspects if m not in seen]:
            state.suspects[member] -= SUSPECT_DRIFT  # a quiet window: p ≈ 1
            if state.suspects[member] <= 0:
                del state.suspects[member]
        if len(state.suspects) > MAX_SUSPECTS:
            for member in sorted(state.suspects, key=state.suspects.__getitem__)[
                : len(state.suspects) - MAX_SUSPECTS
            ]:
                del state.suspects[member]
        self._learn(state, [t.requests for m, t in members.items() if m not in looping])
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

    def _learn(self, state: PeerState, counts: list[int]) -> None:
        """Fold one window's (non-firing) member counts into the group's distribution."""
        keep = 1.0 - 1.0 / self.config.history
        hist = state.hist
        for k in range(BINS):
            hist[k] *= keep
        for n in counts:  # weights sum to ≈ members × history: a window adds 1 each
            hist[_bin(n)] += 1.0
        state.members = (
            float(len(counts))
            if not state.members
            else state.members * keep + len(counts) * (1 - keep)
        )

    def _alert(
        self, peers, member, status, window_start, value, expected, z, episode=None, **extra
    ):
        scope = {**peers, **dict(zip(self.config.scope, member, strict=True))}
        threshold = extra.pop("threshold", 0.0)
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
            threshold=threshold,
            episode_start=window_start if episode is None else episode,
            **extra,
        )


def _tail_without(hist: list[float], n: int) -> float:
    """P(X ≥ n) among the *other* members: a session is not its own peer."""
    k = _bin(n)
    hist[k] -= 1.0
    try:
        return tail_probability(hist, n)
    finally:
        hist[k] += 1.0


def _median(values: list) -> float:
    n = len(values)
    mid = n // 2
    return float(values[mid]) if n % 2 else 0.5 * (values[mid - 1] + values[mid])
