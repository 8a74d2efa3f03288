"""The op-rule registry: ``(domain, op_type)`` → rules by opset since-version.

Built-in rules register at import time with :func:`register_rule`; users pass ``extra_rules=`` to
:func:`onnxprune.structured.analysis.analyze` instead of touching the global table, so two analyses never influence
each other. An op with no rule is a blocker, never an assumed elementwise op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from onnxprune.structured.rules.base import OpRule

_RULES: dict[tuple[str, str], list[tuple[int, OpRule]]] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def register_rule(*op_types: str, since: int = 1, domain: str = "") -> Callable[[type[OpRule]], type[OpRule]]:
    """Class decorator registering one rule instance for ``op_types`` from opset ``since`` on.

    Raises:
        ValueError: a rule for the same (domain, op_type, since) already exists.

    Example:
        >>> @register_rule("MyRelu", domain="my.domain")  # doctest: +SKIP
        ... class MyReluRule(UnaryRule): ...
    """

    def decorate(cls: type[OpRule]) -> type[OpRule]:
        rule = cls()
        for op in op_types:
            _add(_RULES, _norm_domain(domain), op, since, rule)
        return cls

    return decorate


def _add(table: dict[tuple[str, str], list[tuple[int, OpRule]]], domain: str, op: str, since: int,
         rule: OpRule) -> None:
    entries = table.setdefault((domain, op), [])
    if any(s == since for s, _ in entries):
        raise ValueError(f"a rule for {domain or 'ai.onnx'}::{op} since opset {since} is already registered")
    entries.append((since, rule))
    entries.sort(key=lambda e: e[0])


@dataclass(frozen=True)
class RuleSpec:
    """A user rule passed through ``extra_rules=``; it takes precedence over a built-in one."""

    op_type: str
    rule: OpRule
    since: int = 1
    domain: str = ""


class RuleSet:
    """Built-in rules plus per-call extras, looked up by the model's opset."""

    def __init__(self, extra: Iterable[RuleSpec] = ()) -> None:
        import onnxprune.structured.rules  # noqa: F401 - registers the built-in families

        self._extra: dict[tuple[str, str], list[tuple[int, OpRule]]] = {}
        for spec in extra:
            if not isinstance(spec, RuleSpec):
                from onnxprune.core.errors import ConfigError

                raise ConfigError(f"extra_rules entries must be RuleSpec(op_type, rule), got {type(spec).__name__}")
            _add(self._extra, _norm_domain(spec.domain), spec.op_type, spec.since, spec.rule)

    def lookup(self, domain: str, op_type: str, opset: int) -> OpRule | None:
        """The rule with the highest since-version ≤ ``opset`` (extras first), or None when there is none."""
        key = (_norm_domain(domain), op_type)
        for table in (self._extra, _RULES):
            best = None
            for since, rule in table.get(key, []):
                if since <= opset:
                    best = rule
            if best is not None:
                return best
        return None


def registered_ops() -> list[tuple[str, str, int]]:
    """Every built-in (domain, op_type, since); the rule-coverage meta-test reads this."""
    import onnxprune.structured.rules  # noqa: F401

    return sorted((d, op, s) for (d, op), entries in _RULES.items() for s, _ in entries)
