"""``--functional auto``: functional capture stays on after the first batch only when that batch made a
functional call (or a gated product); otherwise no Python runs per torch call afterwards, and the
coverage says so. ``always`` keeps it on, ``off`` never turns it on."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_globals

import deadrelu
from conftest import bounded, dead_linear, error_line, report_of, run
from deadrelu.capturing.hooks import FUNCTIONAL_OFF_NOTE
from deadrelu.result import ScanResult
from deadrelu.settings import FunctionalCapture, build_settings

SAMPLES, BATCH = 40, 10  # four batches


class Probe:
    """What torch's process-wide capture state was at each forward pass (functional capture's cost)."""

    def __init__(self) -> None:
        self.modes: list[int] = []
        self.global_hooks: list[int] = []

    def look(self) -> None:
        self.modes.append(torch._C._len_torch_function_stack())
        self.global_hooks.append(len(module_globals._global_forward_pre_hooks))


class ModuleOnly(nn.Module):
    """fc1 -> nn.ReLU (units 1 and 4 of 6 dead) -> fc2 -> nn.ReLU6 (unit 0 of 3 dead); no functional call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act = dead_linear(4, 6, (1, 4)), nn.ReLU()
        self.fc2, self.act2 = dead_linear(6, 3, (0,)), nn.ReLU6()
        self.probe = Probe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.probe.look()
        return self.act2(self.fc2(self.act(self.fc1(x))))


class LateFunctional(ModuleOnly):
    """``ModuleOnly`` whose forward also calls ``F.relu`` (units 0, 2 of 5 dead), from its second call on."""

    def __init__(self, first_call: int = 1) -> None:
        super().__init__()
        self.fc3 = dead_linear(4, 5, (0, 2))
        self.first_call = first_call
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.calls >= self.first_call:
            out = out.sum(1, keepdim=True) + F.relu(self.fc3(x)).sum(1, keepdim=True)
        self.calls += 1
        return out


