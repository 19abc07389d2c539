"""Scoring alerts against a scenario's labels, and summing the scores over scenarios.

Matching. An incident changed some series (tenant, feature, model, prompt_id: its
``leaves``; a model switch's leaves carry the new model). An alert *matches* it when

* its scope is consistent with one of those series: every dimension the alert names is a
  dimension of the series with the same value (a loop on acme/chat is matched by alerts
  on ``[tenant] acme``, ``[tenant, feature] acme/chat``, ``[model]`` of acme/chat's model
  and ``[prompt_id]`` of a prompt acme/chat uses; not by another tenant's alerts), and
* its episode overlaps the incident: the alert's window ends after the onset and its
  episode starts before ``label_end`` = min(end, onset + ``HORIZON``) + ``GRACE`` (a lasting
  change is an incident for its first six hours; a later alert on it is a re-alert).

A firing anomaly alert that matches no incident is *false*, including the ones on normal
changes. A false alert is said to be *on* a change (launch, drift, holiday) when its
window overlaps the change's attribution window and the series the change moved carry
at least half of the alert scope's usual requests (a model-wide alert is not on one
small tenant's drift); each false alert is put on one change at most, the first of
holiday, launch, drift that fits (a drift lasts the whole scored period, so it comes last).

Chance control: ``chance_recall`` is the share of incidents that alerts matching no
incident would have "detected" had each incident happened one day earlier on the same
series: the recall that coincidence alone gives under this matching rule, and
``recall_above_chance`` = (recall − chance) / (1 − chance), the share of the incidents
that coincidence would have missed and the detectors caught.
False alerts count from the end of the warm-up; scope-days = the distinct scopes of every
rule (each rule counted on its own) × days after the warm-up. Budget and forecast alerts
are not anomalies: counted apart. Delay = the end of the first matching alert's window
minus the onset (event time; add the engine's ``allowed_lateness`` for when it is sent).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from bench.scenario_family import (
    CHANGE_TYPES,
    EFFECT_BANDS,
    INCIDENT_TYPES,
    ORACLE_BANDS,
    ORACLE_NEEDED,
    RATE_BANDS,
    rate_band,
)
from spendwatch.core.timefmt import parse_rfc3339

CHANGE_TYPES_BY_PRIORITY = ("holiday", "launch", "drift")
DETECTOR_WARMUP_DAYS = 2
"""The detectors' own warm-up (robust_seasonal's default): alerts before it are not counted
in the warm-up false-alert figure."""


def consistent(scope: Mapping[str, str], series: Mapping[str, str]) -> bool:
    return all(series.get(k) == v for k, v in scope.items())


def _span(alert: Mapping[str, Any]) -> tuple[float, float, float]:
    """(episode start, window start, window end) in epoch seconds."""
    start = parse_rfc3339(alert["window_start"])
    episode = parse_rfc3339(alert["episode"]) if alert.get("episode") else start
    return min(episode, start), start, parse_rfc3339(alert["window_end"])


def matches(label: Mapping[str, Any], alert: Mapping[str, Any], span=None) -> bool:
    episode, _, end = span or _span(alert)
    if not (end > label["onset"] and episode < label["label_end"]):
        return False
    return any(consistent(alert["scope"], leaf) for leaf in label["leaves"])


def _key(series: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(series.items()))


def share_of(scope: Mapping[str, str], leaves, series, rates) -> float:
    """Share of the usual requests of ``scope`` that flow through ``leaves``."""
    inside = {_key(leaf) for leaf in leaves}
    total = part = 0.0
    for s, rate in zip(series, rates, strict=True):
        if consistent(scope, s):
            total += rate
            if _key(s) in inside:
                part += rate
    return part / total if total else 0.0


def _shifted(label: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    return {**label, "onset": label["onset"] + seconds, "label_end": label["label_end"] + seconds}


def rule_scopes(series: Sequence[Mapping[str, str]], dims: Sequence[str]) -> list[dict]:
    """The distinct scopes a rule keyed on ``dims`` sees in the stream."""
    keys = dict.fromkeys(tuple(s.get(d, "unattributed") for d in dims) for s in series)
    return [dict(zip(dims, key, strict=True)) for key in keys]


def scope_counts(series: Sequence[Mapping[str, str]], rules: Mapping[str, Sequence[str]]):
    """Distinct scopes per rule, from the series of the stream."""
    return {rule: len(rule_scopes(series, dims)) for rule, dims in rules.items()}


def scope_rate(scope: Mapping[str, str], series, rates) -> float:
    """Usual requests per hour of a scope."""
    return sum(r for s, r in zip(series, rates, strict=True) if consistent(scope, s))


def band_scope_days(labels: Mapping[str, Any], rules: Mapping[str, Sequence[str]]):
    """Scope-days after the warm-up per rate band of the scopes (of every rule)."""
    series, rates = labels["series"], labels["series_rates"]
    days = (labels["end"] - labels["warmup_end"]) / 86400
    out: dict[str, float] = {}
    for dims in rules.values():
        for scope in rule_scopes(series, dims):
            band = rate_band(scope_rate(scope, series, rates))
            out[band] = out.get(band, 0.0) + days
    return out


def change_scope_days(labels: Mapping[str, Any], rules: Mapping[str, Sequence[str]]):
    """Per normal change: scopes (of every rule) it dominates × its scored days."""
    series, rates = labels["series"], labels["series_rates"]
    out: dict[str, float] = {}
    for change in labels["normal_changes"]:
        lo = max(change["onset"], labels["warmup_end"])
        days = max(0.0, min(change["label_end"], labels["end"]) - lo) / 86400
        count = sum(
            1
            for dims in rules.values()
            for scope in rule_scopes(series, dims)
            if share_of(scope, change["leaves"], series, rates) >= 0.5
        )
        out[change["type"]] = out.get(change["type"], 0.0) + count * days
    return out


def score(
    alerts: Iterable[Mapping[str, Any]],
    labels: Mapping[str, Any],
    rules: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """One scenario: each incident's detection, the false alerts, budget counts."""
    warmup_end, start = labels["warmup_end"], labels["start"]
    post_days = (labels["end"] - warmup_end) / 86400
    firing = [a for a in alerts if a["status"] == "firing"]
    kinds = Counter(a["kind"] for a in firing)
    anomalies = [(a, _span(a)) for a in firing if a["kind"] == "anomaly"]
    unmatched = [
        (a, span)
        for a, span in anomalies
        if not any(matches(label, a, span) for label in labels["incidents"])
    ]
    incidents = []
    for label in labels["incidents"]:
        hits = [(span[2], a["rule"]) for a, span in anomalies if matches(label, a, span)]
        earlier = _shifted(label, -86400)
        chance = any(matches(earlier, a, span) for a, span in unmatched)
        first = min(hits) if hits else None
        incidents.append(
            {
                **{
                    k: label[k]
                    for k in (
                        "id",
                        "type",
                        "scope",
                        "onset",
                        "effect",
                        "scope_rate",
                        "onset_rate",
                        "rate_band",
                        "effect_band",
                    )
                },
                "oracle_nats": label.get("oracle_nats"),
                "oracle_band": label.get("oracle_band"),
                "oracle_delay_minutes": label.get("oracle_delay_minutes"),
                "seed": labels["seed"],
                "background": labels["background"],
                "detected": first is not None,
                "chance_detected": chance,
                "delay_minutes": None if first is None else (first[0] - label["onset"]) / 60,
                "first_rule": None if first is None else first[1],
                "rules": sorted({rule for _, rule in hits}),
            }
        )
    false: list[dict[str, Any]] = []
    warmup_false = 0
    series, rates = labels["series"], labels["series_rates"]
    for alert, span in unmatched:
        if span[1] < warmup_end:
            if span[1] >= start + DETECTOR_WARMUP_DAYS * 86400:
                warmup_false += 1
            continue
        fits = {
            change["type"]
            for change in labels["normal_changes"]
            if span[2] > change["onset"]
            and span[0] < change["label_end"]
            and share_of(alert["scope"], change["leaves"], series, rates) >= 0.5
        }
        on = next((c for c in CHANGE_TYPES_BY_PRIORITY if c in fits), None)
        false.append(
            {
                "rule": alert["rule"],
                "scope": alert["scope"],
                "window_start": alert["window_start"],
                "on": on,
                "rate_band": rate_band(scope_rate(alert["scope"], series, rates)),
            }
        )
    scopes = scope_counts(labels["series"], rules)
    return {
        "seed": labels["seed"],
        "background": labels["background"],
        "events": labels["events"],
        "requests": labels["requests"],
        "post_days": post_days,
        "warmup_days": labels["warmup_days"] - DETECTOR_WARMUP_DAYS,
        "scopes": scopes,
        "scope_days": sum(scopes.values()) * post_days,
        "change_scope_days": change_scope_days(labels, rules),
        "band_scope_days": band_scope_days(labels, rules),
        "incidents": incidents,
        "false": false,
        "warmup_false": warmup_false,
        "budget_alerts": {k: kinds.get(k, 0) for k in ("budget", "forecast")},
    }


