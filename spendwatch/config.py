"""The YAML configuration: models, loading with ``${ENV}`` substitution, and readable errors.

Every section is a pydantic model with unknown keys forbidden; detector and
receiver sections are unions over the registries, so a new ``type:`` only needs
its own config class. Errors name the file, the line, the key path (e.g.
``detectors[2].threshold``) and the problem, never the value (it may be a secret);
a value that a ``SPENDWATCH_SECTION__KEY`` variable sets is blamed on that variable.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from spendwatch.core.configtypes import Dimension, Duration, StrictModel
from spendwatch.core.kafkaconf import KafkaSourceConfig
from spendwatch.core.timefmt import format_duration, parse_duration
from spendwatch.core.yamlload import DuplicateKeyError, YAMLLimitError, load_yaml
from spendwatch.dataflows.allocation import AllocationConfig, allocation_for
from spendwatch.detectors.base import DETECTOR_TYPES
from spendwatch.detectors.budget import BudgetConfig
from spendwatch.detectors.registry import build_detector  # noqa: F401 - registers detectors
from spendwatch.ingest.events import EventBounds
from spendwatch.ingest.focus import FocusSourceConfig
from spendwatch.ingest.jsonl import JsonlSourceConfig
from spendwatch.ingest.otlp import OtlpSourceConfig
from spendwatch.ingest.parser import ParserSettings
from spendwatch.ingest.pricing import PricingConfig
from spendwatch.notifiers.base import NOTIFIER_TYPES
from spendwatch.notifiers.console import ConsoleConfig
from spendwatch.notifiers.outbox import DeliveryConfig
from spendwatch.notifiers.registry import build_notifier  # noqa: F401 - registers notifiers
from spendwatch.notifiers.router import OwnerConfig, RouteConfig, SilenceConfig


def _tagged_union(classes: list[type]) -> Any:
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[tuple(classes)], Field(discriminator="type")]  # noqa: UP007


DetectorConfig = _tagged_union([t.config_class for t in DETECTOR_TYPES.values()])
ReceiverConfig = _tagged_union([t.config_class for t in NOTIFIER_TYPES.values()])


SOURCE_TYPES = frozenset({"jsonl", "kafka", "focus", "otlp"})
SourceConfig = Annotated[
    Union[JsonlSourceConfig, KafkaSourceConfig, FocusSourceConfig, OtlpSourceConfig],  # noqa: UP007
    Field(discriminator="type"),
]


class EngineConfig(StrictModel):
    """Windowing and state settings shared by every rule, and what one event may carry."""

    allowed_lateness: Duration = Field(
        default=300, description="event-time delay before a window closes"
    )
    dedup_horizon: Duration = Field(
        default=172800,
        description="event time (behind the stream time) for which repeated event_ids are "
        "dropped, each looked up by its own event hour",
    )
    shards: int = Field(
        default=16, ge=1, le=4096, description="state shards (keep fixed across restarts)"
    )
    max_event_bytes: int = Field(
        default=65536, ge=256, le=1 << 30, description="longer lines dead-letter"
    )
    max_tokens_per_event: int = Field(
        default=10**12,
        ge=1,
        le=10**15,  # the event schema's own ceiling (spendwatch.ingest.events.TOKEN_CEILING)
        description="an event with more tokens of one kind dead-letters (sums stay exact)",
    )
    max_requests_per_event: int = Field(
        default=10**9,
        ge=1,
        le=10**12,  # the event schema's own ceiling (spendwatch.ingest.events.REQUEST_CEILING)
        description="an event counting more requests dead-letters",
    )
    max_event_cost_usd: float = Field(
        default=1_000_000.0,
        gt=0,
        le=9_000_000.0,  # below 2**53 nano-dollars: the integer conversion stays exact
        description="an event costing more (USD) dead-letters",
    )
    max_future_skew: Duration = Field(
        default=600,
        description="live input: an event stamped further ahead of the wall clock dead-letters",
    )
    scope_idle_ttl: Duration = Field(
        default=8 * 86400, description="forget a detector scope idle for this long"
    )
    series_horizon: Duration = Field(
        default=7 * 86400,
        description="event time of spend, requests and tokens kept per rule scope for "
        "GET /costs and /unit-costs (0: none)",
    )
    series_resolution: Duration = Field(
        default=900,
        description="finest step of that series: windows shorter than this are summed into it",
    )
    series_max_scopes: int = Field(
        default=256,
        ge=1,
        description="per shard and rule aggregation: scopes with a series (the longest quiet "
        "are dropped first)",
    )
    snapshot_interval: float = Field(
        default=5.0,
        gt=0,
        le=86400,
        description="seconds of wall time between recovery snapshots (one Bytewax epoch)",
    )
    shutdown_grace: float = Field(
        default=10.0,
        gt=0,
        le=86400,
        description="seconds SIGTERM may take before the worker exits anyway",
    )


class ServerConfig(StrictModel):
    """The worker's HTTP endpoints: metrics, health, the query API and the status page."""

    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int | None = Field(
        default=None, ge=0, le=65535, description="null: no HTTP server; process i uses port+i"
    )
    api_token: str | None = Field(
        default=None,
        description="bearer token the changing endpoints (PUT /budgets/NAME/SCOPE) require, "
        "e.g. ${SPENDWATCH_API_TOKEN}; null: they are refused; never logged",
    )


