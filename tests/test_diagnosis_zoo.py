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


#: the verbs an action line may start with (issue 22: imperative, ruff-style ``where: what to do``)
VERBS = {"lower", "reset", "re-initialise", "switch", "feed", "fix", "apply", "check", "clamp", "keep", "add", "use",
         "remove", "look", "report"}


def assert_actions(case, result) -> None:
    """Every suggestion has one imperative action line: ``where: verb ...``, where names sites or
    layers of this model (or the optimizer, the data, the model), and a cause's line says how many
    of the units stuck at its sites it explains."""
    import re
    from deadrelu.judge.overall import problem_mask
    modules = {name for name, _ in case.model.named_modules()} | {site.name for site in result.sites}
    for suggestion in result.suggestions:
        line = suggestion["action_line"]
        assert line and "\n" not in line and line != suggestion["title"], suggestion
        where, _, what = line.partition(": ")
        assert what.split()[0] in VERBS, line
        names = re.sub(r" and \d+ more \w+$", "", where).split(", ")
        assert all(name in modules or name in ("optimizer", "data", "model") for name in names), line
        if suggestion["units_explained"]:
            stuck = sum(int(problem_mask(site).sum()) for site in result.sites if site.name in suggestion["sites"])
            assert f"→ explains {suggestion['units_explained']} of {stuck} " in line, line


@pytest.mark.parametrize("name", CAUSED)
def test_the_top_suggestion_names_the_cause_the_units_died_of(name):
    case = build(name, "ci")
    result = scan(case)
    assert_actions(case, result)
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
    assert_actions(case, result)
    assert result.to_dict(unit_stats=False)["summary"]["verdict"] == "ok"
    assert [s["id"] for s in result.suggestions if s["severity"] != "info"] == []
    assert result.suggestions[0]["id"] == "healthy"


def test_the_zoo_is_deterministic():
    first, second = build("bias/mlp", "ci"), build("bias/mlp", "ci")
    assert all((a == b).all() for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
