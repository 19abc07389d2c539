"""The cost-guard API beside ``/budgets``, ``/alerts`` and ``/scopes``; its OpenAPI document.

``GET /costs?rule=R&tenant=acme&from=…&to=…&step=1h``  spend, requests, tokens and cost
per request of a rule's scopes over recent windows (the series each shard keeps,
``engine.series_horizon``), filtered by dimension values.
``GET /unit-costs?…``  the same selection, per request: cost, input and output tokens.
``GET /anomalies?status=firing``  open and recent anomaly episodes, drivers and status.
``PUT /budgets/<name>/<scope>`` (or POST)  set a budget's amount at run time, body
``{"amount_usd": 250, "reason": "…"}``; needs ``Authorization: Bearer <server.api_token>``.
``GET /silences``  the config's silences and those set from Slack (kept in the outbox).
``GET /status.json``  silences, delivery health per receiver, watermark (the status page).
``GET /openapi.json``  this API, generated from the pydantic models below.

The response models are the ones the handlers build their answers with, so the document
cannot drift from what is served. A budget amount set at run time goes to every shard
engine of the process (and, unless ``?local=1``, to every other process): each keeps it
in its recovered state, so it outlives restarts and reloads. The change is logged
(``budget amount set``), the token never is.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal
from urllib.error import HTTPError
from urllib.parse import SplitResult, unquote, urlencode
from urllib.request import Request, urlopen

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from spendwatch import __version__
from spendwatch.core import liveview
from spendwatch.core.logging import get_logger
from spendwatch.core.timefmt import parse_duration, parse_rfc3339, rfc3339

if TYPE_CHECKING:
    from spendwatch.service.server import _Handler

log = get_logger("spendwatch.api")
NANOS = 1_000_000_000
RESERVED = {"rule", "from", "to", "step", "window", "local", "limit", "status"}
APPLY_TIMEOUT = 5.0  # seconds a change waits for this process's shards to hold it
DEFAULT_RANGE = 86400


# -- models ----------------------------------------------------------------------------------


class CostPoint(BaseModel):
    """Sums of one step (or of the whole range, in ``total``)."""

    start: str = Field(description="step start, RFC 3339")
    end: str = Field(description="step end (exclusive)")
    spend_usd: float
    requests: int
    input_tokens: int
    output_tokens: int
    events: int
    cost_per_request_usd: float | None = Field(description="null without requests")


class CostSeries(BaseModel):
    scope: dict[str, str]
    points: list[CostPoint] = Field(description="steps with data, oldest first")
    total: CostPoint = Field(description="the whole range")


class CostsResponse(BaseModel):
    rule: str = Field(description="whose scopes: the rule asked for, or the coarsest fitting")
    dims: list[str] = Field(description="the rule's scope dimensions")
    step_seconds: int
    from_: str = Field(alias="from")
    to: str
    series: list[CostSeries] = Field(description="one per matching scope, largest spend first")
    total: CostSeries | None = Field(description="every matching scope summed per step")
    processes: int | None = None
    unreachable: list[str] | None = None

    model_config = ConfigDict(populate_by_name=True)


class UnitCostPoint(BaseModel):
    start: str
    end: str
    requests: int
    cost_per_request_usd: float | None
    input_tokens_per_request: float | None
    output_tokens_per_request: float | None


class UnitCostSeries(BaseModel):
    scope: dict[str, str]
    points: list[UnitCostPoint]
    total: UnitCostPoint


class UnitCostsResponse(BaseModel):
    rule: str
    dims: list[str]
    step_seconds: int
    from_: str = Field(alias="from")
    to: str
    series: list[UnitCostSeries] = Field(description="highest cost per request first")
    processes: int | None = None
    unreachable: list[str] | None = None

    model_config = ConfigDict(populate_by_name=True)


class DriverOut(BaseModel):
    dimension: str
    value: str
    share: float


class AnomalyEpisode(BaseModel):
    """One anomaly episode: from its firing alert to its resolved one (if any yet)."""

    rule: str
    scope: dict[str, str]
    status: Literal["firing", "resolved"]
    since: str = Field(description="start of the first anomalous window")
    resolved_at: str | None = Field(default=None, description="end of the window that resolved")
    metric: str | None = None
    severity: str | None = None
    observed: float | None = None
    expected: float | None = None
    score: float | None = None
    drivers: list[DriverOut] = Field(default_factory=list)
    owner: str | None = None
    fingerprint: str | None = None


class AnomaliesResponse(BaseModel):
    anomalies: list[AnomalyEpisode] = Field(description="firing first, then newest first")
    processes: int | None = None
    unreachable: list[str] | None = None


class BudgetAmountRequest(BaseModel):
    """Body of ``PUT /budgets/<name>/<scope>``."""

    model_config = ConfigDict(extra="forbid")

    amount_usd: float = Field(gt=0, allow_inf_nan=False, description="the new amount per period")
    reason: str | None = Field(default=None, max_length=500, description="kept in the log")


class BudgetAmountResponse(BaseModel):
    budget: str
    scope: str = Field(description="'*' (the default amount) or the scope_by values, '/'-joined")
    amount_usd: float
    previous_usd: float
    set_at: str
    applied: bool = Field(
        description="every shard of every answering process has snapshotted it (a restart "
        "keeps it); false: set, but not yet confirmed durable"
    )
    processes: int | None = None
    unreachable: list[str] | None = None


class BudgetRow(BaseModel):
    budget: str
    scope: dict[str, str]
    period: str
    period_start: str
    period_end: str
    spend_nanos: int
    spend_usd: float
    amount_usd: float
    percent: float
    crossed: list[float]
    thresholds: list[float] | None = None
    amount_set_at: str | None = None


class BudgetsResponse(BaseModel):
    budgets: list[BudgetRow]
    processes: int | None = None
    unreachable: list[str] | None = None


class ErrorResponse(BaseModel):
    error: str


# -- GET /costs, /unit-costs -----------------------------------------------------------------


class BadRequest(ValueError):
    pass


def _rules(config: Any) -> list[tuple[str, tuple[str, ...]]]:
    """(rule, scope dimensions) of the detectors then the budgets, in config order."""
    from spendwatch.dataflows.engine import EnginePlan

    plan = EnginePlan.from_config(config)
    return [(r.name, tuple(r.aggregation.dims)) for r in [*plan.detectors, *plan.budgets]]


_RULE_CACHE: dict[int, list[tuple[str, tuple[str, ...]]]] = {}


def _rule_dims(config: Any) -> list[tuple[str, tuple[str, ...]]]:
    key = id(config)
    if key not in _RULE_CACHE:
        _RULE_CACHE.clear()
        _RULE_CACHE[key] = _rules(config)
    return _RULE_CACHE[key]


def pick_rule(config: Any, rule: str | None, match: Mapping[str, str]) -> tuple[str, list[str]]:
    """The rule asked for, else the one with the fewest dimensions covering the filters."""
    rules = _rule_dims(config) if config is not None else []
    if rule is not None:
        for name, dims in rules:
            if name == rule:
                missing = set(match) - set(dims)
                if missing:
                    raise BadRequest(f"rule {rule!r} is not scoped by {sorted(missing)}")
                return name, list(dims)
        raise BadRequest(f"no rule {rule!r}")
    fitting = [
        (len(dims), i, n, dims) for i, (n, dims) in enumerate(rules) if set(match) <= set(dims)
    ]
    if not fitting:
        known = {name: list(dims) for name, dims in rules}
        raise BadRequest(f"no rule is scoped by {sorted(match)}; rules: {known}")
    _, _, name, dims = min(fitting)
    return name, list(dims)


def _time(text: str, latest: float) -> float:
    """RFC 3339, or a duration before the latest data (``24h``)."""
    try:
        return parse_rfc3339(text)
    except ValueError:
        pass
    try:
        return latest - parse_duration(text)
    except ValueError as error:
        raise BadRequest(f"{text!r} is neither an RFC 3339 time nor a duration") from error


def _selection(query: Mapping[str, str]) -> tuple[Any, str, list[str], dict[str, str]]:
    view = liveview.current()
    match = {k: v for k, v in query.items() if k not in RESERVED}
    rule, dims = pick_rule(view.config, query.get("rule"), match)
    return view, rule, dims, match


def _local_series(
    view: liveview.LiveView, rule: str, match: Mapping[str, str]
) -> tuple[int, list[tuple[dict[str, str], Sequence[int]]], float]:
    """This process's series of ``rule`` matching ``match``: step, rows, latest window end."""
    step, rows, latest = 0, [], -math.inf
    for picture in view.pictures():
        found = picture.get("series", {}).get(rule)
        if found is None:
            continue
        step = found["step"]
        dims = found["dims"]
        for scope, points in found["rows"].items():
            scope_map = dict(zip(dims, scope, strict=True))
            if all(scope_map.get(k) == v for k, v in match.items()) and points:
                rows.append((scope_map, points))
                latest = max(latest, points[-6] + step)
    return step, rows, latest