class DeadLetterConfig(StrictModel):
    """Rejected events, one JSON object per line: reason, source and the raw line."""

    path: str | None = Field(
        default="out/dead_letter.jsonl", description="JSONL of rejected events; null to discard"
    )


class SpendwatchConfig(BaseSettings):
    """Root of a spendwatch YAML file; ``SPENDWATCH_*`` environment variables override it."""

    model_config = SettingsConfigDict(
        env_prefix="SPENDWATCH_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    source: SourceConfig = Field(
        default_factory=JsonlSourceConfig, description="where usage events come from"
    )
    engine: EngineConfig = Field(
        default_factory=EngineConfig, description="windowing, lateness, dedup and state"
    )
    dead_letter: DeadLetterConfig = Field(
        default_factory=DeadLetterConfig, description="where rejected events go, with reasons"
    )
    server: ServerConfig = Field(
        default_factory=ServerConfig, description="HTTP metrics, health and query API"
    )
    dimensions: list[Dimension] | None = Field(
        default=None,
        description="if set, the only dimensions rules may key on (default: any standard "
        "dimension or labels.KEY)",
    )
    pricing: PricingConfig = Field(
        default_factory=PricingConfig, description="model prices for events without cost_usd"
    )
    detectors: list[DetectorConfig] = Field(  # type: ignore[valid-type]
        default_factory=list, description="anomaly rules, each keyed by its `type`"
    )
    budgets: list[BudgetConfig] = Field(
        default_factory=list, description="spend budgets with percent thresholds per period"
    )
    allocation: list[AllocationConfig] = Field(
        default_factory=list,
        description="shared spend spread over a dimension's values by their usage in the "
        "same window; counted by budgets with include_allocated",
    )
    receivers: list[ReceiverConfig] = Field(  # type: ignore[valid-type]
        default_factory=lambda: [ConsoleConfig()],
        description="where alerts are delivered, each keyed by its `type`",
    )
    routes: list[RouteConfig] = Field(
        default_factory=list, description="ordered; empty: every alert to every receiver"
    )
    owners: list[OwnerConfig] = Field(
        default_factory=list, description="first match fills an alert's owner"
    )
    silences: list[SilenceConfig] = Field(
        default_factory=list, description="planned spend: recorded in the outbox, not sent"
    )
    delivery: DeliveryConfig = Field(
        default_factory=DeliveryConfig, description="the durable outbox and its retries"
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> SpendwatchConfig:
        names = [d.name for d in self.detectors] + [b.name for b in self.budgets]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicated)}")
        kept = set(self.dimensions) if self.dimensions is not None else None
        for kind, rules in (("detectors", self.detectors), ("budgets", self.budgets)):
            for index, rule in enumerate(rules):
                used = _rule_dimensions(rule)
                missing = [d for d in used if kept is not None and d not in kept]
                if missing:
                    raise ValueError(
                        f"{kind}[{index}] ({rule.name}) uses dimension(s) {', '.join(missing)} "
                        "that are not listed in `dimensions`"
                    )
        self._check_allocation(kept)
        receiver_names = [r.name for r in self.receivers]
        if len(set(receiver_names)) != len(receiver_names):
            raise ValueError("receiver names must be unique (set `name:` on repeated types)")
        for index, route in enumerate(self.routes):
            unknown = [r for r in route.receivers if r not in receiver_names]
            if unknown:
                raise ValueError(f"routes[{index}] names unknown receiver(s): {', '.join(unknown)}")
        return self

    def _check_allocation(self, kept: set[str] | None) -> None:
        """Allocation rule names are unique, one rule per dimension, and every budget with
        ``include_allocated`` is keyed on exactly one rule's dimension (the error names the
        key, so the file's line is found)."""
        names = [rule.name for rule in self.allocation]
        for index, rule in enumerate(self.allocation):
            if names.count(rule.name) > 1:
                raise ValueError(f"allocation[{index}].name: repeated allocation name")
            if kept is not None and rule.dimension not in kept:
                raise ValueError(
                    f"allocation[{index}].dimension: not listed in `dimensions`"
                )
            if [r.dimension for r in self.allocation].index(rule.dimension) != index:
                raise ValueError(
                    f"allocation[{index}].dimension: another allocation rule already "
                    "spreads this dimension"
                )
        for index, budget in enumerate(self.budgets):
            if not budget.include_allocated:
                continue
            found = allocation_for(self.allocation, [*budget.scope_by, *budget.scope])
            if len(found) != 1:
                which = ", ".join(rule.name for rule in found) or "none"
                raise ValueError(
                    f"budgets[{index}].include_allocated: needs exactly one `allocation:` "
                    "rule spreading a dimension of its scope or scope_by; found: " + which
                )

    def allocation_of(self, budget: BudgetConfig) -> AllocationConfig | None:
        """The allocation rule a budget counts (``include_allocated``), if any."""
        if not budget.include_allocated:
            return None
        found = allocation_for(self.allocation, [*budget.scope_by, *budget.scope])
        return found[0] if found else None

    def parser_settings(self) -> ParserSettings:
        """What the source partitions need of this config to parse their input."""
        engine = self.engine
        return ParserSettings(
            pricing=self.pricing,
            dimensions=tuple(self.used_dimensions()),
            dedup_horizon=engine.dedup_horizon,
            max_event_bytes=engine.max_event_bytes,
            bounds=EventBounds.from_engine(engine),
            allowed_lateness=engine.allowed_lateness,
        )

    def used_dimensions(self) -> list[str]:
        """Dimensions some rule keys on: the only ones worth extracting from each event."""
        used: list[str] = []
        for rule in [*self.detectors, *self.budgets, *self.allocation]:
            for dim in _rule_dimensions(rule):
                if dim not in used:
                    used.append(dim)
        return used

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, *_, **__):
        # YAML (passed as init kwargs) wins over the environment; no .env or secrets dirs.
        return (init_settings, env_settings)


