"""Naming the real cause (issue 20): each suggestion carries a ``cause``; causes are read upstream
first; cards of one cause and action are merged; generic advice never outranks a specific cause;
``units_explained`` is right for GELU, gated products and transformers' Conv1D. Every model here
is built so the expected counts are known exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.judge.suggestions import CAUSES, suggest
from truth_models import bounded_inputs, linear_with_dead_units


def by_id(found, rule_id):
    return [s for s in found if s["id"] == rule_id]


def one(found, rule_id):
    matches = by_id(found, rule_id)
    assert len(matches) == 1, [s["id"] for s in found]
    return matches[0]


def apply_code(suggestion, model, **names):
    exec(suggestion["code"], {"model": model, "torch": torch, "nn": nn, **names})  # noqa: S102 - the snippet under test


# -- upstream first -----------------------------------------------------------------------------------

def starved_mlp() -> nn.Sequential:
    """fc 0: all 16 units bias -100 (dead on inputs in [-1, 1]); fc 2 then reads zeros: its pre-activation is
    its bias alone, -0.5 on units 0..11 (dead, 12 units) and +0.5 elsewhere (always active)."""
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
        model[2].bias.fill_(0.5)
        model[2].bias[:12] = -0.5
    return model


def test_units_starving_on_a_dead_input_are_upstream_and_no_local_rule_claims_them():
    model = starved_mlp()
    data = bounded_inputs(200, 10)
    result = deadrelu.scan(model, data)
    assert [site.dead for site in result.sites] == [16, 12]
    found = suggest(result, model)
    upstream = one(found, "upstream-dead")
    assert upstream["cause"] == "upstream" and upstream["sites"] == ["3"] and upstream["units_explained"] == 12
    assert upstream["evidence"]["root_site"] == "1"
    assert upstream["evidence"]["per_site"]["3"] == {"input_site": "1", "input_silent_share": 1.0, "units": 12,
                                                     "unit_indices": list(range(12))}
    # bias -0.5 "< -3|w.x|" with |w.x| = 0 is what the old bias rule said about site 3; resetting it cannot help.
    bias = one(found, "bias-reset")
    assert bias["sites"] == ["1"] and bias["units_explained"] == 16
    assert all("3" not in s["sites"] for s in found if s["cause"] in ("bias", "init", "batchnorm"))
    # The upstream card's fix is its root's: the same code, and it names that card's rank.
    assert upstream["code"] == bias["code"] and f"(#{bias['rank']})" in upstream["title"]
    assert "fix site 1 first" in upstream["action"] and f"#{bias['rank']}: bias" in upstream["action"]
    assert upstream["action_line"] == (f"1: apply #{bias['rank']} here first, its dead units starve later sites "
                                       "→ explains 12 of 12 dead at 3")
    assert bias["action_line"] == "0: reset 16 negative biases to 0 → explains 16 of 16 dead at 1"
    # That code revives site 1; site 3 then has an input, and what still keeps its units dead is judged
    # on its own: the rescan blames their bias, no longer the dead input.
    apply_code(upstream, model)
    again = deadrelu.scan(model, data)
    assert again.sites[0].dead == 0 and again.sites[1].dead > 0
    after = suggest(again, model)
    assert by_id(after, "upstream-dead") == []
    assert one(after, "bias-reset")["sites"] == ["3"]


def test_a_learning_rate_card_explaining_most_dead_units_outranks_the_local_ones():
    # Every layer 6x past any initialisation (as large updates leave weights), 20 units of each dead:
    # the updates, not a bias or an init, are the cause to fix.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 2))
    with torch.no_grad():
        for k in (0, 2, 4):
            model[k].weight.mul_(6.0 * math.sqrt(6.0))  # kaiming_uniform(a=√5) std x 6√6 = 6 x He's
            model[k].bias.zero_()
            model[k].bias[:20] = -1e4
    result = deadrelu.scan(model, bounded_inputs(300, 10))
    assert [site.dead for site in result.sites][:2] == [20, 20] and result.sites[2].dead >= 20
    found = suggest(result, model)
    first = found[0]
    assert first["id"] == "learning-rate" and first["cause"] == "learning-rate"
    dead = sum(int((site.verdict.dead | site.verdict.saturated).sum()) for site in result.sites)
    assert first["units_explained"] == dead
    assert set(first["evidence"]["per_layer"]) == {"0", "2", "4"}
    assert all(entry["weight_growth"] > 3 for entry in first["evidence"]["per_layer"].values())
    assert by_id(found, "init-not-he") == [] and by_id(found, "bias-reset") == []


class ResidualBlock(nn.Module):
    """relu(fc2(relu(fc1 x)) + x + shift): the second call follows a residual add; shift -1e4 on units 0..3."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(16, 16), nn.Linear(16, 16), nn.ReLU()
        shift = torch.zeros(16)
        shift[:4] = -1e4
        self.register_buffer("shift", shift)

    def forward(self, x):
        return self.relu(self.fc2(self.relu(self.fc1(x))) + x + self.shift)