def _resample(points: Sequence[int], step: int, start: float, end: float) -> dict[int, list[int]]:
    """start of step -> [spend_nanos, requests, input, output, events] within [start, end)."""
    out: dict[int, list[int]] = {}
    for i in range(0, len(points), 6):
        at = points[i]
        if at < start or at >= end:
            continue
        bucket = out.setdefault(int(at - at % step), [0, 0, 0, 0, 0])
        for j in range(5):
            bucket[j] += points[i + 1 + j]
    return out


def _cost_point(start: float, end: float, sums: Sequence[int]) -> CostPoint:
    spend, requests, input_tokens, output_tokens, events = sums
    return CostPoint(
        start=rfc3339(start),
        end=rfc3339(end),
        spend_usd=round(spend / NANOS, 9),
        requests=requests,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        events=events,
        cost_per_request_usd=round(spend / NANOS / requests, 9) if requests else None,
    )


def _unit_point(start: str, end: str, sums: Sequence[int]) -> UnitCostPoint:
    spend, requests, input_tokens, output_tokens, _ = sums
    return UnitCostPoint(
        start=start,
        end=end,
        requests=requests,
        cost_per_request_usd=round(spend / NANOS / requests, 9) if requests else None,
        input_tokens_per_request=input_tokens / requests if requests else None,
        output_tokens_per_request=output_tokens / requests if requests else None,
    )


