"""A parameterised family of LLM usage streams with labelled incidents and normal changes.

``draw(seed, options)`` draws one scenario's *spec* (tenants, features, prompts, models,
rates, noise, incidents, normal changes); ``render(spec)`` turns it into usage events
(numpy, one array per column) and ``Stream.write`` into JSONL (usage-event contract v1).
Everything is seeded: the same seed and options give the same bytes.

What a scenario holds:

* tenants (3–6) using 2–4 product features each; a (tenant, feature) scope has a mean
  rate drawn log-uniformly from 1 to 3,000 requests/h, one model (the feature's default
  or, on a premium plan, another) and the feature's shared prompts (split by a Dirichlet
  draw) or a prompt of its own;
* per (tenant, feature) hourly overdispersion: Poisson, or a gamma multiplier of random
  shape (1.5–200; CV 0.8–0.07 per hour); per tenant a diurnal cycle (peak hour, trough,
  sharpness) and a weekend factor, in its own time zone;
* per request heavy-tailed tokens: log-normal input and output (sigma 0.4–1.0 and
  0.7–1.2) plus a rare tail of 10–30× the median output; or, on the ``azure``
  background, (context, generated) pairs resampled from the real Azure trace and its
  minute-by-minute arrival pattern (see ``AZURE_TRACE``);
* incidents at any time after the warm-up, on scopes of any size, ×1.5–×10:
  ``token_regression`` (a prompt's output tokens per request ×k for 3–24 h),
  ``request_loop`` (a tenant feature's rate ×k for 1–4 h), ``model_switch`` (a tenant
  feature silently moved to a pricier model, unit cost ×k, for 3–24 h) and
  ``spend_spike`` (a tenant's or tenant feature's spend ×k for 0.5–3 h, by both more
  requests and longer requests);
* normal changes that must not page: a ``launch`` (one tenant feature's volume doubling
  over a day, then staying), a ``drift`` (one tenant growing 3 % a day) and a ``holiday``
  (one day at 30 % of the usual volume for everybody).

Events: a scope whose rate is below one request per ``bucket`` seconds writes one event
per request; busier ones write one pre-aggregated event (``requests`` > 1, summed
tokens) per bucket and model. Buckets nest in the detectors' windows, so every window
sum is what per-request events would give, while a scenario stays under ``max_events``.

Labelled items never overlap in time when a rule scoped on tenant, model or prompt
could see both (a holiday touches everything), so an alert matches at most the item
whose traffic it saw.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from spendwatch.detectors import sequential
from spendwatch.detectors.robust_seasonal import RobustSeasonalConfig

DAY = 86400
HOUR = 3600
REPO = Path(__file__).resolve().parents[1]
AZURE_TRACE = REPO.parent / "shared" / "real" / "azure_llm_inference_code_2023.csv"
"""One hour of real LLM inference requests (code completion) in Azure on 2023-11-16,
``TIMESTAMP,ContextTokens,GeneratedTokens``, 8,818 rows. CC BY 4.0, Azure Public Dataset,
from "Splitwise: Efficient generative LLM inference using phase splitting" (ISCA 2024)."""

GRACE = 2 * HOUR
"""An alert starting up to this long after an incident's (matched part's) end matches it."""
HORIZON = 6 * HOUR
"""A lasting incident matches alerts for its first six hours only (later ones re-alert)."""

MODELS = {  # name: (provider, input, output) in USD per million tokens (list prices)
    "gpt-4.1-nano": ("openai", 0.10, 0.40),
    "gpt-4o-mini": ("openai", 0.15, 0.60),
    "gpt-4.1-mini": ("openai", 0.40, 1.60),
    "claude-3-5-haiku": ("anthropic", 0.80, 4.00),
    "o4-mini": ("openai", 1.10, 4.40),
    "gemini-1.5-pro": ("google", 1.25, 5.00),
    "gpt-4.1": ("openai", 2.00, 8.00),
    "gpt-4o": ("openai", 2.50, 10.0),
    "claude-3-7-sonnet": ("anthropic", 3.00, 15.0),
    "claude-opus-4": ("anthropic", 15.0, 75.0),
}
DEFAULT_MODEL_WEIGHTS = (4, 4, 3, 2, 2, 1, 2, 2, 2, 0)  # features rarely default to Opus
TENANT_NAMES = (
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "aperture",
)
FEATURES = ("chat", "search", "summarize", "agent", "extract", "classify", "codegen", "translate")
PROMPT_VARIANTS = ("long", "fast", "json", "tools", "followup")
INCIDENT_TYPES = ("token_regression", "request_loop", "model_switch", "spend_spike")
CHANGE_TYPES = ("launch", "drift", "holiday")
RATE_BANDS = (
    (0.0, 5.0, "<5/h"),
    (5.0, 20.0, "5-20/h"),
    (20.0, 200.0, "20-200/h"),
    (200.0, math.inf, ">200/h"),
)
EFFECT_BANDS = ((0.0, 2.0, "<2"), (2.0, 3.0, "2-3"), (3.0, math.inf, ">=3"))
TOUCH_DIMS = ("tenant", "model", "prompt_id")
"""Items sharing a value of one of these may be seen by the same rule scope."""


@dataclass(frozen=True)
class FamilyOptions:
    days: int = 21
    warmup_days: int = 14
    tenants: tuple[int, int] = (3, 6)
    features_per_tenant: tuple[int, int] = (2, 4)
    incidents: int = 6
    rate_range: tuple[float, float] = (1.0, 3000.0)
    max_events: int = 300_000
    background: str = "mixed"
    """``family`` (synthetic tokens), ``azure`` (the real trace's tokens and arrivals) or
    ``mixed`` (odd seeds on the Azure background)."""
    windows: tuple[int, ...] = (900,)
    """The detectors' windows: aggregation buckets must nest in every one of them."""


QUICK = FamilyOptions(
    days=18, tenants=(2, 3), features_per_tenant=(2, 3), incidents=4, max_events=100_000
)


def rate_band(rate: float) -> str:
    return next(name for lo, hi, name in RATE_BANDS if lo <= rate < hi)


def effect_band(effect: float) -> str:
    return next(name for lo, hi, name in EFFECT_BANDS if lo <= effect < hi)


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    in_median: float
    in_sigma: float
    out_median: float
    out_sigma: float
    tail_p: float
    tail_x: float
    in_scale: float  # azure background: scales of the resampled trace pairs
    out_scale: float

    def mean_tokens(self, background: str) -> tuple[float, float]:
        if background == "azure":
            trace = azure_trace()
            return trace.mean_context * self.in_scale, trace.mean_generated * self.out_scale
        mean_in = self.in_median * math.exp(self.in_sigma**2 / 2)
        mean_out = self.out_median * math.exp(self.out_sigma**2 / 2)
        return mean_in, mean_out * (1 + self.tail_p * (self.tail_x - 1))


@dataclass(frozen=True)
class Shape:
    """A tenant's load over the week: diurnal bump, trough, weekend, time zone."""

    peak_hour: float
    trough: float
    sharpness: float
    weekend: float
    tz_hours: int


@dataclass(frozen=True)
class Leaf:
    """One series of requests: a tenant feature's prompt on its model."""

    tenant: str
    feature: str
    prompt_id: str
    model: str
    rate: float  # mean requests per hour over a week

    def dims(self, model: str | None = None) -> dict[str, str]:
        return {
            "tenant": self.tenant,
            "feature": self.feature,
            "model": model or self.model,
            "prompt_id": self.prompt_id,
        }


@dataclass
class Item:
    """A labelled incident or normal change."""

    id: str
    type: str
    scope: dict[str, str]
    start: float  # onset
    end: float  # when the change stops (stream end for lasting normal changes)
    effect: float
    leaves: list[int]  # indexes of the spec's leaves it changes
    detail: dict[str, Any] = field(default_factory=dict)
    label_end: float = 0.0  # incidents: end of the matched part + GRACE; changes: attribution
    scope_rate: float = 0.0
    onset_rate: float = 0.0
    is_global: bool = False

    @property
    def incident(self) -> bool:
        return self.type in INCIDENT_TYPES


@dataclass
class Spec:
    seed: int
    background: str
    start: float
    days: int
    warmup_days: int
    bucket: int
    shapes: dict[str, Shape]
    dispersion: dict[tuple[str, str], float]  # gamma shape per tenant feature; 0 = Poisson
    prompts: dict[str, Prompt]
    leaves: list[Leaf]
    incidents: list[Item] = field(default_factory=list)
    changes: list[Item] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.start + self.days * DAY

    @property
    def warmup_end(self) -> float:
        return self.start + self.warmup_days * DAY

    def scopes(self) -> dict[tuple[str, str], list[int]]:
        """Leaf indexes of each tenant feature."""
        out: dict[tuple[str, str], list[int]] = {}
        for i, leaf in enumerate(self.leaves):
            out.setdefault((leaf.tenant, leaf.feature), []).append(i)
        return out

    def leaves_of(self, scope: dict[str, str]) -> list[int]:
        return [
            i
            for i, leaf in enumerate(self.leaves)
            if all(leaf.dims()[k] == v for k, v in scope.items())
        ]


# ----------------------------------------------------------------------------------------
# The real Azure trace


@dataclass(frozen=True)
class AzureTrace:
    context: np.ndarray
    generated: np.ndarray
    minute_profile: np.ndarray  # requests per full minute over their mean (mean 1)
    mean_context: float
    mean_generated: float


@functools.lru_cache(maxsize=1)
def azure_trace(path: str = str(AZURE_TRACE)) -> AzureTrace:
    rows = Path(path).read_text().splitlines()[1:]
    seconds = np.empty(len(rows))
    context = np.empty(len(rows), dtype=np.int64)
    generated = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        stamp, ctx, gen = row.split(",")
        hh, mm, ss = stamp.split(" ")[1].split(":")
        seconds[i] = int(hh) * 3600 + int(mm) * 60 + float(ss)
        context[i], generated[i] = int(ctx), int(gen)
    offsets = seconds - seconds.min()
    full = int(offsets.max() // 60)  # the last, partial minute is left out
    per_minute = np.bincount((offsets // 60).astype(np.int64), minlength=full + 1)[:full]
    return AzureTrace(
        context,
        generated,
        per_minute / per_minute.mean(),
        float(context.mean()),
        float(generated.mean()),
    )


# ----------------------------------------------------------------------------------------
# Drawing a scenario


def unit_cost(prompts: Iterable[tuple[Prompt, float]], model: str, background: str) -> float:
    """Mean USD per request of a rate-weighted mix of prompts on ``model``."""
    _, p_in, p_out = MODELS[model]
    total = weight = 0.0
    for prompt, rate in prompts:
        mean_in, mean_out = prompt.mean_tokens(background)
        total += rate * (mean_in * p_in + mean_out * p_out) / 1e6
        weight += rate
    return total / weight if weight else 0.0


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _prompt(rng: np.random.Generator, prompt_id: str) -> Prompt:
    return Prompt(
        prompt_id,
        in_median=_log_uniform(rng, 100, 6000),
        in_sigma=float(rng.uniform(0.4, 1.0)),
        out_median=_log_uniform(rng, 20, 800),
        out_sigma=float(rng.uniform(0.7, 1.2)),
        tail_p=float(rng.uniform(0.0, 0.02)),
        tail_x=float(rng.uniform(10, 30)),
        in_scale=_log_uniform(rng, 0.5, 2.0),
        out_scale=_log_uniform(rng, 0.5, 2.0),
    )


def bucket_seconds(windows: Sequence[int]) -> list[int]:
    """Aggregation buckets that nest in every window, smallest first."""
    g = 0
    for w in windows:
        g = math.gcd(g, int(w))
    return [b for b in (60, 300, 900, 1800, 3600) if g % b == 0] or [1]


def _choose_bucket(leaves: Sequence[Leaf], days: int, options: FamilyOptions) -> int:
    candidates = bucket_seconds(options.windows)
    for bucket in candidates:
        estimate = sum(
            leaf.rate * 24 * days if leaf.rate * bucket < HOUR else days * DAY / bucket
            for leaf in leaves
        )
        if estimate <= options.max_events:
            return bucket
    return candidates[-1]


def background_of(seed: int, options: FamilyOptions) -> str:
    if options.background == "mixed":
        return "azure" if seed % 2 else "family"
    if options.background not in ("family", "azure"):
        raise ValueError(f"unknown background {options.background!r}")
    return options.background


def draw(seed: int, options: FamilyOptions = FamilyOptions()) -> Spec:
    """One scenario of the family: structure, normal changes and incidents."""
    if options.days - options.warmup_days < 2:
        raise ValueError("a scenario needs at least two days after the warm-up")
    rng = np.random.default_rng([seed, 1])
    background = background_of(seed, options)
    monday = datetime(2026, 1, 5, tzinfo=timezone.utc)
    start = (monday + timedelta(days=int(rng.integers(0, 7)))).timestamp()
    base_peak = rng.uniform(0, 24)
    tenants = list(
        rng.permutation(TENANT_NAMES)[: int(rng.integers(*options.tenants, endpoint=True))]
    )
    shapes = {}
    for tenant in tenants:
        peak = float((base_peak + rng.normal(0, 3)) % 24)
        shapes[tenant] = Shape(
            peak_hour=peak,
            trough=float(rng.uniform(0.05, 0.7)),
            sharpness=float(rng.uniform(1, 3)),
            weekend=float(rng.uniform(0.25, 1.0)),
            tz_hours=round(peak - 15) % 24,
        )
    weights = np.array(DEFAULT_MODEL_WEIGHTS, dtype=float)
    names = list(MODELS)
    default_model = {f: names[rng.choice(len(names), p=weights / weights.sum())] for f in FEATURES}
    prompts: dict[str, Prompt] = {}
    shared: dict[str, list[str]] = {}
    for feature in FEATURES:
        ids = [f"{feature}@v{rng.integers(1, 9)}"]
        if rng.random() < 0.5:
            variant = PROMPT_VARIANTS[int(rng.integers(len(PROMPT_VARIANTS)))]
            ids.append(f"{feature}-{variant}@v{rng.integers(1, 9)}")
        shared[feature] = ids
        for prompt_id in ids:
            prompts[prompt_id] = _prompt(rng, prompt_id)
    leaves: list[Leaf] = []
    dispersion: dict[tuple[str, str], float] = {}
    lo, hi = options.rate_range
    for tenant in tenants:
        count = int(rng.integers(*options.features_per_tenant, endpoint=True))
        for feature in rng.permutation(FEATURES)[:count]:
            feature = str(feature)
            rate = _log_uniform(rng, lo, hi)
            model = default_model[feature]
            if rng.random() < 0.2:  # a premium plan on another model
                model = names[int(rng.integers(len(names) - 1))]
            dispersion[(tenant, feature)] = (
                0.0 if rng.random() < 0.3 else _log_uniform(rng, 1.5, 200.0)
            )
            if rng.random() < 0.25:  # the tenant's own prompt
                ids = [f"{tenant}-{feature}@v{rng.integers(1, 5)}"]
                prompts[ids[0]] = _prompt(rng, ids[0])
            else:
                ids = shared[feature]
            split = rng.dirichlet(np.ones(len(ids)) * 2.0) if len(ids) > 1 else [1.0]
            for prompt_id, share in zip(ids, split, strict=True):
                leaves.append(Leaf(tenant, feature, prompt_id, model, rate * float(share)))
    used = {leaf.prompt_id for leaf in leaves}
    prompts = {k: v for k, v in prompts.items() if k in used}
    spec = Spec(
        seed=seed,
        background=background,
        start=start,
        days=options.days,
        warmup_days=options.warmup_days,
        bucket=_choose_bucket(leaves, options.days, options),
        shapes=shapes,
        dispersion=dispersion,
        prompts=prompts,
        leaves=leaves,
    )
    _draw_changes(spec, rng)
    kinds = list(rng.permutation(INCIDENT_TYPES))
    while len(kinds) < options.incidents:
        kinds.append(str(rng.choice(INCIDENT_TYPES)))
    for kind in kinds[: options.incidents]:
        for _ in range(400):
            item = _draw_incident(spec, str(kind), rng)
            if item is not None and not _conflicts(spec, item):
                add_incident(spec, item)
                break
    return spec


def _draw_changes(spec: Spec, rng: np.random.Generator) -> None:
    w0, end = spec.warmup_end, spec.end
    day = int(rng.integers(spec.warmup_days, spec.days))  # a calendar day after the warm-up
    holiday_start = spec.start + day * DAY
    spec.changes.append(
        Item(
            "holiday",
            "holiday",
            {},
            holiday_start,
            holiday_start + DAY,
            0.3,
            list(range(len(spec.leaves))),
            label_end=holiday_start + DAY + 12 * HOUR,
            is_global=True,
        )
    )
    scopes = list(spec.scopes())
    tenant = str(rng.choice(sorted(spec.shapes)))
    drift_start = w0 - float(rng.uniform(0, 3)) * DAY
    spec.changes.append(
        Item(
            "drift",
            "drift",
            {"tenant": tenant},
            drift_start,
            end,
            1.03,
            spec.leaves_of({"tenant": tenant}),
            label_end=end,
        )
    )
    t, f = scopes[int(rng.integers(len(scopes)))]
    launch = float(rng.uniform(w0, max(w0, end - 1.5 * DAY)))  # normal changes may overlap
    spec.changes.append(
        Item(
            "launch",
            "launch",
            {"tenant": t, "feature": f},
            launch,
            end,
            2.0,
            spec.leaves_of({"tenant": t, "feature": f}),
            label_end=min(end, launch + 3 * DAY),
        )
    )
    for item in spec.changes:
        _label_rates(spec, item)


def _draw_incident(spec: Spec, kind: str, rng: np.random.Generator) -> Item | None:
    effect = _log_uniform(rng, 1.5, 10.0)
    scopes = list(spec.scopes())
    detail: dict[str, Any] = {}
    if kind == "token_regression":
        scope = {"prompt_id": str(rng.choice(sorted(spec.prompts)))}
        duration = _log_uniform(rng, 3 * HOUR, 24 * HOUR)
        detail["output_tokens_x"] = effect
    elif kind == "request_loop":
        t, f = scopes[int(rng.integers(len(scopes)))]
        scope = {"tenant": t, "feature": f}
        duration = float(rng.uniform(1, 4)) * HOUR
        detail["requests_x"] = effect
    elif kind == "model_switch":
        t, f = scopes[int(rng.integers(len(scopes)))]
        scope = {"tenant": t, "feature": f}
        picked = _pricier_model(spec, scope, effect)
        if picked is None:
            return None
        detail["model_from"], detail["model_to"], effect = picked
        duration = _log_uniform(rng, 3 * HOUR, 24 * HOUR)
    elif kind == "spend_spike":
        if rng.random() < 0.5:
            scope = {"tenant": str(rng.choice(sorted(spec.shapes)))}
        else:
            t, f = scopes[int(rng.integers(len(scopes)))]
            scope = {"tenant": t, "feature": f}
        duration = float(rng.uniform(0.5, 3)) * HOUR
        share = float(rng.uniform(0, 1))
        detail["requests_x"] = effect**share
        detail["tokens_x"] = effect ** (1 - share)
    else:
        raise ValueError(f"unknown incident type {kind!r}")
    latest = spec.end - min(duration, HORIZON) - GRACE
    if latest <= spec.warmup_end:
        return None
    onset = float(rng.uniform(spec.warmup_end, latest))
    return make_incident(spec, kind, scope, onset, duration, effect, detail)


def make_incident(
    spec: Spec,
    kind: str,
    scope: dict[str, str],
    onset: float,
    duration: float,
    effect: float,
    detail: dict[str, Any] | None = None,
) -> Item:
    """An incident on ``scope`` (its label fields filled in); ``add_incident`` plants it.

    ``detail`` defaults from the type: ``output_tokens_x`` / ``requests_x`` = effect;
    a model switch needs ``model_to`` (``effect`` is then recomputed from the prices).
    """
    detail = dict(detail or {})
    if kind == "token_regression":
        detail.setdefault("output_tokens_x", effect)
    elif kind == "request_loop":
        detail.setdefault("requests_x", effect)
    elif kind == "spend_spike":
        detail.setdefault("requests_x", effect)
        detail.setdefault("tokens_x", effect / detail["requests_x"])
    elif kind == "model_switch":
        leaves = spec.leaves_of(scope)
        detail.setdefault("model_from", spec.leaves[leaves[0]].model)
        mix = [(spec.prompts[spec.leaves[i].prompt_id], spec.leaves[i].rate) for i in leaves]
        effect = unit_cost(mix, detail["model_to"], spec.background) / unit_cost(
            mix, detail["model_from"], spec.background
        )
    end = min(onset + duration, spec.end)
    item = Item(
        id="",
        type=kind,
        scope=dict(scope),
        start=onset,
        end=end,
        effect=float(effect),
        leaves=spec.leaves_of(scope),
        detail=detail,
        label_end=min(end, onset + HORIZON) + GRACE,
    )
    _label_rates(spec, item)
    return item


def add_incident(spec: Spec, item: Item) -> None:
    item.id = f"s{spec.seed}-i{len(spec.incidents)}"
    spec.incidents.append(item)


def _pricier_model(
    spec: Spec, scope: dict[str, str], target: float
) -> tuple[str, str, float] | None:
    leaves = spec.leaves_of(scope)
    current = spec.leaves[leaves[0]].model
    mix = [(spec.prompts[spec.leaves[i].prompt_id], spec.leaves[i].rate) for i in leaves]
    base = unit_cost(mix, current, spec.background)
    best = None
    for model in MODELS:
        ratio = unit_cost(mix, model, spec.background) / base
        if 1.5 <= ratio <= 10.0:
            gap = abs(math.log(ratio / target))
            if best is None or gap < best[0]:
                best = (gap, model, ratio)
    return None if best is None else (current, best[1], best[2])


def _touches(spec: Spec, item: Item) -> set[tuple[str, str]]:
    out = set()
    for i in item.leaves:
        dims = spec.leaves[i].dims()
        out.update((d, dims[d]) for d in TOUCH_DIMS)
    if item.type == "model_switch":
        out.add(("model", item.detail["model_to"]))
    return out


def _occupied(item: Item) -> tuple[float, float]:
    """When no other item may touch the same tenants, models or prompts."""
    if item.incident:
        return item.start - HOUR, item.end + GRACE
    if item.type == "launch":  # the ramp day and the next (its alerts are counted for 3 days)
        return item.start, min(item.label_end, item.start + 2 * DAY)
    return item.start, item.label_end


def _conflicts(spec: Spec, item: Item) -> bool:
    lo, hi = _occupied(item)
    mine = _touches(spec, item)
    for other in [*spec.changes, *spec.incidents]:
        if other.type == "drift":
            continue  # a slow drift is everywhere on its tenant; it must not page either
        a, b = _occupied(other)
        if (
            a < hi
            and lo < b
            and (item.is_global or other.is_global or mine & _touches(spec, other))
        ):
            return True
    return False


# ----------------------------------------------------------------------------------------
# Load shapes


def load_profile(shape: Shape, minute_starts: np.ndarray, week_start: float) -> np.ndarray:
    """Relative load per minute: mean 1 over a week."""

    def raw(t: np.ndarray) -> np.ndarray:
        local = t + shape.tz_hours * HOUR
        hour = (local % DAY) / HOUR
        bump = ((1 + np.cos((hour - shape.peak_hour) / 24 * 2 * np.pi)) / 2) ** shape.sharpness
        weekday = ((local // DAY).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
        return (shape.trough + (1 - shape.trough) * bump) * np.where(
            weekday >= 5, shape.weekend, 1.0
        )

    week = week_start + 60.0 * np.arange(7 * 1440) + 30
    return raw(minute_starts + 30) / raw(week).mean()


def _fraction(lo: float, hi: float, minute_starts: np.ndarray) -> np.ndarray:
    """Share of each minute inside [lo, hi)."""
    return np.clip((np.minimum(hi, minute_starts + 60) - np.maximum(lo, minute_starts)) / 60, 0, 1)


def change_factor(item: Item, t: np.ndarray) -> np.ndarray:
    if item.type == "holiday":
        return 1 - (1 - item.effect) * _fraction(item.start, item.end, t)
    if item.type == "drift":
        return item.effect ** np.clip((t - item.start) / DAY, 0, None)
    if item.type == "launch":
        return 1 + (item.effect - 1) * np.clip((t - item.start) / DAY, 0, 1)
    raise ValueError(item.type)


def _label_rates(spec: Spec, item: Item) -> None:
    """Mean requests/h of the item's scope, and the expected rate at its onset."""
    item.scope_rate = float(sum(spec.leaves[i].rate for i in item.leaves))
    at = np.array([item.start - 30.0])
    onset = 0.0
    for i in item.leaves:
        leaf = spec.leaves[i]
        value = leaf.rate * load_profile(spec.shapes[leaf.tenant], at, spec.start)[0]
        for change in spec.changes:
            if change is not item and i in change.leaves:
                value *= float(change_factor(change, at)[0])
        onset += value
    item.onset_rate = float(onset)


# ----------------------------------------------------------------------------------------
# Rendering


@dataclass
class Stream:
    """The events of one scenario, as columns, and what the labels and baselines need."""

    spec: Spec
    ts: np.ndarray
    series: np.ndarray  # index into ``series_dims``
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    requests: np.ndarray
    series_dims: list[dict[str, str]]
    series_rates: list[float]  # mean requests/h of the series (0 for a switched-to model)
    hourly_spend: np.ndarray  # [series, hour] USD
    total_requests: int

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def write(self, path: str | Path) -> None:
        millis = (self.ts * 1000).astype(np.int64).astype("datetime64[ms]")
        stamps = np.datetime_as_string(millis, unit="ms")
        bases = [{**dims, "provider": MODELS[dims["model"]][0]} for dims in self.series_dims]
        dumps = orjson.dumps
        prefix = f"s{self.spec.seed}-"
        series = self.series.tolist()
        inputs = self.input_tokens.tolist()
        outputs = self.output_tokens.tolist()
        requests = self.requests.tolist()
        with open(path, "wb") as handle:
            chunk = []
            for i, stamp in enumerate(stamps.tolist()):
                event = {"event_id": prefix + str(i), "ts": stamp + "Z", **bases[series[i]]}
                event["input_tokens"] = inputs[i]
                event["output_tokens"] = outputs[i]
                if requests[i] > 1:
                    event["requests"] = requests[i]
                chunk.append(dumps(event))
                if len(chunk) >= 65536:
                    handle.write(b"\n".join(chunk) + b"\n")
                    chunk = []
            if chunk:
                handle.write(b"\n".join(chunk) + b"\n")

    def labels(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "seed": spec.seed,
            "background": spec.background,
            "start": spec.start,
            "warmup_end": spec.warmup_end,
            "end": spec.end,
            "days": spec.days,
            "warmup_days": spec.warmup_days,
            "bucket_seconds": spec.bucket,
            "events": len(self),
            "requests": self.total_requests,
            "series": self.series_dims,
            "series_rates": [round(r, 4) for r in self.series_rates],
            "incidents": [item_label(spec, i) for i in spec.incidents],
            "normal_changes": [item_label(spec, c) for c in spec.changes],
        }


ORACLE_SAMPLES = 20_000
"""Requests drawn (fixed seed) to measure a series' per-request token and cost spread."""
ORACLE_BANDS = ((0.0, 12.0, "<12"), (12.0, 36.0, "12-36"), (36.0, math.inf, ">=36"))
"""Oracle evidence bands in nats. About 12 nats is what any test needs at the default
budget (ln of 0.03 false alarms per scope-month of 15-minute windows ≈ 11.5); an incident
under it is within its scope's own noise for every detector, an oracle included."""
ORACLE_NEEDED = math.log(
    sequential.MONTH
    / RobustSeasonalConfig.model_fields["window"].default
    / RobustSeasonalConfig.model_fields["false_alarms_per_scope_per_month"].default
)
"""Nats the oracle must gather before it may alarm (≈ 11.47): at the detectors' default
budget a scope may raise 0.03 false alarms per month of 15-minute windows, one per ARL =
2,880 / 0.03 = 96,000 windows, and a sequential test whose false alarms are that rare
needs a log-likelihood ratio of about ln ARL (Wald's bound: the null reaches e^a with
probability at most e^−a per start). Read from the defaults of ``robust_seasonal`` (window
and budget) and ``sequential.MONTH``, so the figure follows them."""
ORACLE_STEP = 15 * 60
"""Seconds per step of the oracle's cumulative evidence (``oracle_delay``): one detector
window. Within a step the evidence is taken to grow linearly."""


@functools.lru_cache(maxsize=4096)
def _request_spread(prompt: Prompt, model: str, background: str) -> dict[str, float]:
    """Per request of a series, on a fixed-seed sample of its own token law: mean and mean
    square of spend; sd of log output tokens and of log spend; squared CV of both."""
    rng = np.random.default_rng(12345)
    inp, out = _tokens(rng, prompt, ORACLE_SAMPLES, background)
    _, price_in, price_out = MODELS[model]
    spend = (inp * price_in + out * price_out) / 1e6
    return {
        "spend": float(spend.mean()),
        "spend_square": float((spend**2).mean()),
        "log_sd_tokens": float(np.log(np.maximum(out, 1.0)).std()),
        "log_sd_spend": float(np.log(np.maximum(spend, 1e-12)).std()),
        "cv2_tokens": float(out.var() / out.mean() ** 2),
        "cv2_spend": float(spend.var() / spend.mean() ** 2),
    }


@functools.lru_cache(maxsize=1)
def _arrival_cv2(window_minutes: int = 15) -> float:
    """Squared CV of a window's share of the Azure trace's minute profile, over rotations."""
    profile = azure_trace().minute_profile
    cycle = np.concatenate([profile, profile])
    sums = np.array([cycle[r : r + window_minutes].mean() for r in range(profile.shape[0])])
    return float(sums.var() / sums.mean() ** 2)


def oracle_evidence(spec: Spec, item: Item) -> float:
    """Expected log-likelihood ratio (nats) an oracle gathers over an incident's first
    ``HORIZON``: the physical limit of detection, against which recall is read.

    The oracle knows everything a detector must learn: the incident's size, each series'
    rate, its hourly gamma noise and its per-request token law. Its evidence is the
    Kullback–Leibler divergence of the incident from the null, under a Gaussian reading of
    log values, in two independent parts: the request count of each hour (Poisson within
    each tenant feature's gamma multiplier: variance Λ + Σλ²/k), where requests multiply,
    and the size of each request (the series' spread of log output tokens or log cost),
    where tokens or prices do — per request, or per hour where the stream carries a busy
    series as bucketed sums (then only the mean of λ requests is seen, of squared CV
    cv²/λ: a heavy tail makes a mean weak evidence). On the Azure background the requests
    of each 15-minute window also carry the real trace's minute-by-minute arrival pattern,
    taken as independent from window to window (its hourly rotation makes an hour's sum
    nearly constant, an artefact no detector of real traffic could lean on). An incident
    with less evidence than a test's threshold cannot be found by any detector without
    false alarms at that budget; recall by evidence band says how far a detector is from
    the limit, which recall by effect size alone cannot.
    """
    return float(sum(nats for _, _, nats in oracle_steps(spec, item)))


def oracle_delay(spec: Spec, item: Item, needed: float = ORACLE_NEEDED) -> float | None:
    """Minutes from onset until the oracle's cumulative expected evidence (the one
    ``oracle_evidence`` sums, step by step) first reaches ``needed`` nats, interpolated
    linearly within its step; None when it stays below within the incident's first
    ``HORIZON`` (then ``oracle_evidence`` < ``needed``).

    The physical limit of detection delay: a test at the default budget needs that much
    evidence, and this is when the oracle's expected evidence has it. A detector's delay is
    longer on average twice over: it must also learn what the oracle knows, and it reads
    its evidence only when a window closes (every 15 minutes), so it alarms at a window's
    end after the crossing at best (a favourable draw of the noise may alarm earlier).
    The hour's nats accrue evenly; read as "the hour so far" under the hour's shared gamma
    multiplier, count evidence would come in sooner within an hour, but on the held-out
    seeds' ×3+ incidents of ≥ 20 requests/h that moves the median and p95 by a minute or two.
    """
    if needed <= 0:
        return 0.0
    gathered = 0.0
    for t0, t1, nats in oracle_steps(spec, item):
        if nats > 0 and gathered + nats >= needed:
            return float((t0 + (needed - gathered) / nats * (t1 - t0) - item.start) / 60)
        gathered += nats
    return None


def oracle_steps(
    spec: Spec, item: Item, step: float = ORACLE_STEP
) -> list[tuple[float, float, float]]:
    """The oracle's evidence over an incident's first ``HORIZON`` as ``(start, end, nats)``
    steps of at most ``step`` seconds from the onset.

    The evidence is read hour by hour from the onset (``_hour_evidence``: the noise it knows
    is hourly, a gamma multiplier per hour and bucketed hourly means); an hour's nats accrue
    evenly over it, each step taking its share by length (a last, partial hour its part).
    """
    end = min(item.end, item.start + HORIZON)
    shifts = _oracle_shifts(item)
    steps = []
    for h0 in np.arange(item.start, end, HOUR):
        h0 = float(h0)
        per_hour = _hour_evidence(spec, item, h0, *shifts)
        h1 = min(end, h0 + HOUR)
        for t0 in np.arange(h0, h1, step):
            t0 = float(t0)
            t1 = min(h1, t0 + step)
            steps.append((t0, t1, per_hour * (t1 - t0) / HOUR))
    return steps


def _oracle_shifts(item: Item) -> tuple[float, float, str]:
    """(ln² of the request count's factor, ln² of the request size's, the size's unit)."""
    detail = item.detail
    if item.type == "token_regression":
        count_x, size_x, unit = 1.0, detail["output_tokens_x"], "tokens"
    elif item.type == "model_switch":
        count_x, size_x, unit = 1.0, item.effect, "spend"
    else:  # a loop: more requests; a spike: more requests and longer ones
        count_x, size_x, unit = detail.get("requests_x", 1.0), detail.get("tokens_x", 1.0), "spend"
    return math.log(count_x) ** 2, math.log(size_x) ** 2, unit


def _hour_evidence(
    spec: Spec, item: Item, h0: float, count_shift: float, size_shift: float, unit: str
) -> float:
    """Nats of one full hour of the incident from ``h0``, its rates read at the hour's
    middle (the reading ``oracle_evidence`` describes)."""
    total = 0.0
    at = np.array([h0 + HOUR / 2])
    by_feature: dict[tuple[str, str], float] = {}
    for i in item.leaves:
        leaf = spec.leaves[i]
        rate = leaf.rate * load_profile(spec.shapes[leaf.tenant], at, spec.start)[0]
        for change in spec.changes:
            if i in change.leaves:
                rate *= float(change_factor(change, at)[0])
        key = (leaf.tenant, leaf.feature)
        by_feature[key] = by_feature.get(key, 0.0) + rate
        if not size_shift or rate <= 0:
            continue
        spread = _request_spread(spec.prompts[leaf.prompt_id], leaf.model, spec.background)
        if leaf.rate * spec.bucket < HOUR:  # its requests are events: each is evidence
            total += rate * size_shift / (2 * spread[f"log_sd_{unit}"] ** 2)
        else:  # bucketed sums: only the mean of the hour's requests is seen
            total += size_shift / (2 * math.log1p(spread[f"cv2_{unit}"] / rate))
    requests = sum(by_feature.values())
    if count_shift and requests > 0:
        var = requests + sum(
            r * r / spec.dispersion[key] for key, r in by_feature.items() if spec.dispersion[key]
        )
        if spec.background == "azure":  # four windows' independent arrival noise
            var += requests**2 * _arrival_cv2() / 4
        total += count_shift / (2 * math.log1p(var / requests**2))
    return float(total)


def oracle_band(nats: float) -> str:
    return next(name for lo, hi, name in ORACLE_BANDS if lo <= nats < hi)


def item_label(spec: Spec, item: Item) -> dict[str, Any]:
    """A JSON-able label: what, where (scope and the series it changed), when, how much."""
    leaves = []
    for i in item.leaves:
        leaf = spec.leaves[i]
        leaves.append(leaf.dims(item.detail.get("model_to")))
    label = {
        "id": item.id or item.type,
        "type": item.type,
        "incident": item.incident,
        "scope": item.scope,
        "leaves": leaves,
        "onset": item.start,
        "onset_time": _iso(item.start),
        "end": item.end,
        "label_end": item.label_end,
        "effect": round(item.effect, 4),
        "scope_rate": round(item.scope_rate, 3),
        "onset_rate": round(item.onset_rate, 3),
        "detail": item.detail,
    }
    if item.incident:
        label["rate_band"] = rate_band(item.scope_rate)
        label["effect_band"] = effect_band(item.effect)
        label["oracle_nats"] = round(oracle_evidence(spec, item), 2)
        label["oracle_band"] = oracle_band(label["oracle_nats"])
        delay = oracle_delay(spec, item)
        label["oracle_delay_minutes"] = None if delay is None else round(delay, 2)
    return label


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tokens(
    rng: np.random.Generator, prompt: Prompt, n: int, background: str
) -> tuple[np.ndarray, np.ndarray]:
    if background == "azure":
        trace = azure_trace()
        pick = rng.integers(0, trace.context.shape[0], n)
        return trace.context[pick] * prompt.in_scale, trace.generated[pick] * prompt.out_scale
    inp = rng.lognormal(math.log(prompt.in_median), prompt.in_sigma, n)
    out = rng.lognormal(math.log(prompt.out_median), prompt.out_sigma, n)
    out = np.where(rng.random(n) < prompt.tail_p, out * prompt.tail_x, out)
    return np.minimum(inp, 128_000), np.minimum(out, 16_000)


def render(spec: Spec) -> Stream:
    """Draw every request of the scenario and write them as (bucketed) events."""
    minutes = spec.days * 1440
    hours = spec.days * 24
    t = spec.start + 60.0 * np.arange(minutes)
    profiles = {tenant: load_profile(shape, t, spec.start) for tenant, shape in spec.shapes.items()}
    gamma = {}
    for k, (scope, shape) in enumerate(sorted(spec.dispersion.items())):
        grng = np.random.default_rng([spec.seed, 3, k])
        hourly = grng.gamma(shape, 1 / shape, hours) if shape else np.ones(hours)
        gamma[scope] = np.repeat(hourly, 60)
    arrivals = {}
    if spec.background == "azure":
        profile = azure_trace().minute_profile
        for k, tenant in enumerate(sorted(spec.shapes)):
            arng = np.random.default_rng([spec.seed, 5, k])
            rotation = np.repeat(arng.integers(0, profile.shape[0], hours), 60)
            arrivals[tenant] = profile[(np.arange(minutes) % 60 + rotation) % profile.shape[0]]
    series_index: dict[tuple[int, str], int] = {}
    series_dims: list[dict[str, str]] = []
    series_rates: list[float] = []
    hourly_rows: list[np.ndarray] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "series", "in", "out", "n")}
    total_requests = 0
    models = list(MODELS)
    price_in = np.array([MODELS[m][1] for m in models]) / 1e6
    price_out = np.array([MODELS[m][2] for m in models]) / 1e6
    for li, leaf in enumerate(spec.leaves):
        rng = np.random.default_rng([spec.seed, 7, li])
        lam = leaf.rate / 60 * profiles[leaf.tenant] * gamma[(leaf.tenant, leaf.feature)]
        if arrivals:
            lam = lam * arrivals[leaf.tenant]
        for change in spec.changes:
            if li in change.leaves:
                lam = lam * change_factor(change, t)
        mine = [item for item in spec.incidents if li in item.leaves]
        for item in mine:
            rate_x = item.detail.get("requests_x")
            if rate_x:
                lam = lam * (1 + (rate_x - 1) * _fraction(item.start, item.end, t))
        counts = rng.poisson(lam)
        n = int(counts.sum())
        total_requests += n
        minute = np.repeat(np.arange(minutes), counts)
        ts = spec.start + 60.0 * minute + rng.random(n) * 60
        inp, out = _tokens(rng, spec.prompts[leaf.prompt_id], n, spec.background)
        model = np.full(n, models.index(leaf.model))
        for item in mine:
            inside = (ts >= item.start) & (ts < item.end)
            if "output_tokens_x" in item.detail:
                out = np.where(inside, out * item.detail["output_tokens_x"], out)
            if "tokens_x" in item.detail:
                inp = np.where(inside, inp * item.detail["tokens_x"], inp)
                out = np.where(inside, out * item.detail["tokens_x"], out)
            if "model_to" in item.detail:
                model = np.where(inside, models.index(item.detail["model_to"]), model)
        inp = np.maximum(np.rint(inp), 1).astype(np.int64)
        out = np.maximum(np.rint(out), 1).astype(np.int64)
        cost = inp * price_in[model] + out * price_out[model]
        codes = np.unique(model)
        local = np.searchsorted(codes, model)
        sid = []
        for code in codes.tolist():
            key = (li, models[code])
            if key not in series_index:
                series_index[key] = len(series_dims)
                series_dims.append(leaf.dims(models[code]))
                series_rates.append(leaf.rate if models[code] == leaf.model else 0.0)
                hourly_rows.append(np.zeros(hours))
            sid.append(series_index[key])
        sid_arr = np.array(sid, dtype=np.int64)
        hour = minute // 60
        spend = np.bincount(local * hours + hour, weights=cost, minlength=len(codes) * hours)
        for j, s in enumerate(sid):
            hourly_rows[s] += spend[j * hours : (j + 1) * hours]
        if leaf.rate * spec.bucket < HOUR:  # one event per request
            parts["ts"].append(ts)
            parts["series"].append(sid_arr[local])
            parts["in"].append(inp)
            parts["out"].append(out)
            parts["n"].append(np.ones(n, dtype=np.int64))
            continue
        buckets = spec.days * DAY // spec.bucket
        key = local * buckets + ((ts - spec.start) // spec.bucket).astype(np.int64)
        size = len(codes) * buckets
        requests = np.bincount(key, minlength=size)
        used = np.nonzero(requests)[0]
        parts["ts"].append(
            spec.start + (used % buckets) * spec.bucket + rng.random(used.shape[0]) * spec.bucket
        )
        parts["series"].append(sid_arr[used // buckets])
        parts["in"].append(np.bincount(key, weights=inp, minlength=size)[used].astype(np.int64))
        parts["out"].append(np.bincount(key, weights=out, minlength=size)[used].astype(np.int64))
        parts["n"].append(requests[used])
    ts = np.concatenate(parts["ts"])
    jitter = np.random.default_rng([spec.seed, 11]).uniform(0, 20, ts.shape[0])
    order = np.argsort(ts + jitter, kind="stable")  # a little out of order, as in life
    return Stream(
        spec,
        ts[order],
        np.concatenate(parts["series"])[order],
        np.concatenate(parts["in"])[order],
        np.concatenate(parts["out"])[order],
        np.concatenate(parts["n"])[order],
        series_dims,
        series_rates,
        np.vstack(hourly_rows),
        total_requests,
    )


def with_incidents(spec: Spec, incidents: Sequence[Item]) -> Spec:
    """The same scenario with other incidents (ids renumbered)."""
    out = replace(spec, incidents=[])
    for item in incidents:
        add_incident(out, replace(item))
    return out


def spec_summary(spec: Spec) -> dict[str, Any]:
    return {
        "tenants": {t: asdict(s) for t, s in spec.shapes.items()},
        "leaves": [asdict(leaf) for leaf in spec.leaves],
    }