def _rule_dimensions(rule: Any) -> list[str]:
    """Every dimension a rule reads: its scope, per-value budgets, drivers, peers and the
    dimension whose values it judges (``new_value``, ``idle_commitment``)."""
    scope = getattr(rule, "scope", [])
    judged = getattr(rule, "dimension", None) or getattr(rule, "status", None)
    return [
        *(scope if isinstance(scope, list) else scope.keys()),
        *getattr(rule, "scope_by", []),
        *getattr(rule, "drivers", []),
        *getattr(rule, "peers", []),
        *getattr(rule, "sources", []),
        *([judged] if isinstance(judged, str) else []),
    ]


class ConfigError(ValueError):
    """A config file could not be loaded; ``problems`` lists ``file:line: key: problem`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ENV_PREFIX = "SPENDWATCH_"
ENV_DELIMITER = "__"
MAX_CONFIG_BYTES = 1 << 20  # 200 times the example config; bounds the work of reading one


def load_config(path: str | os.PathLike[str]) -> SpendwatchConfig:
    """Load and validate a YAML file; :class:`ConfigError` names file, line, key and problem.

    It raises nothing else, whatever the file holds: a reload with a bad file must leave
    the running engine as it was. The YAML bounds (aliases, size, depth, duplicate keys)
    are those of :mod:`spendwatch.core.yamlload`.
    """
    file = str(path)
    try:
        return _load_config(file)
    except ConfigError:
        raise
    except Exception as error:  # a bug must not take down a reload
        raise ConfigError(
            [f"{file}: cannot load the config: unexpected {type(error).__name__} (a bug)"]
        ) from error


def _load_config(file: str) -> SpendwatchConfig:
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                [f"{file}: too large: a config file is at most {MAX_CONFIG_BYTES} bytes"]
            )
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"{file}: cannot read: {error}"]) from error
    try:
        data, root = load_yaml(text)
    except DuplicateKeyError as error:
        key = format_key_path([*error.path, error.key])
        raise ConfigError(
            [f"{file}:{error.problem_mark.line + 1}: {key}: {error.problem}"]
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError([_describe_yaml_error(file, text, error)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{file}: the top level must be a mapping of sections"])
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(
                [f"{file}{_line_suffix(root, [key])}: top-level keys must be section names"]
            )
    problems: list[str] = []
    data = _substitute_env(data, [], problems, file, root)
    if problems:
        raise ConfigError(problems)
    _convert_window_counts(data, file, root)
    overrides, env_problem = _environment_overrides()
    if env_problem:
        raise ConfigError([env_problem])
    try:
        return SpendwatchConfig(**data)
    except ValidationError as error:
        merged = _deep_merge(overrides, data)
        described = [
            _describe(file, root, data, merged, e) for e in error.errors(include_input=False)
        ]
        raise ConfigError(list(dict.fromkeys(described))) from None


class ConfigDeprecationWarning(UserWarning):
    """A config that still loads but is written in a form that will stop loading."""


# Detector types whose ``warmup`` was a count of windows before it became a duration.
_WARMUP_WAS_A_COUNT = frozenset({"seasonal_zscore", "unit_cost"})


def _convert_window_counts(data: dict[str, Any], file: str, root: Any) -> None:
    """Read an old integer ``warmup`` (windows) as the duration it meant, with a warning
    naming file, line and key: ``warmup`` is event time for every detector type now."""
    detectors = data.get("detectors")
    if not isinstance(detectors, list):
        return
    for index, rule in enumerate(detectors):
        if not isinstance(rule, dict) or rule.get("type") not in _WARMUP_WAS_A_COUNT:
            continue
        warmup = rule.get("warmup")
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
            continue
        config_class = DETECTOR_TYPES[rule["type"]].config_class
        try:
            window = parse_duration(rule.get("window", config_class.model_fields["window"].default))
        except (TypeError, ValueError):
            continue  # validation words the bad window
        seconds = warmup * window
        rule["warmup"] = seconds
        key = format_key_path(["detectors", index, "warmup"])
        warnings.warn(
            f"{file}{_line_suffix(root, ['detectors', index, 'warmup'])}: {key}: a count of "
            f"windows is deprecated, write a duration: {warmup} windows of {window} s is "
            f"warmup: {format_duration(seconds)}",
            ConfigDeprecationWarning,
            stacklevel=4,
        )


def _describe_yaml_error(file: str, text: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        where = f"{file}:{mark.line + 1}:{mark.column + 1}"
    elif isinstance(error, yaml.reader.ReaderError):
        where = f"{file}:{text.count(chr(10), 0, error.position) + 1}"
    else:
        where = file
    if isinstance(error, yaml.reader.ReaderError):
        character = error.character
        code = character if isinstance(character, int) else ord(character[:1] or "\0")
        problem = f"character #x{code:04x} is not allowed in YAML"
    else:
        problem = getattr(error, "problem", None) or str(error)
    label = "" if isinstance(error, YAMLLimitError) else "invalid YAML: "
    return f"{where}: {label}{problem}"


def _environment_overrides() -> tuple[dict[str, Any], str | None]:
    """What ``SPENDWATCH_*`` variables set (as pydantic-settings reads them), or a problem."""
    try:
        return EnvSettingsSource(SpendwatchConfig)(), None
    except SettingsError as error:
        field = re.search(r'field "([^"]+)"', str(error))
        name = _env_variable([field.group(1)]) if field else None
        where = f"environment variable {name}" if name else f"a {ENV_PREFIX}* environment variable"
        return {}, f"{where}: cannot parse its value (a section or a list is given as JSON)"


def _env_variable(path: list[Any]) -> str | None:
    """The set variable that gives the longest prefix of ``path``, as spelled in the environment."""
    keys: list[str] = []
    for part in path:
        if not isinstance(part, str):
            break
        keys.append(part)
    names = {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    for length in range(len(keys), 0, -1):
        wanted = (ENV_PREFIX + ENV_DELIMITER.join(keys[:length])).upper()
        if wanted in names:
            return names[wanted]
    return None


def _deep_merge(base: Any, override: Any) -> Any:
    """``override`` over ``base``, mappings merged key by key (as pydantic-settings does)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return override


