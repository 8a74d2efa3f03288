"""Meta-test: every built-in rule is exercised by a test in this folder."""

from __future__ import annotations

from pathlib import Path

from onnxprune.structured.rules.registry import registered_ops


def test_every_registered_op_has_a_test() -> None:
    here = Path(__file__).parent
    text = "".join(p.read_text() for p in here.glob("test_*.py") if p.name != Path(__file__).name)
    text += (here.parents[1] / "builders.py").read_text()
    missing = [op for _, op, _ in registered_ops() if f'"{op}"' not in text]
    assert not missing, f"rules without a test in tests/rules/: {missing}"