def _range(query: Mapping[str, str], latest: float, base: int) -> tuple[int, float, float]:
    if "step" in query:
        try:
            step = parse_duration(query["step"])
        except ValueError as error:
            raise BadRequest(f"step: {error}") from error
        if step <= 0 or step % base:
            raise BadRequest(f"step must be a multiple of the rule's series step ({base}s)")
    else:
        step = base
    end = _time(query["to"], latest) if "to" in query else latest
    if "from" in query:
        start = _time(query["from"], latest)
    else:
        span = DEFAULT_RANGE
        if "window" in query:
            try:
                span = parse_duration(query["window"])
            except ValueError as error:
                raise BadRequest(f"window: {error}") from error
        start = end - span
    if start >= end:
        raise BadRequest("from must be before to")
    return step, start - start % step, end


def costs(handler: _Handler, url: SplitResult, query: dict[str, str], unit: bool) -> None:
    try:
        view, rule, dims, match = _selection(query)
        base, rows, latest = _local_series(view, rule, match)
        base = base or _series_step(view.config, rule)
        if latest == -math.inf:
            mark = view.watermark()
            latest = mark if mark is not None else time.time()
        step, start, end = _range(query, latest, base)
    except BadRequest as error:
        handler._json(400, {"error": str(error)})
        return
    # the other processes answer for exactly this range
    explicit = {**query, "from": rfc3339(start), "to": rfc3339(end), "step": f"{step}s"}
    url = url._replace(query=urlencode(explicit))
    series = []
    for scope, points in rows:
        steps = _resample(points, step, start, end)
        if not steps:
            continue
        sums = [sum(v[j] for v in steps.values()) for j in range(5)]
        series.append(
            CostSeries(
                scope=scope,
                points=[_cost_point(at, at + step, v) for at, v in sorted(steps.items())],
                total=_cost_point(start, end, sums),
            ).model_dump()
        )
    gathered, extra, _ = handler._gather(url, query, "series", series)
    shared = {"rule": rule, "dims": dims, "step_seconds": step}
    window = {"from": rfc3339(start), "to": rfc3339(end)}
    if unit:
        units = [_as_unit(CostSeries.model_validate(s)) for s in gathered]
        units.sort(key=lambda s: -(s.total.cost_per_request_usd or 0.0))
        body = UnitCostsResponse(**shared, **window, series=units, **extra)
    else:
        merged = [CostSeries.model_validate(s) for s in gathered]
        merged.sort(key=lambda s: (-s.total.spend_usd, sorted(s.scope.items())))
        body = CostsResponse(
            **shared, **window, series=merged, total=_total(merged, match, start, end), **extra
        )
    handler._json(200, body.model_dump(by_alias=True, exclude_none=True))