def _has_path(data: Any, path: list[Any]) -> bool:
    node = data
    for part in path:
        if not isinstance(node, (dict, list)):
            return False
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    return True


def _substitute_env(value: Any, path: list, problems: list[str], file: str, root: Any) -> Any:
    if isinstance(value, dict):
        return {k: _substitute_env(v, [*path, k], problems, file, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, [*path, i], problems, file, root) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(
                f"{file}{_line_suffix(root, path)}: {format_key_path(path)}: environment "
                f"variable {name} is not set"
            )
            return ""

        return _ENV_REFERENCE.sub(replace, value)
    return value


def _describe(file: str, root: Any, data: Any, merged: Any, error: dict[str, Any]) -> str:
    """``file:line: key: problem``, or ``environment variable NAME: key: problem``.

    A key the YAML does not give but a ``SPENDWATCH_*`` variable does is blamed on that
    variable: the file has no line for it.
    """
    path = _data_path(merged, list(error["loc"]))
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    named = _NAMED_KEY.match(message) if not path else None
    if named is not None:  # a cross-section check naming its key: blame that key's line
        path = _parse_key_path(named.group(1))
        message = named.group(2)
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see `spendwatch schema`)"
    key = format_key_path(path) or "(top level)"
    variable = None if _has_path(data, path) else _env_variable(path)
    if variable is not None:
        return f"environment variable {variable}: {key}: {message}"
    return f"{file}{_line_suffix(root, path)}: {key}: {message}"