# ----------------------------------------------------------------------------------------
# Summing scenarios


def _ratio(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def _per(count: float, days: float) -> float | None:
    return round(count / days, 6) if days else None


def above_chance(recall: float | None, chance: float | None) -> float | None:
    """(recall − chance) / (1 − chance): the share of incidents not explained by chance."""
    if recall is None or chance is None or chance >= 1:
        return None
    return round((recall - chance) / (1 - chance), 4)


def _recall(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    k = sum(1 for i in items if i["detected"])
    return {"n": len(items), "detected": k, "recall": _ratio(k, len(items))}


def _quantiles(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "p95": None}
    return {
        "n": len(values),
        "median": round(float(np.median(values)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
    }


def _delays(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return _quantiles([i["delay_minutes"] for i in items if i["detected"]])


def _within_five_requests(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's delay target on thin scopes: found within the time the scope takes to
    make five requests at its onset rate (the requests an incident can show itself in)."""
    def five(i: Mapping[str, Any]) -> float:
        return 5 * 60 / max(i["onset_rate"], 1e-9)

    met = [i for i in items if i["detected"] and i["delay_minutes"] <= five(i)]
    # the physical limit of the same target: the oracle's own delay within five requests
    # (a model switch named by its new model can beat the oracle, which reads costs only)
    oracle = [
        i
        for i in items
        if i.get("oracle_delay_minutes") is not None and i["oracle_delay_minutes"] <= five(i)
    ]
    return {
        "n": len(items),
        "detected": sum(i["detected"] for i in items),
        "met": len(met),
        "oracle_met": len(oracle),
    }


WITHIN_ORACLE_MINUTES = (15, 60)
"""Slack over the oracle's delay the summary counts detections within: one detector window
(the least a detector's windows add) and an hour."""


def against_oracle(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Detected incidents' delays against the oracle's (``oracle_delay_minutes``: when an
    oracle knowing the true noise reaches the evidence the default budget needs).

    Over the detected incidents the oracle reaches within the horizon: our delay, the
    oracle's, the excess (ours minus the oracle's, per incident; negative when the alert
    came early by luck), and the share found within the oracle's delay + 15 and + 60
    minutes. ``beyond_oracle``: detected incidents the oracle does not reach (less than
    the needed evidence on average: found on a favourable draw of the noise)."""
    found = [i for i in items if i["detected"]]
    paired = [i for i in found if i.get("oracle_delay_minutes") is not None]
    excess = [i["delay_minutes"] - i["oracle_delay_minutes"] for i in paired]
    out: dict[str, Any] = {
        "detected": len(found),
        "beyond_oracle": len(found) - len(paired),
        "delay": _quantiles([i["delay_minutes"] for i in paired]),
        "oracle": _quantiles([i["oracle_delay_minutes"] for i in paired]),
        "excess": _quantiles(excess),
    }
    for slack in WITHIN_ORACLE_MINUTES:
        met = sum(1 for e in excess if e <= slack)
        out[f"within_oracle_plus_{slack}"] = {
            "n": len(excess),
            "met": met,
            "share": _ratio(met, len(excess)),
        }
    return out


def oracle_delays(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The oracle's own delay over incidents, detected or not; ``unreached``: those whose
    evidence stays under the needed nats for the whole horizon (no finite delay)."""
    values = [i["oracle_delay_minutes"] for i in items if i.get("oracle_delay_minutes") is not None]
    return {**_quantiles(values), "unreached": len(items) - len(values)}


def _grouped(items, key) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for item in items:
        out[key(item)].append(item)
    return out


def _in_target(incident: Mapping[str, Any]) -> bool:
    """The issue's recall target: incidents of ×2 or more on scopes of ≥ 1 request/h."""
    return incident["effect"] >= 2.0 and incident["scope_rate"] >= 1.0


def _busy_target(incident: Mapping[str, Any]) -> bool:
    """The issue's delay target on busy scopes: effects of ×3 or more on ≥ 20 requests/h."""
    return incident["effect"] >= 3 and incident["scope_rate"] >= 20


def summarise(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures over scenarios (each ``results`` entry is one ``score``)."""
    incidents = [i for r in results for i in r["incidents"]]
    rate_names = [name for _, _, name in RATE_BANDS]
    effect_names = [name for _, _, name in EFFECT_BANDS]
    oracle_names = [name for _, _, name in ORACLE_BANDS]
    by_type = _grouped(incidents, lambda i: i["type"])
    false = [f for r in results for f in r["false"]]
    post_days = sum(r["post_days"] for r in results)
    scope_days = sum(r["scope_days"] for r in results)
    per_seed = []
    for r in results:
        hit = sum(1 for i in r["incidents"] if i["detected"])
        per_seed.append(
            {
                "seed": r["seed"],
                "background": r["background"],
                "false": len(r["false"]),
                "false_per_day": round(len(r["false"]) / r["post_days"], 3),
                "recall": _ratio(hit, len(r["incidents"])),
                "missed": [i["id"] for i in r["incidents"] if not i["detected"]],
            }
        )
    worst_false = max(per_seed, key=lambda s: (s["false_per_day"], -(s["recall"] or 0)))
    worst_recall = min(per_seed, key=lambda s: (s["recall"] or 0, -s["false_per_day"]))
    changes = Counter(f["on"] for f in false if f["on"])
    warmup_days = sum(r["warmup_days"] for r in results)
    out = {
        "scenarios": len(results),
        "seeds": [r["seed"] for r in results],
        "events": sum(r["events"] for r in results),
        "requests": sum(r["requests"] for r in results),
        "incidents": len(incidents),
        "detected": _recall(incidents)["detected"],
        "recall": _recall(incidents)["recall"],
        "recall_by_type": {t: _recall(by_type.get(t, [])) for t in INCIDENT_TYPES},
        "chance_recall": _ratio(sum(i["chance_detected"] for i in incidents), len(incidents)),
        "chance_recall_by_type": {
            t: _ratio(
                sum(i["chance_detected"] for i in by_type.get(t, [])), len(by_type.get(t, []))
            )
            for t in INCIDENT_TYPES
        },
        "recall_by_oracle_band": {
            b: _recall([i for i in incidents if i.get("oracle_band") == b]) for b in oracle_names
        },
        "recall_target": _recall([i for i in incidents if _in_target(i)]),
        "recall_target_by_oracle_band": {
            b: _recall([i for i in incidents if _in_target(i) and i.get("oracle_band") == b])
            for b in oracle_names
        },
        "recall_by_rate_band": {
            b: _recall([i for i in incidents if i["rate_band"] == b]) for b in rate_names
        },
        "recall_by_effect_band": {
            b: _recall([i for i in incidents if i["effect_band"] == b]) for b in effect_names
        },
        "recall_by_type_rate_band": {
            t: {
                b: _recall([i for i in by_type.get(t, []) if i["rate_band"] == b])
                for b in rate_names
            }
            for t in INCIDENT_TYPES
        },
        "recall_by_type_effect_band": {
            t: {
                b: _recall([i for i in by_type.get(t, []) if i["effect_band"] == b])
                for b in effect_names
            }
            for t in INCIDENT_TYPES
        },
        "recall_by_background": {
            g: _recall(items)
            for g, items in sorted(_grouped(incidents, lambda i: i["background"]).items())
        },
        "delay_minutes": {t: _delays(by_type.get(t, [])) for t in INCIDENT_TYPES},
        "delay_target_busy": _delays([i for i in incidents if _busy_target(i)]),
        "thin_within_five_requests": _within_five_requests(
            [i for i in incidents if i["effect"] >= 3 and 1 <= i["scope_rate"] < 20]
        ),
        "delay_minutes_by_type_rate_band": {
            t: {
                b: _delays([i for i in by_type.get(t, []) if i["rate_band"] == b])
                for b in rate_names
            }
            for t in INCIDENT_TYPES
        },
        "oracle_needed_nats": round(ORACLE_NEEDED, 2),
        "delay_against_oracle": {
            "all": against_oracle(incidents),
            "by_type": {t: against_oracle(by_type.get(t, [])) for t in INCIDENT_TYPES},
            "target_busy": against_oracle([i for i in incidents if _busy_target(i)]),
        },
        "oracle_delay_target_busy": oracle_delays([i for i in incidents if _busy_target(i)]),
        "caught_first_by_rule": dict(Counter(i["first_rule"] for i in incidents if i["detected"])),
        "false_alerts": len(false),
        "post_warmup_days": round(post_days, 3),
        "scope_days": round(scope_days, 1),
        "false_per_scope_day": round(len(false) / scope_days, 6) if scope_days else None,
        "false_per_day": round(len(false) / post_days, 4) if post_days else None,
        "false_by_rule": dict(sorted(Counter(f["rule"] for f in false).items())),
        "false_on_normal_changes": {c: changes.get(c, 0) for c in CHANGE_TYPES},
        "false_per_scope_day_on_normal_changes": {
            c: _per(changes.get(c, 0), sum(r["change_scope_days"].get(c, 0) for r in results))
            for c in CHANGE_TYPES
        },
        "false_on_no_change": sum(1 for f in false if not f["on"]),
        "false_per_scope_day_by_rate_band": {
            b: _per(
                sum(1 for f in false if f["rate_band"] == b),
                sum(r["band_scope_days"].get(b, 0) for r in results),
            )
            for b in rate_names
        },
        "false_by_background": {
            g: round(sum(len(r["false"]) for r in rs) / sum(r["post_days"] for r in rs), 4)
            for g, rs in sorted(_grouped(results, lambda r: r["background"]).items())
        },
        "warmup_false_per_day": (
            round(sum(r["warmup_false"] for r in results) / warmup_days, 4) if warmup_days else None
        ),
        "budget_alerts": dict(sum((Counter(r["budget_alerts"]) for r in results), Counter())),
        "worst_seed_false": worst_false,
        "worst_seed_recall": worst_recall,
        "per_seed": per_seed,
    }
    out["recall_above_chance"] = above_chance(out["recall"], out["chance_recall"])
    out["recall_above_chance_by_type"] = {
        t: above_chance(out["recall_by_type"][t]["recall"], out["chance_recall_by_type"][t])
        for t in INCIDENT_TYPES
    }
    return out


# ----------------------------------------------------------------------------------------
# The naive baseline

BASELINE = "naive-z3-hourly-spend"
"""Each scope's hourly spend against the mean and standard deviation of its previous 168
hours (at least 48): an alert when z > 3, one per run of consecutive hours above."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def baseline_alerts(
    series: Sequence[Mapping[str, str]],
    hourly_spend: np.ndarray,
    start: float,
    scope_dims: Iterable[Sequence[str]],
    *,
    threshold: float = 3.0,
    history: int = 168,
    min_history: int = 48,
) -> list[dict[str, Any]]:
    alerts = []
    hours = hourly_spend.shape[1]
    for dims in scope_dims:
        groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, s in enumerate(series):
            groups[tuple(s[d] for d in dims)].append(i)
        for key, rows in sorted(groups.items()):
            x = hourly_spend[rows].sum(axis=0)
            c1 = np.concatenate([[0.0], np.cumsum(x)])
            c2 = np.concatenate([[0.0], np.cumsum(x * x)])
            h = np.arange(hours)
            lo = np.maximum(0, h - history)
            n = h - lo
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (c1[h] - c1[lo]) / n
                var = np.maximum((c2[h] - c2[lo]) / n - mean**2, 0) * n / np.maximum(n - 1, 1)
                std = np.sqrt(var)
                z = np.where(
                    std > 1e-12 * np.maximum(mean, 1e-12),
                    (x - mean) / std,
                    np.where(x > mean, math.inf, 0.0),
                )
            fire = (n >= min_history) & (z > threshold)
            starts = np.nonzero(fire & ~np.r_[False, fire[:-1]])[0]
            scope = dict(zip(dims, key, strict=True))
            for hour in starts.tolist():
                alerts.append(
                    {
                        "kind": "anomaly",
                        "status": "firing",
                        "rule": f"{BASELINE}[{','.join(dims)}]",
                        "scope": scope,
                        "window_start": _iso(start + hour * 3600),
                        "window_end": _iso(start + (hour + 1) * 3600),
                    }
                )
    return alerts
