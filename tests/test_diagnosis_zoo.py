"""The diagnosis zoo as a test (issue 20): small models TRAINED so that their units die for one known
cause; the top suggestion must name that cause, and the healthy models must be ``ok`` with no
warning-level suggestion. ``benchmarks/diagnosis.py`` runs the larger zoo and proves each fix."""

from __future__ import annotations

import pytest

import deadrelu
from diagnosis_zoo import CASES, build

CAUSED = [name for name in CASES if not name.startswith("healthy/")]
HEALTHY = [name for name in CASES if name.startswith("healthy/")]


def scan(case):
    return deadrelu.scan(case.model, case.scan_data, batch_size=256, optimizer=case.optimizer_state)


@pytest.mark.parametrize("name", CAUSED)
def test_the_top_suggestion_names_the_cause_the_units_died_of(name):
    case = build(name, "ci")
    result = scan(case)
    top = result.suggestions[0]
    assert top["cause"] == case.cause, [(s["id"], s["cause"], s["severity"], s["units_explained"])
                                        for s in result.suggestions]
    assert not top["generic"] and top["units_explained"] > 0
    assert top["severity"] in ("warning", "critical")
    # The verdict line leads with the same cause.
    from deadrelu.render.console import top_cause
    assert top_cause(result) is top


@pytest.mark.parametrize("name", HEALTHY)
def test_a_healthy_trained_model_is_ok_with_no_warning(name):
    case = build(name, "ci")
    result = scan(case)
    assert result.to_dict(unit_stats=False)["summary"]["verdict"] == "ok"
    assert [s["id"] for s in result.suggestions if s["severity"] != "info"] == []
    assert result.suggestions[0]["id"] == "healthy"


def test_the_zoo_is_deterministic():
    first, second = build("bias/mlp", "ci"), build("bias/mlp", "ci")
    assert all((a == b).all() for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