def _data_path(data: Any, loc: list[Any]) -> list[Any]:
    """Drop union tags pydantic adds to error locations (they are not keys in the file)."""
    path: list[Any] = []
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
            path.append(part)
        elif (
            isinstance(node, dict)
            and isinstance(part, str)
            and part not in DETECTOR_TYPES
            and (part not in NOTIFIER_TYPES and part not in SOURCE_TYPES)
        ):
            path.append(part)  # a missing key: still worth naming
            node = None
    return path


_NAMED_KEY = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)+): (.+)$", re.DOTALL)


def _parse_key_path(text: str) -> list[Any]:
    """``budgets[2].include_allocated`` → ``["budgets", 2, "include_allocated"]``."""
    path: list[Any] = []
    for part in text.split("."):
        name, _, index = part.partition("[")
        path.append(name)
        if index:
            path.append(int(index.rstrip("]")))
    return path


def format_key_path(path: list[Any]) -> str:
    """``["detectors", 2, "threshold"]`` → ``detectors[2].threshold``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _line_suffix(root: Any, path: list[Any]) -> str:
    node = root
    line = None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            # The last match: a key given after a ``<<`` merge overrides the merged one.
            found = next((v for k, v in reversed(node.value) if k.value == str(part)), None)
            if found is None:
                break
            line = found.start_mark.line + 1
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return f":{line}" if line else ""


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the YAML config, for editor completion."""
    return SpendwatchConfig.model_json_schema()