class Gated(nn.Module):
    """A gated MLP with an activation *module*: ``down(act(gate(x)) * up(x))``; the product is a site
    that only functional capture (its product handler) sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gate, self.up, self.down = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 2)
        self.act = nn.SiLU()
        self.probe = Probe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.probe.look()
        return self.down(self.act(self.gate(x)) * self.up(x))


def scan(model: nn.Module, functional: object) -> ScanResult:
    return deadrelu.scan(model, bounded(), batch_size=BATCH, functional=functional)


def unit_rows(result: ScanResult) -> dict[str, list[dict]]:
    return {site.name: site.to_dict()["unit_stats"] for site in result.sites}


def test_module_only_model_turns_functional_capture_off_after_batch_one_and_counts_the_same():
    auto_model, always_model = ModuleOnly(), ModuleOnly()
    auto, always = scan(auto_model, "auto"), scan(always_model, "always")
    # Batch 1 ran under the functional mode and its global module hooks (beside the first pass's
    # producer watch and hooks); batches 2-4 under neither.
    assert auto_model.probe.modes == [2, 0, 0, 0] and auto_model.probe.global_hooks == [2, 0, 0, 0]
    assert always_model.probe.modes == [2, 1, 1, 1] and always_model.probe.global_hooks == [2, 1, 1, 1]
    assert auto.coverage["functional_note"] == FUNCTIONAL_OFF_NOTE
    assert "--functional always" in FUNCTIONAL_OFF_NOTE
    assert always.coverage["functional_note"] is None
    assert [(s.name, s.dead, s.observations) for s in auto.sites] == [("act", 2, 40), ("act2", 1, 40)]
    assert unit_rows(auto) == unit_rows(always)
    assert not module_globals._global_forward_pre_hooks and torch._C._len_torch_function_stack() == 0


def test_default_is_auto():
    model = ModuleOnly()
    result = deadrelu.scan(model, bounded(), batch_size=BATCH)
    assert result.settings.functional is FunctionalCapture.AUTO
    assert model.probe.modes == [2, 0, 0, 0]
    assert result.coverage["functional_note"] == FUNCTIONAL_OFF_NOTE


def test_functional_call_in_batch_one_keeps_capture_on():
    model = LateFunctional(first_call=0)
    result = scan(model, "auto")
    assert model.probe.modes == [2, 1, 1, 1]
    assert result.coverage["functional_note"] is None
    site = result.site("<root>:relu#0")
    assert (site.dead, site.observations) == (2, 40)


def test_gated_product_in_batch_one_keeps_capture_on():
    model = Gated()
    result = scan(model, "auto")
    assert model.probe.modes == [2, 1, 1, 1]
    assert result.coverage["functional_note"] is None
    assert [(s.name, s.observations) for s in result.sites] == [("act", 40), ("<root>:swiglu#0", 40)]


def test_functional_always_catches_a_call_made_only_from_batch_two():
    late = scan(LateFunctional(first_call=1), "always")
    site = late.site("<root>:relu#0")
    assert (site.dead, site.observations) == (2, 30)  # batches 2-4
    assert late.coverage["functional_note"] is None
    missed = scan(LateFunctional(first_call=1), "auto")
    assert [s.name for s in missed.sites] == ["act", "act2"]
    assert missed.coverage["functional_note"] == FUNCTIONAL_OFF_NOTE


def test_functional_off_never_turns_it_on():
    model = LateFunctional(first_call=0)
    result = scan(model, "off")
    assert model.probe.modes == [1, 0, 0, 0] and model.probe.global_hooks == [1, 0, 0, 0]
    assert [s.name for s in result.sites] == ["act", "act2"]
    assert result.coverage["functional"] is False and result.coverage["functional_note"] is None


@pytest.mark.parametrize("given, held", [(True, "always"), (False, "off"), ("auto", "auto"), ("always", "always"),
                                         ("off", "off")])
def test_setting_values(given, held):
    settings = build_settings(functional=given)
    assert settings.functional is FunctionalCapture(held)
    assert bool(settings.functional) is (held != "off")


def test_setting_refuses_other_values():
    with pytest.raises(deadrelu.ConfigError, match="functional must be always, auto or off"):
        build_settings(functional="sometimes")


def test_json_keeps_the_mode_and_the_boolean():
    result = scan(ModuleOnly(), "auto")
    data = json.loads(result.to_json())
    assert data["settings"]["functional"] is True and data["settings"]["functional_mode"] == "auto"
    assert data["coverage"]["functional_note"] == FUNCTIONAL_OFF_NOTE
    again = ScanResult.from_dict(json.loads(result.to_json()))
    assert again.settings.functional is FunctionalCapture.AUTO
    # A report written before --functional WHEN: true meant every batch.
    del data["settings"]["functional_mode"]
    assert ScanResult.from_dict(data).settings.functional is FunctionalCapture.ALWAYS


@pytest.fixture()
def late_files(tmp_path):
    arch = tmp_path / "arch.py"
    arch.write_text("from test_functional_auto import LateFunctional\n")
    torch.save(LateFunctional().state_dict(), tmp_path / "model.pt")
    np.save(tmp_path / "data.npy", bounded().numpy())
    return tmp_path / "model.pt", tmp_path / "data.npy", f"{arch}:LateFunctional"


def test_cli_functional_option(runner, late_files):
    model, data, arch = late_files
    reports = {flag: report_of(runner, model, data, "--arch", arch, "--batch-size", str(BATCH), "--quiet",
                               *(["--functional", flag] if flag else []))
               for flag in ("", "auto", "always", "off")}
    names = {flag: [s["name"] for s in report["sites"]] for flag, report in reports.items()}
    assert names["always"] == ["act", "act2", "<root>:relu#0"]
    assert names[""] == names["auto"] == names["off"] == ["act", "act2"]
    assert reports[""]["coverage"]["functional_note"] == FUNCTIONAL_OFF_NOTE
    assert reports["always"]["settings"]["functional_mode"] == "always"
    assert reports["off"]["settings"]["functional"] is False


def test_cli_refuses_an_unknown_functional_value(runner, late_files):
    model, data, arch = late_files
    result = run(runner, model, data, "--arch", arch, "--functional", "sometimes")
    assert result.exit_code == 2
    assert "sometimes" in result.output


def test_merge_refuses_parts_scanned_with_different_functional_modes():
    from deadrelu.merge import MergeError, _check_same_scan
    auto = json.loads(scan(ModuleOnly(), "auto").to_json())
    always = json.loads(scan(ModuleOnly(), "always").to_json())
    _check_same_scan([auto, auto], ["a.json", "b.json"])
    with pytest.raises(MergeError, match="functional_mode 'always' vs 'auto'"):
        _check_same_scan([auto, always], ["a.json", "b.json"])


def test_a_report_whose_boolean_says_off_reads_off_whatever_its_mode():
    data = json.loads(scan(ModuleOnly(), "auto").to_json())
    data["settings"]["functional"] = False
    assert ScanResult.from_dict(data).settings.functional is FunctionalCapture.OFF


def test_the_note_is_shown_with_verbose_and_in_the_html_report() -> None:
    from rich.console import Console

    from deadrelu.render.console import report
    from deadrelu.render.html import report as html_report
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    result = deadrelu.scan(model, torch.randn(32, 4), batch_size=8)
    note = result.coverage["functional_note"]
    assert note and note.startswith("functional capture turned off after batch 1")

    def printed(verbose: bool) -> str:
        console = Console(width=200, record=True)
        console.print(report(result, verbose=verbose))
        return " ".join(console.export_text().split())
    assert note not in printed(False)  # the default view stays short
    assert " ".join(note.split()) in printed(True)
    assert html.escape(note) in html_report(result)