def _series_step(config: Any, rule: str) -> int:
    from spendwatch.dataflows.engine import EnginePlan

    plan = EnginePlan.from_config(config)
    for r in [*plan.detectors, *plan.budgets]:
        if r.name == rule:
            return plan.series_step(r.aggregation)
    return 900


def _as_unit(series: CostSeries) -> UnitCostSeries:
    def unit(point: CostPoint) -> UnitCostPoint:
        sums = (
            round(point.spend_usd * NANOS),
            point.requests,
            point.input_tokens,
            point.output_tokens,
            point.events,
        )
        return _unit_point(point.start, point.end, sums)

    return UnitCostSeries(
        scope=series.scope, points=[unit(p) for p in series.points], total=unit(series.total)
    )


def _total(
    series: list[CostSeries], match: Mapping[str, str], start: float, end: float
) -> CostSeries | None:
    if not series:
        return None
    by_start: dict[str, list[Any]] = {}
    for one in series:
        for p in one.points:
            slot = by_start.setdefault(p.start, [p.end, 0, 0, 0, 0, 0])
            slot[1] += round(p.spend_usd * NANOS)
            slot[2] += p.requests
            slot[3] += p.input_tokens
            slot[4] += p.output_tokens
            slot[5] += p.events
    points = [
        _cost_point(parse_rfc3339(start), parse_rfc3339(v[0]), v[1:])
        for start, v in sorted(by_start.items())
    ]
    sums = [sum(round(s.total.spend_usd * NANOS) for s in series)] + [
        sum(getattr(s.total, f) for s in series)
        for f in ("requests", "input_tokens", "output_tokens", "events")
    ]
    return CostSeries(scope=dict(match), points=points, total=_cost_point(start, end, sums))


# -- GET /anomalies ----------------------------------------------------------------------------