def test_weights_grown_across_the_model_explain_dead_units_after_a_residual_add():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), ResidualBlock(), ResidualBlock())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(5.0 * math.sqrt(6.0))   # 5 x He's scale everywhere
    result = deadrelu.scan(model, bounded_inputs(200, 10))
    after_add = [site for site in result.sites if site.name.endswith("relu#1")]
    assert after_add[0].verdict.dead_units == [0, 1, 2, 3]
    assert {0, 1, 2, 3} <= set(after_add[1].verdict.dead_units)   # (one more dies of the grown weights' own)
    card = one(suggest(result, model), "learning-rate")
    assert {"1.relu#1", "2.relu#1"} <= set(card["sites"])
    assert card["evidence"]["model_wide"]["what"] == "weight_growth"
    assert card["units_explained"] == sum(int((s.verdict.dead | s.verdict.saturated).sum()) for s in result.sites)


# -- the optimizer state ----------------------------------------------------------------------------

def adam_trained(lr: float):
    from diagnosis_zoo import _blob_data, fit, mlp
    data = _blob_data(13, "ci", offset=1.0)
    torch.manual_seed(13)
    model = mlp((20, 64, 64, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    fit(model, data["x"], data["y"], optimizer, steps=150)
    return model, optimizer, data["x"]


def test_the_learning_rate_rule_reads_the_optimizer_state_a_checkpoint_holds(runner, tmp_path):
    import json

    from conftest import run
    model, optimizer, data = adam_trained(0.05)
    torch.save({"epoch": 3, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    (tmp_path / "arch.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), "
        "nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))\n")
    import numpy as np
    np.save(tmp_path / "x.npy", data.numpy())
    done = run(runner, tmp_path / "ckpt.pt", tmp_path / "x.npy", "--arch", f"{tmp_path / 'arch.py'}:build",
               "--json", tmp_path / "r.json")
    assert done.exit_code == 0, done.output
    top = json.loads((tmp_path / "r.json").read_text())["suggestions"][0]
    assert top["cause"] == "learning-rate" and top["evidence"]["optimizer_state"] is True
    step = top["evidence"]["per_layer"]["0"]["optimizer"]
    assert step["optimizer"].startswith("Adam") and step["lr"] == 0.05
    assert step["step_to_weight"] == pytest.approx(0.05 / float(model[0].weight.detach().pow(2).mean().sqrt()),
                                                   rel=1e-2)
    assert "Cause: learning rate too high" in done.stdout
    # The same weights without the optimizer state: only the weights' growth can say it, never the steps.
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    plain = run(runner, tmp_path / "weights.pt", tmp_path / "x.npy", "--arch", f"{tmp_path / 'arch.py'}:build",
                "--json", tmp_path / "p.json")
    assert plain.exit_code == 0, plain.output
    for card in json.loads((tmp_path / "p.json").read_text())["suggestions"]:
        if card["id"] == "learning-rate":
            assert card["evidence"]["optimizer_state"] is False
            assert all("optimizer" not in entry and "weight_growth" in entry
                       for entry in card["evidence"]["per_layer"].values())


def test_a_sane_learning_rate_in_the_optimizer_state_says_nothing():
    model, optimizer, data = adam_trained(1e-3)
    found = deadrelu.scan(model, data, optimizer=optimizer).suggestions
    assert by_id(found, "learning-rate") == []


# -- merged cards, ranking ------------------------------------------------------------------------------

class TwoConvBN(nn.Module):
    """Two Conv -> BatchNorm -> ReLU blocks; beta -100 on channels 1, 4 of bn1 and 0, 2, 5 of bn2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        with torch.no_grad():
            self.bn1.bias[[1, 4]] = -100.0
            self.bn2.bias[[0, 2, 5]] = -100.0

    def forward(self, x):
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


def test_one_cause_and_action_at_several_sites_is_one_card_listing_them():
    model = TwoConvBN().eval()
    data = torch.randn(16, 3, 8, 8)
    found = suggest(deadrelu.scan(model, data), model)
    card = one(found, "batchnorm-dead")
    assert card["sites"] == ["relu1", "relu2"] and card["units_explained"] == 5 and card["cause"] == "batchnorm"
    assert card["evidence"]["per_site"]["relu1"]["channels"] == [1, 4]
    assert card["evidence"]["per_site"]["relu2"]["channels"] == [0, 2, 5]
    assert card["title"].startswith("2 sites, 5 units: relu1 ← bn1")
    # One action line for the merged card: both BatchNorms, the channels summed, both sites (issue 22).
    assert card["action_line"] == "bn1, bn2: reset β to 0 and γ to 1 on 5 channels → explains 5 of 5 dead at relu1, relu2"
    apply_code(card, model)
    assert [site.dead for site in deadrelu.scan(model, data).sites] == [0, 0]


def test_severity_ranks_first_then_units_explained_and_generic_advice_last():
    # A critical cause explaining 3 units outranks a warning explaining 8; "use LeakyReLU" comes after both.
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].bias.fill_(0.5)
        model[0].bias[:8] = -100.0          # 8 of 64 dead: warning (12.5 %)
        model[2].weight[:3] = 0.0
        model[2].bias[:3] = 0.0             # 3 of 4 zero rows: critical (75 %)
    found = suggest(deadrelu.scan(model, bounded_inputs(200, 10)), model)
    ids = [s["id"] for s in found]
    assert ids.index("zero-weights") < ids.index("bias-reset")
    assert found[0]["severity"] == "critical" and found[0]["units_explained"] == 3
    generic = [s for s in found if s["generic"]]
    assert generic and all(ids.index(s["id"]) > ids.index("bias-reset") for s in generic)
    assert all(s["cause"] in CAUSES for s in found if s["id"] != "healthy")


# -- units_explained: GELU, gated products, Conv1D ------------------------------------------------------

def test_gelu_bias_cards_explain_the_units_they_name():
    model = linear_with_dead_units(dead=8, width=32, activation=nn.GELU())
    found = suggest(deadrelu.scan(model, bounded_inputs(200, 10)), model)
    bias = one(found, "bias-reset")
    assert bias["evidence"]["units"] == list(range(8)) and bias["units_explained"] == 8


class Gated(nn.Module):
    """A gated MLP whose gate rows 0..3 and up rows 4..6 are zero: 7 product units always 0."""

    def __init__(self) -> None:
        super().__init__()
        from diagnosis_zoo import GatedMLP
        self.mlp = GatedMLP(8, 16)
        with torch.no_grad():
            self.mlp.gate_proj.weight[:4] = 0.0
            self.mlp.up_proj.weight[4:7] = 0.0

    def forward(self, x):
        return self.mlp(x)


def test_zeroed_gate_and_up_rows_of_a_gated_mlp_are_zero_weights_not_a_residual_add():
    model = Gated().eval()
    data = torch.randn(64, 8)
    result = deadrelu.scan(model, data)
    product = result.site("mlp:swiglu#0")
    assert product.verdict.dead_units == list(range(7))
    found = suggest(result, model)
    card = one(found, "zero-weights")
    assert card["sites"] == ["mlp.act_fn", "mlp:swiglu#0"] and card["units_explained"] == 4 + 7
    assert card["evidence"]["per_site"]["mlp:swiglu#0"]["layers"] == ["mlp.gate_proj", "mlp.up_proj"]
    assert by_id(found, "not-explained") == [], "the gated product is explained, not 'an add after up_proj'"
    before = model(data)
    apply_code(card, model)
    assert torch.allclose(model(data), before), "down_proj's columns start at zero: outputs unchanged"
    assert deadrelu.scan(model, data).site("mlp:swiglu#0").dead == 0


def test_transformers_conv1d_weights_are_read_as_in_by_out():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=8, vocab_size=50)
    torch.manual_seed(0)
    model = transformers.GPT2Model(config).eval()
    with torch.no_grad():
        model.h[0].mlp.c_fc.weight[:, :5] = 0.0      # Conv1D: weight (in, out); output units 0..4
        model.h[0].mlp.c_fc.bias[:5] = 0.0
    result = deadrelu.scan(model, torch.randint(0, 50, (16, 8)))
    site = next(s for s in result.sites if s.producer is not None and s.producer.layer == "h.0.mlp.c_fc")
    assert site.verdict.dead_units == [0, 1, 2, 3, 4]
    card = one(suggest(result, model), "zero-weights")
    assert card["sites"] == [site.name] and card["units_explained"] == 5
    assert card["evidence"]["layers"] == ["h.0.mlp.c_fc"] and card["evidence"]["units"] == [0, 1, 2, 3, 4]


# -- generic advice only where it means something --------------------------------------------------------

class HardswishBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.up, self.act, self.down = nn.Linear(16, 32), nn.Hardswish(), nn.Linear(32, 16)
        with torch.no_grad():
            self.up.bias[:8] = -100.0

    def forward(self, x):
        x = x + self.attention(x, x, x, need_weights=False)[0]
        return x + self.down(self.act(self.up(x)))


def test_relu_to_gelu_advice_needs_relu_not_hardswish():
    model = HardswishBlock().eval()
    found = suggest(deadrelu.scan(model, torch.randn(6, 5, 16)), model)
    assert by_id(found, "guide-gelu-transformer") == []


def test_a_dead_share_growing_over_four_sites_is_not_a_depth_trend():
    layers: list[nn.Module] = []
    previous = 10
    for dead in (0, 4, 8, 12):
        linear = nn.Linear(previous, 32)
        with torch.no_grad():
            linear.bias.fill_(0.5)
            linear.bias[:dead] = -100.0
        layers += [linear, nn.ReLU()]
        previous = 32
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    found = suggest(deadrelu.scan(model, bounded_inputs(100, 10)), model)
    assert by_id(found, "depth-trend") == []


def test_every_suggestion_has_a_known_cause_or_is_a_note():
    model = linear_with_dead_units(dead=8)
    for suggestion in suggest(deadrelu.scan(model, bounded_inputs(100, 10)), model):
        assert suggestion["cause"] in CAUSES or suggestion["id"] in ("healthy", "not-explained", "rule-error")
