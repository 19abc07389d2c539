"""``type: feature_flag`` (provider ``flagd``): graded throttling through a flag file.

Services evaluate one flag (say ``llm-spend-throttle``) with the OpenFeature SDK and
the flagd provider reading this file; flagd picks up changes without a restart. Each
budget threshold maps to a variant (``85: degrade`` = a cheaper model, ``100: block``).
Every crossed threshold is kept in the outbox's receiver state; the flag's targeting
is rebuilt from all of them: for each variant, most severe first, a rule matching the
scope values of the budgets that reached it (e.g. ``tenant == "acme"``). A resolved
budget alert (the engine resolves every crossed threshold when its period ends, or the
alert resolves) removes its entry, so the scope falls back to the default variant.

``mode: apply`` rewrites the flag file atomically (temp file + fsync + rename);
``mode: propose`` writes the same content to ``proposal_path`` for a human to review
and copy over, and every other receiver of the alert says so (see :meth:`describe`).
A proposal can also be approved from its Slack message (``spendwatch.notifiers.
slack_actions``): :meth:`FlagNotifier.approve` then writes the approved throttles, and
only those, to ``path``, atomically as ``mode: apply`` does; the budget's resolution
lifts an approved throttle again. Other flags in the file are kept as they are.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import Any, Literal

from pydantic import Field, model_validator

from spendwatch.core.alerts import Alert
from spendwatch.core.configtypes import StrictModel
from spendwatch.notifiers import render
from spendwatch.notifiers.base import (
    Delivery,
    MemoryState,
    Notifier,
    NotifyError,
    ReceiverState,
    register_notifier,
)
from spendwatch.notifiers.router import glob_match

SCHEMA_URL = "https://flagd.dev/schema/v0/flags.json"


class FlagConfig(StrictModel):
    """One flagd flag whose variants throttle spend per scope."""

    type: Literal["feature_flag"] = "feature_flag"
    name: str = Field(default="flags", description="receiver name used by routes")
    provider: Literal["flagd"] = Field(default="flagd", description="flag file format")
    path: str = Field(description="flagd flag-definition JSON file the services read")
    flag: str = Field(default="llm-spend-throttle", min_length=1, description="flag key")
    variants: dict[str, str] = Field(
        default_factory=lambda: {"normal": "normal", "degrade": "degrade", "block": "block"},
        description="variant name: value the service receives",
    )
    default_variant: str = Field(default="normal", description="variant when not throttled")
    thresholds: dict[float, str] = Field(
        default_factory=lambda: {85.0: "degrade", 100.0: "block"},
        description="budget percent: variant from that threshold on",
    )
    rules: list[str] = Field(
        default_factory=list, description="budget name globs that drive the flag (empty: all)"
    )
    mode: Literal["propose", "apply"] = Field(
        default="propose", description="propose: write proposal_path for a human; apply: path"
    )
    proposal_path: str | None = Field(
        default=None, description="where proposals go (default: <path>.proposed.json)"
    )

    @model_validator(mode="after")
    def _known_variants(self) -> FlagConfig:
        names = [self.default_variant, *self.thresholds.values()]
        unknown = sorted({n for n in names if n not in self.variants})
        if unknown:
            raise ValueError(f"variant(s) {', '.join(unknown)} not listed in `variants`")
        return self

    @property
    def target_path(self) -> str:
        if self.mode == "apply":
            return self.path
        return self.proposal_path or f"{self.path}.proposed.json"


@register_notifier("feature_flag", FlagConfig)
class FlagNotifier(Notifier):
    idempotent = True

    def __init__(self, config: FlagConfig) -> None:
        self.name = config.name
        self.config = config
        self._memory = MemoryState()
        self._lock = threading.Lock()
        if config.mode == "apply":
            self._ensure_flag()

    def _ensure_flag(self) -> None:
        """Services can evaluate the flag from the start: add it (default variant) if absent."""
        try:
            with open(self.config.path, encoding="utf-8") as handle:
                present = self.config.flag in (json.load(handle).get("flags") or {})
        except FileNotFoundError:
            present = False
        except (OSError, ValueError, AttributeError):
            return  # left alone; the first delivery reports the problem
        if not present:
            self.write([])

    def notify(self, alert: Alert) -> None:
        self.deliver(alert, Delivery(state=self._memory))

    # -- what it would do -----------------------------------------------------------------------

    def variant_for(self, alert: Alert) -> str | None:
        """The variant a firing budget alert asks for, or None when this flag ignores it."""
        if alert.kind != "budget" or not self._drives(alert):
            return None
        reached = [t for t in self.config.thresholds if t <= alert.threshold]
        return self.config.thresholds[max(reached)] if reached else None

    def describe(self, alert: Alert) -> str | None:
        variant = self.variant_for(alert)
        if variant is None:
            return None
        scope = render.scope_text(alert)
        change = (
            f"flag `{self.config.flag}` back to `{self.config.default_variant}` for {scope}"
            if alert.status == "resolved"
            else f"flag `{self.config.flag}` to `{variant}` for {scope}"
        )
        if self.config.mode == "apply":
            return f"Applied: {change} (in {self.config.path})."
        return (
            f"Proposed, not applied: {change}. Review {self.config.target_path} and copy it "
            f"over {self.config.path} to apply."
        )

    def proposal(self, alert: Alert) -> str | None:
        """In ``mode: propose``, the throttle a firing budget alert proposes (approvable)."""
        variant = self.variant_for(alert)
        if self.config.mode != "propose" or alert.status != "firing" or variant is None:
            return None
        return f"flag `{self.config.flag}` to `{variant}` for {render.scope_text(alert)}"

    # -- delivery -------------------------------------------------------------------------------

    def deliver(self, alert: Alert, delivery: Delivery) -> None:
        variant = self.variant_for(alert)
        if variant is None:
            return
        with self._lock:  # an approval arriving meanwhile sees the throttle before or after
            self._deliver(alert, variant, delivery)

    def _deliver(self, alert: Alert, variant: str, delivery: Delivery) -> None:
        key = f"throttle:{alert.fingerprint}"
        if alert.status == "resolved":
            delivery.state.delete(key)
            if delivery.state.get(f"approved:{alert.fingerprint}") is not None:
                delivery.state.delete(f"approved:{alert.fingerprint}")
                self._write_approved(delivery.state)  # the condition cleared: lift it
        else:
            delivery.state.put(key, _entry(alert, variant))
        entries = [json.loads(v) for _, v in delivery.state.items("throttle:")]
        self.write(entries)

    def approve(self, alert: Alert, state: ReceiverState) -> str:
        """Apply the throttle ``alert`` proposes to ``path`` (a person approved it); its variant.

        The live file then holds every approved throttle still in force, each until its
        budget alert resolves.
        """
        variant = self.proposal(alert) and self.variant_for(alert)
        if not variant:
            raise NotifyError("flags: this alert proposes no throttle", retryable=False)
        with self._lock:
            if state.get(f"throttle:{alert.fingerprint}") is None:
                # not proposed yet, or its budget alert resolved since: nothing to apply
                raise NotifyError(
                    "flags: the throttle is not (or no longer) proposed", retryable=False
                )
            state.put(f"approved:{alert.fingerprint}", _entry(alert, variant))
            self._write_approved(state)
        return variant

    def _write_approved(self, state: ReceiverState) -> None:
        entries = [json.loads(v) for _, v in state.items("approved:")]
        self.write(entries, target=self.config.path)

    def flag_definition(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """The flagd definition of our flag for the given active throttles."""
        rank = {variant: threshold for threshold, variant in self.config.thresholds.items()}
        by_variant: dict[str, list[dict[str, str]]] = {}
        for entry in sorted(entries, key=lambda e: json.dumps(e["scope"], sort_keys=True)):
            scopes = by_variant.setdefault(entry["variant"], [])
            if entry["scope"] not in scopes:
                scopes.append(entry["scope"])
        branches: list[Any] = []
        for variant in sorted(by_variant, key=lambda v: -rank.get(v, 0)):
            conditions = [_scope_condition(scope) for scope in by_variant[variant]]
            branches += [conditions[0] if len(conditions) == 1 else {"or": conditions}, variant]
        definition: dict[str, Any] = {
            "state": "ENABLED",
            "variants": dict(self.config.variants),
            "defaultVariant": self.config.default_variant,
        }
        if branches:
            definition["targeting"] = {"if": [*branches, None]}
        return definition

    def write(self, entries: list[dict[str, Any]], target: str | None = None) -> None:
        """Rewrite our flag in ``target`` (default: the mode's file) atomically, keeping
        every other flag."""
        target = target or self.config.target_path
        base = target if os.path.exists(target) else self.config.path
        document: dict[str, Any] = {"$schema": SCHEMA_URL, "flags": {}}
        if os.path.exists(base):
            try:
                with open(base, encoding="utf-8") as handle:
                    document = json.load(handle)
            except (OSError, ValueError) as error:
                raise NotifyError(
                    f"flags: cannot read {base} ({type(error).__name__}); not overwriting it",
                    retryable=False,
                ) from None
            if not isinstance(document, dict) or not isinstance(document.get("flags", {}), dict):
                raise NotifyError(
                    f"flags: {base} is not a flagd file; not overwriting it", retryable=False
                )
        document.setdefault("flags", {})[self.config.flag] = self.flag_definition(entries)
        try:
            atomic_write_json(target, document)
        except OSError as error:
            raise NotifyError(f"flags: cannot write {target}: {error}", retryable=True) from None

    def _drives(self, alert: Alert) -> bool:
        return not self.config.rules or any(glob_match(alert.rule, p) for p in self.config.rules)


def _entry(alert: Alert, variant: str) -> str:
    return json.dumps(
        {"scope": alert.scope, "variant": variant, "threshold": alert.threshold}, sort_keys=True
    )


def _scope_condition(scope: dict[str, str]) -> dict[str, Any]:
    tests = [{"==": [{"var": dimension}, value]} for dimension, value in sorted(scope.items())]
    if not tests:  # an unscoped budget throttles everyone
        return {"==": [1, 1]}
    return tests[0] if len(tests) == 1 else {"and": tests}


def atomic_write_json(path: str, document: Any) -> None:
    """Write JSON so readers see the old file or the new one, never half of either."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".flags-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