def anomaly_episodes(view: liveview.LiveView) -> list[dict[str, Any]]:
    """This process's anomaly episodes: from recent alerts, and open ones from detector
    state (an episode whose firing alert came before a restart)."""
    episodes: dict[tuple[str, str], dict[str, Any]] = {}
    for alert in reversed(view.recent_alerts(liveview.RECENT_ALERTS)):  # oldest first
        if alert.get("kind") != "anomaly":
            continue
        key = (alert["fingerprint"], alert["episode"])
        episode = episodes.get(key)
        if alert["status"] == "firing" or episode is None:
            episode = episodes[key] = {
                "rule": alert["rule"],
                "scope": alert["scope"],
                "status": "firing",
                "since": alert["episode"],
                "metric": alert.get("metric"),
                "severity": alert.get("severity"),
                "observed": alert.get("observed"),
                "expected": alert.get("expected"),
                "score": alert.get("score"),
                "drivers": alert.get("drivers", []),
                "owner": alert.get("owner"),
                "fingerprint": alert["fingerprint"],
            }
        if alert["status"] == "resolved":
            episode["status"] = "resolved"
            episode["resolved_at"] = alert["window_end"]
    known = {(e["rule"], tuple(sorted(e["scope"].items()))) for e in episodes.values()}
    rows = list(episodes.values())
    for picture in view.pictures():
        for rule, scopes in picture["scopes"].items():
            for row in scopes:
                since = row.get("firing_since")
                if since and (rule, tuple(sorted(row["scope"].items()))) not in known:
                    rows.append(
                        {"rule": rule, "scope": row["scope"], "status": "firing", "since": since}
                    )
    owners = getattr(view.config, "owners", None) or []
    for row in rows:
        if not row.get("owner") and owners:
            row["owner"] = _owner(owners, row)
    return [AnomalyEpisode.model_validate(r).model_dump(exclude_none=True) for r in rows]


def _owner(owners: Sequence[Any], row: Mapping[str, Any]) -> str | None:
    """The first ``owners:`` entry fitting the episode (the outbox fills alerts the same way)."""
    probe = SimpleNamespace(
        rule=row["rule"],
        scope=row["scope"],
        kind="anomaly",
        severity=row.get("severity"),
        status=row["status"],
    )
    return next((entry.owner for entry in owners if entry.matches(probe)), None)


def anomalies(handler: _Handler, url: SplitResult, query: dict[str, str]) -> None:
    status = query.get("status")
    if status not in (None, "firing", "resolved"):
        handler._json(400, {"error": "status is firing or resolved"})
        return
    try:
        limit = int(query.get("limit", "200"))
    except ValueError:
        handler._json(400, {"error": "limit must be an integer"})
        return
    view = liveview.current()
    own = [
        e
        for e in anomaly_episodes(view)
        if (status is None or e["status"] == status)
        and (query.get("rule") is None or e["rule"] == query["rule"])
    ]
    rows, extra, _ = handler._gather(url, query, "anomalies", own)
    rows.sort(key=lambda e: e["since"], reverse=True)
    rows.sort(key=lambda e: e["status"] != "firing")
    body = AnomaliesResponse(anomalies=rows[: max(limit, 0)], **extra)
    handler._json(200, body.model_dump(exclude_none=True))


# -- PUT /budgets/<name>/<scope> -----------------------------------------------------------------


def authorize(handler: _Handler) -> bool:
    """Bearer token check, in constant time; answers 401/403 itself when it fails."""
    config = liveview.current().config
    expected = config.server.api_token if config is not None else None
    client = handler.client_address[0]
    if not expected:
        log.warning("change refused: no server.api_token configured", path=_path(handler))
        handler._json(403, {"error": "changes are disabled: set server.api_token"})
        return False
    given = handler.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not token:
        log.warning("change refused: no bearer token", path=_path(handler), client=client)
        body = orjson.dumps({"error": "bearer token required"})
        handler.send_response(401)
        handler.send_header("WWW-Authenticate", 'Bearer realm="spendwatch"')
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        return False
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        log.warning("change refused: wrong token", path=_path(handler), client=client)
        handler._json(403, {"error": "wrong token"})
        return False
    return True


def _path(handler: _Handler) -> str:
    return handler.path.split("?", 1)[0]


def amount_key(budget: Any, scope: str) -> str:
    """``*``, ``acme``, ``acme/chat`` or ``tenant=acme,feature=chat`` as the amount key."""
    scope = scope.strip()
    if scope == "*":
        return "*"
    dims = list(budget.scope_by)
    if not dims:
        raise BadRequest(f"budget {budget.name!r} has no scope_by: set its amount with '*'")
    if "=" in scope:
        pairs = dict(part.split("=", 1) for part in scope.split(",") if "=" in part)
        if set(pairs) != set(dims):
            raise BadRequest(f"budget {budget.name!r} is scoped by {dims}")
        return "/".join(pairs[d] for d in dims)
    values = scope.split("/")
    if len(values) != len(dims) or not all(values):
        raise BadRequest(f"budget {budget.name!r} is scoped by {dims}: give {'/'.join(dims)}")
    return scope


