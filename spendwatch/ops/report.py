"""``backtest --report DIR``: per rule, how often it fired, and timelines of its top scopes.

Everything a person tuning thresholds needs on one page: for each rule its type,
metric, window and threshold, the number of firing alerts (and false alerts per day
when the incidents are known), and a PNG per rule with, for the scopes that fired most
(or spent most), the metric, the expected value, the alerting band and a mark on each
firing window. Drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from spendwatch.ops.replay import Point, Replay

TOP_SCOPES = 3


def _scope_text(scope: tuple[tuple[str, str], ...] | dict[str, str]) -> str:
    items = scope.items() if isinstance(scope, dict) else scope
    return ", ".join(f"{k}={v}" for k, v in items) or "(all)"


def _file_name(rule: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", rule) + ".png"


def write_report(
    directory: str | Path,
    config: Any,
    result: Replay,
    scores: dict[str, Any] | None = None,
) -> Path:
    """Write ``index.html`` and one PNG per detector into ``directory``; return the page."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    alerts = [a for a in result.alerts if a.status == "firing"]
    fired = Counter(a.rule for a in alerts)
    by_rule: dict[str, dict[tuple, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for point in result.points:
        by_rule[point.rule][point.scope].append(point)
    rows = []
    for detector in config.detectors:
        rule = detector.name
        marks = defaultdict(list)
        for alert in alerts:
            if alert.rule == rule:
                marks[tuple(alert.scope.items())].append(alert)
        series = by_rule.get(rule, {})
        ranked = sorted(
            series,
            key=lambda s: (-len(marks.get(s, ())), -sum(p.value or 0.0 for p in series[s])),
        )[:TOP_SCOPES]
        image = _file_name(rule)
        _plot(out / image, rule, detector.metric, ranked, series, marks)
        score = (scores or {}).get(rule)
        rows.append(
            "<tr>"
            f"<td>{html.escape(rule)}</td><td>{html.escape(detector.type)}</td>"
            f"<td>{html.escape(detector.metric)}</td><td>{detector.window}s</td>"
            f"<td>{getattr(detector, 'threshold', '')}</td><td>{fired.get(rule, 0)}</td>"
            f"<td>{'' if score is None else score.false_per_day}</td>"
            f"<td>{html.escape('; '.join(_scope_text(s) for s in ranked))}</td>"
            f'<td><a href="{image}"><img src="{image}" width="480"></a></td>'
            "</tr>"
        )
    budget_rows = "".join(
        f"<tr><td>{html.escape(b.name)}</td><td>{fired.get(b.name, 0)}</td></tr>"
        for b in config.budgets
    )
    page = out / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>spendwatch backtest</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}"
        "table{border-collapse:collapse}</style></head><body>"
        "<h1>spendwatch backtest report</h1><h2>Detectors</h2><table><tr><th>rule</th>"
        "<th>type</th><th>metric</th><th>window</th><th>threshold</th><th>fired</th>"
        "<th>false alerts/day</th><th>top scopes</th><th>timeline</th></tr>"
        + "".join(rows)
        + "</table><h2>Budgets</h2><table><tr><th>budget</th><th>fired</th></tr>"
        + budget_rows
        + "</table></body></html>",
        encoding="utf-8",
    )
    return page


def _plot(path: Path, rule: str, metric: str, scopes, series, marks) -> None:
    import datetime as dt

    rows = max(len(scopes), 1)
    figure, axes = plt.subplots(rows, 1, figsize=(11, 2.6 * rows), squeeze=False)
    for axis, scope in zip(axes[:, 0], scopes or [None], strict=False):
        if scope is None:
            axis.set_title(f"{rule}: no windows judged")
            continue
        points = sorted(series[scope], key=lambda p: p.window_start)
        times = [dt.datetime.fromtimestamp(p.window_start, tz=dt.timezone.utc) for p in points]
        values = [p.value if p.value is not None else float("nan") for p in points]
        expected = [p.expected if p.expected is not None else float("nan") for p in points]
        upper = [p.upper if p.upper is not None else float("nan") for p in points]
        axis.plot(times, values, lw=0.9, color="#1f77b4", label=metric)
        axis.plot(times, expected, lw=0.9, color="#2ca02c", label="expected")
        axis.fill_between(times, expected, upper, color="#2ca02c", alpha=0.15, label="band")
        fired = [
            dt.datetime.fromisoformat(a.window_start.replace("Z", "+00:00"))
            for a in marks.get(scope, ())
        ]
        if fired:
            at = {t: v for t, v in zip(times, values, strict=True)}
            axis.scatter(
                fired, [at.get(t, 0.0) for t in fired], color="#d62728", zorder=3, label="alert"
            )
        axis.set_title(f"{rule}: {_scope_text(scope)}", fontsize=9)
        axis.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
