"""Scoring alerts against known incidents: false alerts per day and detection delays.

An anomaly alert is *explained* by an incident when their scopes do not contradict
each other (every dimension both name has the same value: a tenant alert during that
tenant's model switch, a prompt alert during a tenant's request loop that drove the
prompt's volume) and the alert's episode overlaps the incident (plus ``GRACE`` after
its end; a lasting change such as a prompt regression counts as an incident for
``ONSET_HORIZON`` only: alerts that start a day later are re-alerts, hence false).
Every other firing alert is false. The detection delay of a rule for an incident is
the end of the first explained alert's window (when it could be sent) minus the onset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spendwatch.core.timefmt import parse_rfc3339

GRACE = 2 * 3600
ONSET_HORIZON = 6 * 3600


@dataclass(frozen=True)
class KnownIncident:
    kind: str
    scope: dict[str, str]
    start: float
    end: float


def load_incidents(path: str | Path) -> tuple[list[KnownIncident], float, float]:
    """Incidents and the stream's [start, end) from ``spendwatch demo --incidents-out``."""
    data = json.loads(Path(path).read_text())
    incidents = [
        KnownIncident(i["kind"], dict(i["scope"]), float(i["start"]), float(i["end"]))
        for i in data["incidents"]
    ]
    return incidents, float(data["start"]), float(data["end"])


def dump_incidents(path: str | Path, incidents: Iterable[Any], start: float, end: float) -> None:
    records = [
        {"kind": i.kind, "scope": i.scope, "start": i.start, "end": i.end} for i in incidents
    ]
    Path(path).write_text(json.dumps({"start": start, "end": end, "incidents": records}, indent=1))


def _consistent(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    return all(b[k] == v for k, v in a.items() if k in b)


@dataclass
class RuleScore:
    rule: str
    firing: int
    false_alerts: int
    false_per_day: float
    delays_minutes: dict[str, float | None]


def explains(incident: KnownIncident, alert: Mapping[str, Any]) -> bool:
    episode = parse_rfc3339(alert.get("episode") or alert["window_start"])
    end = parse_rfc3339(alert["window_end"])
    return (
        _consistent(incident.scope, alert["scope"])
        and end > incident.start
        and episode < min(incident.end, incident.start + ONSET_HORIZON) + GRACE
    )


def score_rules(
    alerts: Sequence[Mapping[str, Any]],
    incidents: Sequence[KnownIncident],
    start: float,
    end: float,
    rules: Iterable[str] = (),
) -> dict[str, RuleScore]:
    """Per anomaly rule: firing alerts, false ones, false per day, delay per incident."""
    days = max((end - start) / 86400, 1e-9)
    firing = [a for a in alerts if a["kind"] == "anomaly" and a["status"] == "firing"]
    names = list(dict.fromkeys([*rules, *(a["rule"] for a in firing)]))
    scores = {}
    for rule in names:
        mine = [a for a in firing if a["rule"] == rule]
        false = [a for a in mine if not any(explains(i, a) for i in incidents)]
        delays: dict[str, float | None] = {}
        for incident in incidents:
            hits = [
                parse_rfc3339(a["window_end"])
                for a in mine
                if explains(incident, a) and parse_rfc3339(a["window_end"]) > incident.start
            ]
            delays[incident.kind] = round((min(hits) - incident.start) / 60, 1) if hits else None
        scores[rule] = RuleScore(rule, len(mine), len(false), round(len(false) / days, 2), delays)
    return scores


def as_dict(scores: Mapping[str, RuleScore]) -> dict[str, dict[str, Any]]:
    return {rule: asdict(score) for rule, score in scores.items()}