def set_budget_amount(handler: _Handler, url: SplitResult, query: dict[str, str]) -> None:
    if not authorize(handler):
        return
    rest = url.path[len("/budgets/") :].strip("/")
    name, _, scope = rest.partition("/")
    name, scope = unquote(name), unquote(scope)
    view = liveview.current()
    budgets = {b.name: b for b in (view.config.budgets if view.config is not None else [])}
    if name not in budgets:
        handler._json(404, {"error": f"no budget {name!r}"})
        return
    try:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(min(length, 65536)) if length > 0 else b""
        request = BudgetAmountRequest.model_validate_json(raw or b"{}")
        key = amount_key(budgets[name], scope or "*")
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        handler._json(400, {"error": problems})
        return
    except (BadRequest, ValueError) as error:
        handler._json(400, {"error": str(error)})
        return
    previous = _amount_in_force(view, budgets[name], key)
    setting = view.set_budget_amount(name, key, request.amount_usd)
    log.info(
        "budget amount set",
        budget=name,
        scope=key,
        amount_usd=request.amount_usd,
        previous_usd=previous,
        reason=request.reason,
        client=handler.client_address[0],
        forwarded=query.get("local") == "1",
    )
    applied = _wait_applied(view, name, key, setting)
    extra: dict[str, Any] = {}
    if query.get("local") != "1" and handler.server.peers:
        applied = _forward(handler, url, raw, extra) and applied
    body = BudgetAmountResponse(
        budget=name,
        scope=key,
        amount_usd=request.amount_usd,
        previous_usd=previous,
        set_at=rfc3339(setting[1]),
        applied=applied,
        **extra,
    )
    handler._json(200, body.model_dump(exclude_none=True))


def _amount_in_force(view: liveview.LiveView, budget: Any, key: str) -> float:
    for picture in view.pictures():
        settings = picture.get("budget_overrides", {}).get(budget.name, {})
        if key in settings:
            return settings[key][0]
        if key != "*" and key not in budget.overrides and "*" in settings:
            return settings["*"][0]
    if key != "*" and key in budget.overrides:
        return budget.overrides[key]
    return budget.amount_usd


def _wait_applied(
    view: liveview.LiveView, name: str, key: str, setting: tuple[float, float]
) -> bool:
    """Whether every shard of this process has taken a snapshot holding the setting."""
    interval = view.config.engine.snapshot_interval if view.config is not None else 5.0
    deadline = time.monotonic() + max(APPLY_TIMEOUT, min(2 * interval + 1, 30))
    while time.monotonic() < deadline:
        pictures = view.pictures()
        held = [p.get("snapshotted_overrides", {}).get(name, {}).get(key) for p in pictures]
        if pictures and all(h is not None and h[1] >= setting[1] for h in held):
            return True
        time.sleep(0.05)
    return False


def _forward(handler: _Handler, url: SplitResult, body: bytes, extra: dict[str, Any]) -> bool:
    """The same change on every other process (``?local=1``); whether all applied it."""
    applied, unreachable = True, []
    local = "&".join(filter(None, [url.query, "local=1"]))
    for peer in handler.server.peers:
        request = Request(
            f"http://{peer}{url.path}?{local}",
            data=body,
            method="PUT",
            headers={
                "Authorization": handler.headers.get("Authorization", ""),
                "Content-Type": "application/json",
            },
        )
        try:
            with urlopen(request, timeout=APPLY_TIMEOUT + 2) as reply:
                applied = bool(orjson.loads(reply.read()).get("applied")) and applied
        except (HTTPError, OSError, ValueError):
            unreachable.append(peer)
    extra["processes"] = 1 + len(handler.server.peers) - len(unreachable)
    if unreachable:
        extra["unreachable"] = unreachable
    return applied and not unreachable


# -- GET /openapi.json -----------------------------------------------------------------------


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def openapi() -> dict[str, Any]:
    models = [
        CostsResponse,
        UnitCostsResponse,
        AnomaliesResponse,
        BudgetsResponse,
        BudgetAmountRequest,
        BudgetAmountResponse,
        StatusResponse,
        SilencesResponse,
        ErrorResponse,
    ]
    _, schemas = models_json_schema(
        [(m, "serialization" if m is not BudgetAmountRequest else "validation") for m in models],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )

    def answer(model: type[BaseModel], description: str = "OK") -> dict[str, Any]:
        return {
            "description": description,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }

    error = answer(ErrorResponse, "bad request")
    selection = [
        _query(
            "rule", "rule whose scopes to show (default: the coarsest one covering the filters)"
        ),
        _query("from", "RFC 3339, or a duration before the latest data (24h)"),
        _query("to", "RFC 3339 or a duration before the latest data (default: the latest)"),
        _query("window", "range when from is not given (default 24h)"),
        _query("step", "duration, a multiple of the rule's series step"),
        _query("local", "1: this process's shards only", {"type": "string", "enum": ["1"]}),
        {
            "name": "filters",
            "in": "query",
            "style": "form",
            "explode": True,
            "description": "dimension=value filters, e.g. tenant=acme&feature=chat",
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "spendwatch", "version": __version__},
        "paths": {
            "/costs": {
                "get": {
                    "summary": "spend, requests, tokens and cost per request of rule scopes",
                    "parameters": selection,
                    "responses": {"200": answer(CostsResponse), "400": error},
                }
            },
            "/unit-costs": {
                "get": {
                    "summary": "cost and tokens per request of rule scopes",
                    "parameters": selection,
                    "responses": {"200": answer(UnitCostsResponse), "400": error},
                }
            },
            "/anomalies": {
                "get": {
                    "summary": "open and recent anomaly episodes with drivers and status",
                    "parameters": [
                        _query("status", "firing or resolved", {"enum": ["firing", "resolved"]}),
                        _query("rule", "only this rule"),
                        _query("limit", "at most this many (default 200)", {"type": "integer"}),
                    ],
                    "responses": {"200": answer(AnomaliesResponse), "400": error},
                }
            },
            "/status.json": {
                "get": {
                    "summary": "what the status page shows beside budgets and anomalies: "
                    "silences, delivery health per receiver, watermark",
                    "responses": {"200": answer(StatusResponse)},
                }
            },
            "/silences": {
                "get": {
                    "summary": "silences of the config and those set from Slack messages",
                    "responses": {"200": answer(SilencesResponse)},
                }
            },
            "/budgets": {
                "get": {
                    "summary": "every open budget period per scope",
                    "responses": {"200": answer(BudgetsResponse)},
                }
            },
            "/budgets/{name}/{scope}": {
                "put": {
                    "summary": "set a budget's amount at run time (kept across restarts)",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "scope",
                            "in": "path",
                            "required": True,
                            "description": "'*' (default amount), scope_by values joined "
                            "by '/', or dim=value pairs",
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/BudgetAmountRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": answer(BudgetAmountResponse),
                        "400": error,
                        "401": answer(ErrorResponse, "no bearer token"),
                        "403": answer(ErrorResponse, "wrong token, or no server.api_token"),
                        "404": answer(ErrorResponse, "no such budget"),
                    },
                }
            },
        },
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


# -- GET /status.json (the status page's data beside /budgets and /anomalies) -----------------


class SilenceOut(BaseModel):
    match: dict[str, Any]
    start: str
    end: str
    reason: str
    created_by: str | None = None
    source: Literal["config", "slack"] = Field(
        default="config", description="in the config file, or set from a Slack message"
    )
    active: bool = Field(description="the watermark is inside [start, end)")


class SilencesResponse(BaseModel):
    silences: list[SilenceOut] = Field(description="the config's, then those set from Slack")


class ReceiverHealth(BaseModel):
    receiver: str
    type: str | None = None
    sent: int = 0
    retry: int = 0
    failed: int = 0
    expired: int = 0
    pending: int = 0
    status: Literal["ok", "retrying", "failing", "idle"]


class StatusResponse(BaseModel):
    version: str
    ready: bool
    watermark: str | None
    silences: list[SilenceOut]
    deliveries: list[ReceiverHealth]
    processes: int | None = None
    unreachable: list[str] | None = None


def _delivery_rows(config: Any) -> list[dict[str, Any]]:
    from spendwatch.notifiers.outbox import DELIVERIES, PENDING

    rows: dict[str, dict[str, Any]] = {}
    for receiver in getattr(config, "receivers", []) or []:
        rows[receiver.name] = {"receiver": receiver.name, "type": receiver.type}
    for metric in DELIVERIES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                row = rows.setdefault(
                    sample.labels["receiver"], {"receiver": sample.labels["receiver"]}
                )
                outcome = sample.labels["outcome"]
                row[outcome] = row.get(outcome, 0) + int(sample.value)
    for metric in PENDING.collect():
        for sample in metric.samples:
            row = rows.setdefault(
                sample.labels["receiver"], {"receiver": sample.labels["receiver"]}
            )
            row["pending"] = row.get("pending", 0) + int(sample.value)
    return list(rows.values())


def _health(row: Mapping[str, Any]) -> str:
    if row.get("failed", 0) or row.get("expired", 0):
        return "failing"
    if row.get("retry", 0) and row.get("pending", 0):
        return "retrying"
    return "ok" if row.get("sent", 0) else "idle"


def silences_of(view: liveview.LiveView) -> list[SilenceOut]:
    """The config's silences, then those set from Slack (kept in the outbox); ``active``
    when the watermark is inside (or, before any data, the wall clock)."""
    configured = list(getattr(view.config, "silences", []) or [])
    outbox = view.outbox
    stored = outbox.stored_silences() if outbox is not None else []
    mark = view.watermark()
    rows = []
    for silence, source in [*((s, "config") for s in configured), *((s, "slack") for s in stored)]:
        start, end = silence.start.timestamp(), silence.end.timestamp()
        moment = mark if mark is not None and source == "config" else max(mark or 0, time.time())
        rows.append(
            SilenceOut(
                match=silence.match.model_dump(exclude_defaults=True),
                start=rfc3339(start),
                end=rfc3339(end),
                reason=silence.reason,
                created_by=silence.created_by,
                source=source,
                active=(mark is not None or source == "slack") and start <= moment < end,
            )
        )
    return rows


def status(handler: _Handler, url: SplitResult, query: dict[str, str]) -> None:
    view = liveview.current()
    config = view.config
    own = _delivery_rows(config)
    rows, extra, _ = handler._gather(url, query, "deliveries", own)
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        into = merged.setdefault(row["receiver"], {"receiver": row["receiver"]})
        for key, value in row.items():
            if isinstance(value, int) and not isinstance(value, bool):
                into[key] = into.get(key, 0) + value
            elif key == "type" and value:
                into["type"] = value
    mark = view.watermark()
    silences = silences_of(view)
    deliveries = [ReceiverHealth(**row, status=_health(row)) for _, row in sorted(merged.items())]
    body = StatusResponse(
        version=__version__,
        ready=view.ready.is_set(),
        watermark=None if mark is None else rfc3339(mark),
        silences=silences,
        deliveries=deliveries,
        **extra,
    )
    # a peer asked with ?local=1 answers its raw rows, merged by the asking process
    answer = body.model_dump(exclude_none=True)
    if query.get("local") == "1":
        answer["deliveries"] = own
    handler._json(200, answer)
