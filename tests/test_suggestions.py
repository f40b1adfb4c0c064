"""The rules engine: each rule fires on a model built to trigger it, stays silent on one built not to,
names its numbers, and its code snippet really applies the fix to that model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.judge import suggestions as rules
from deadrelu.judge.suggestions import feeding_layers, suggest
from deadrelu.result import ScanResult
from truth_models import ConvBNInplace, bounded_inputs, linear_with_dead_units


def scan(model: nn.Module, data: torch.Tensor) -> ScanResult:
    return deadrelu.scan(model, data, batch_size=64)


def by_id(found: list[dict], rule_id: str) -> list[dict]:
    return [s for s in found if s["id"] == rule_id]


def one(found: list[dict], rule_id: str) -> dict:
    matches = by_id(found, rule_id)
    assert len(matches) == 1, [s["id"] for s in found]
    return matches[0]


def apply_code(suggestion: dict, model: nn.Module, **names: object) -> dict:
    """Run a suggestion's code against the model, the way a user would paste it."""
    namespace = {"model": model, "torch": torch, "nn": nn, **names}
    exec(suggestion["code"], namespace)  # noqa: S102 - the snippet under test
    return namespace


def he_init(model: nn.Module, nonlinearity: str = "relu") -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity=nonlinearity)
    return model


def deep_relu_mlp(dead_per_layer: list[int], width: int = 32, in_features: int = 10) -> nn.Sequential:
    """Linear+ReLU blocks; layer k has bias -100 on its first dead_per_layer[k] units, +0.5 elsewhere."""
    layers: list[nn.Module] = []
    previous = in_features
    for dead in dead_per_layer:
        linear = nn.Linear(previous, width)
        with torch.no_grad():
            linear.bias.fill_(0.5)
            linear.bias[:dead] = -100.0
        layers += [linear, nn.ReLU()]
        previous = width
    layers.append(nn.Linear(previous, 1))
    return nn.Sequential(*layers)


# -- the result shape: plain data in the JSON ------------------------------------------------

def test_suggestions_are_plain_json_and_round_trip(tmp_path):
    model = linear_with_dead_units(dead=8)
    result = scan(model, bounded_inputs(200, 10))
    assert result.suggestions, "scan() attaches suggestions"
    for suggestion in result.suggestions:
        assert set(suggestion) == {"id", "severity", "sites", "title", "evidence", "action", "code",
                                   "units_explained", "destructive", "changes", "scope", "rank", "cause", "generic",
                                   "action_line"}
        assert suggestion["severity"] in ("info", "warning", "critical")
        assert suggestion["cause"] in (*rules.CAUSES, None) and isinstance(suggestion["generic"], bool)
    path = tmp_path / "r.json"
    result.to_json(path)
    stored = json.loads(path.read_text())["suggestions"]
    assert stored == list(result.suggestions)
    assert ScanResult.from_json(path).suggestions == result.suggestions


def test_ranked_by_dead_units_explained_then_severity():
    # issue 10: the cause (bias -100 on 20 units) ranks above the generic "use LeakyReLU".
    model = linear_with_dead_units(dead=20, width=32)
    found = suggest(scan(model, bounded_inputs(200, 10)), model)
    assert [s["rank"] for s in found] == list(range(1, len(found) + 1))
    assert found[0]["id"] == "bias-reset" and found[0]["units_explained"] == 20
    assert found[0]["severity"] == "critical", "a cause is as urgent as the 62%-dead site it explains"
    generic = [s for s in found if not s["units_explained"]]
    ranks = [("critical", "warning", "info").index(s["severity"]) for s in generic]
    assert ranks == sorted(ranks)
    assert generic[0]["id"] == "dead-share" and generic[0]["severity"] == "critical"


def test_a_failing_rule_becomes_an_info_line_not_a_lost_scan():
    def broken(result, model):
        raise RuntimeError("boom")
    result = scan(linear_with_dead_units(dead=0), bounded_inputs(100, 10))
    found = suggest(result, rules=[broken])
    assert found[0]["id"] == "rule-error" and "broken" in found[0]["title"] and "boom" in found[0]["title"]
    with pytest.raises(RuntimeError):
        suggest(result, rules=[broken], strict=True)


# -- dead share -------------------------------------------------------------------------------

def test_dead_share_fires_with_exact_numbers_and_its_code_swaps_the_relu():
    model = linear_with_dead_units(dead=8, width=32)
    result = scan(model, bounded_inputs(200, 10))
    found = one(suggest(result, model), "dead-share")
    assert found["severity"] == "warning"
    assert found["sites"] == ["1"]
    assert found["evidence"]["per_site"] == {"1": {"dead": 8, "units": 32, "dead_ratio": 0.25}}
    assert "8 of 32 = 25.0%" in found["title"]
    assert "LeakyReLU" in found["action"] and "ELU" in found["action"]
    apply_code(found, model)
    assert isinstance(model[1], nn.LeakyReLU) and model[1].negative_slope == 0.1


def test_dead_share_is_critical_above_half():
    model = linear_with_dead_units(dead=20, width=32)
    found = one(suggest(scan(model, bounded_inputs(200, 10)), model), "dead-share")
    assert found["severity"] == "critical"
    assert found["evidence"]["per_site"]["1"]["dead"] == 20


def test_dead_share_silent_below_threshold():
    model = linear_with_dead_units(dead=2, width=32)  # 6.25% <= 10%
    found = suggest(scan(model, bounded_inputs(200, 10)), model)
    assert by_id(found, "dead-share") == []
    assert one(found, "bias-reset")["evidence"]["units"] == [0, 1], "the two -100 biases are still worth fixing"


def test_few_dead_units_with_nothing_to_fix_says_so_with_the_numbers():
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
    he_init(model)
    with torch.no_grad():
        model[0].weight[:2] = -model[0].weight[:2].abs() - 0.1   # units 0, 1 never fire on inputs in [0, 1]
        model[0].bias.fill_(0.5)
        model[0].bias[:2] = 0.0
    result = scan(model, torch.rand(200, 6))
    found = suggest(result, model)
    assert [s["id"] for s in found] == ["healthy"]
    healthy = found[0]
    assert healthy["evidence"]["dead"] == 2 and healthy["evidence"]["units"] == 32
    # issue 20: a site warns above a fifth of its units stuck (healthy training leaves up to 16 %).
    assert healthy["title"] == ("Nothing to fix: 2 of 32 units dead (6.2%) and 0 saturated, no site above the 20% "
                                "warning level")


def test_dead_share_in_a_very_deep_stack_recommends_leaky_relu():
    model = deep_relu_mlp([4] * 8)
    found = one(suggest(scan(model, bounded_inputs(100, 10)), model), "dead-share")
    assert found["evidence"]["relu_sites"] == 8
    assert "LeakyReLU(negative_slope=0.1)" in found["action"] and "8-site deep stack" in found["action"]


def test_dead_share_for_a_gan_discriminator_uses_slope_0_2():
    class Discriminator(nn.Sequential):
        pass
    model = Discriminator(*linear_with_dead_units(dead=8))
    found = one(suggest(scan(model, bounded_inputs(100, 10)), model), "dead-share")
    assert "GANs" in found["action"] and "LeakyReLU(0.2" in found["code"]


def test_dead_share_works_from_json_without_the_model(tmp_path):
    result = scan(linear_with_dead_units(dead=8), bounded_inputs(200, 10))
    reread = ScanResult.from_dict(json.loads(result.to_json()))
    found = one(suggest(reread), "dead-share")
    assert found["evidence"]["per_site"]["1"]["dead"] == 8
    assert by_id(suggest(reread), "init-not-he") == [] and by_id(suggest(reread), "bias-reset") == []


# -- initialisation ------------------------------------------------------------------------------

def test_init_rule_names_pytorch_default_vs_he_with_numbers():
    model = linear_with_dead_units(dead=8, width=32, in_features=10)  # default kaiming_uniform_(a=sqrt(5))
    found = one(suggest(scan(model, bounded_inputs(200, 10)), model), "init-not-he")
    layer = found["evidence"]["layers"]["0"]
    assert layer["fan_in"] == 10
    assert layer["looks_like"] == "pytorch_default"
    assert layer["he_std"] == pytest.approx(math.sqrt(2 / 10), rel=1e-3)
    assert layer["pytorch_default_std"] == pytest.approx(1 / math.sqrt(30), rel=1e-3)
    assert layer["weight_std"] == pytest.approx(float(model[0].weight.detach().std(unbiased=False)), rel=1e-3)
    assert abs(layer["weight_std"] / layer["pytorch_default_std"] - 1) < rules.INIT_TOLERANCE
    assert "1/sqrt(3·fan_in)" in found["title"] and "sqrt(2/fan_in)" in found["title"]
    assert "1/sqrt(3·10)" in found["action"]
    apply_code(found, model)
    assert float(model[0].weight.detach().std()) == pytest.approx(math.sqrt(2 / 10), rel=0.2)


def test_init_rule_silent_for_he_initialised_weights():
    model = he_init(linear_with_dead_units(dead=8))
    found = suggest(scan(model, bounded_inputs(200, 10)), model)
    assert by_id(found, "init-not-he") == []
    assert by_id(found, "bias-reset"), "the bias is still the reason these units are dead"


def test_init_rule_silent_when_the_site_is_healthy():
    model = linear_with_dead_units(dead=0)
    assert by_id(suggest(scan(model, bounded_inputs(200, 10)), model), "init-not-he") == []


def test_init_rule_uses_the_leaky_relu_gain():
    model = linear_with_dead_units(dead=8, activation=nn.LeakyReLU(0.2))
    found = one(suggest(scan(model, bounded_inputs(200, 10)), model), "init-not-he")
    layer = found["evidence"]["layers"]["0"]
    assert layer["he_std"] == pytest.approx(math.sqrt(2 / (1 + 0.2 ** 2)) / math.sqrt(10), rel=1e-3)
    assert "nonlinearity='leaky_relu', a=0.2" in found["code"]


def test_weights_grown_past_every_init_are_the_learning_rate_not_init():
    # issue 20: weights 5x He's scale are what large updates leave, not an initialisation to redo.
    model = linear_with_dead_units(dead=8)
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(32, 10) * 5.0 * math.sqrt(2 / 10))
    found = suggest(scan(model, bounded_inputs(200, 10)), model)
    assert by_id(found, "init-not-he") == [], "re-initialising is not the fix for grown weights"
    lr = one(found, "learning-rate")
    assert lr["cause"] == "learning-rate" and lr["rank"] == 1 and lr["units_explained"] == 8
    layer = lr["evidence"]["per_layer"]["0"]
    assert layer["weight_growth"] == pytest.approx(float(model[0].weight.detach().std(unbiased=False))
                                                   / math.sqrt(2 / 10), rel=1e-3)
    assert by_id(found, "bias-reset") == [], "the learning-rate card claims the site's dead units"


# -- bias -----------------------------------------------------------------------------------------

def test_bias_rule_lists_exactly_the_units_with_bias_minus_100_and_its_code_revives_them():
    model = linear_with_dead_units(dead=8, width=32)
    data = bounded_inputs(200, 10)
    result = scan(model, data)
    found = one(suggest(result, model), "bias-reset")
    assert found["sites"] == ["1"]
    assert found["evidence"]["units"] == list(range(8))
    assert found["evidence"]["biases"] == [-100.0] * 8
    assert found["evidence"]["layer"] == "0"
    assert found["evidence"]["median_bias_other_units"] == 0.5
    assert "they output 0 and get no gradient" in found["action"]
    apply_code(found, model)
    assert scan(model, data).summary.dead == 0


def test_bias_rule_silent_when_dead_units_have_ordinary_biases():
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():
        model[0].weight[:4] = -model[0].weight[:4].abs() - 0.1   # units 0..3: all weights negative
        model[0].bias.zero_()
        model[0].bias[4:] = 0.5
    data = torch.rand(300, 6)                                     # inputs in [0, 1]: units 0..3 never fire
    result = scan(model, data)
    assert result.sites[0].verdict.dead_units == [0, 1, 2, 3]
    assert by_id(suggest(result, model), "bias-reset") == []
    # With the input range known, the rule proves they cannot fire on [0, 1].
    proven = one(suggest(result, model, input_bounds=(0.0, 1.0)), "bias-reset")
    assert proven["evidence"]["cannot_fire_units"] == [0, 1, 2, 3]
    assert proven["evidence"]["input_range_source"] == "input bounds given by the caller"
    assert "cannot fire for any input in the observed range" in proven["title"]


def test_bias_rule_proves_cannot_fire_from_the_previous_sites_range():
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8), nn.ReLU())
    with torch.no_grad():
        model[0].bias.fill_(0.2)
        model[0].bias[0] = -100.0                  # unit 0 of the first site is always 0: the range starts at 0
        model[3].weight[:2] = -model[3].weight[:2].abs() - 0.01
        model[3].bias.fill_(0.5)
        model[3].bias[:2] = -0.05                  # small bias, but no input in [0, max] can lift units 0, 1
    result = scan(model, bounded_inputs(300, 10))
    assert result.sites[1].verdict.dead_units == [0, 1]
    # issue 20: the bias cards of sites 1 and 4 (one cause, one action) are one card listing both sites.
    found = one(suggest(result, model), "bias-reset")
    assert found["sites"] == ["1", "4"] and found["units_explained"] == 3
    evidence = found["evidence"]["per_site"]["4"]
    assert evidence["cannot_fire_units"] == [0, 1] and evidence["units"] == [0, 1]
    assert evidence["input_range_source"] == "observed output range of site 1"
    assert evidence["input_rms_source"] == "site 1 (measured)"
    assert found["evidence"]["per_site"]["1"]["units"] == [0]


def test_bias_rule_silent_on_a_healthy_layer():
    model = linear_with_dead_units(dead=0)
    assert by_id(suggest(scan(model, bounded_inputs(200, 10)), model), "bias-reset") == []


# -- BatchNorm --------------------------------------------------------------------------------------

def test_batchnorm_rule_names_the_channels_with_strongly_negative_beta():
    model = ConvBNInplace()  # beta -100 on channels 1, 4, 6; gamma 0.1
    result = scan(model, torch.randn(40, 3, 8, 8))
    found = one(suggest(result, model), "batchnorm-dead")
    assert found["evidence"]["batchnorm"] == "bn"
    assert found["evidence"]["channels"] == [1, 4, 6]
    assert found["evidence"]["beta"] == [-100.0] * 3
    assert found["evidence"]["gamma"] == [pytest.approx(0.1)] * 3
    assert found["evidence"]["beta_strongly_negative"] == 3 and found["evidence"]["gamma_near_zero"] == 0
    apply_code(found, model)
    assert model.bn.bias[[1, 4, 6]].tolist() == [0.0] * 3 and model.bn.weight[[1, 4, 6]].tolist() == [1.0] * 3


def test_batchnorm_rule_sees_gamma_collapsed_to_zero():
    model = ConvBNInplace()
    with torch.no_grad():
        model.bn.bias.zero_()
        model.bn.weight.fill_(1.0)
        model.bn.weight[[2, 3]] = 0.0   # channel = beta = 0 exactly: ReLU never fires
    result = scan(model, torch.randn(40, 3, 8, 8))
    found = one(suggest(result, model), "batchnorm-dead")
    assert found["evidence"]["channels"] == [2, 3]
    assert found["evidence"]["gamma_near_zero"] == 2


def test_batchnorm_rule_silent_for_default_batchnorm():
    model = ConvBNInplace()
    with torch.no_grad():
        model.bn.bias.zero_()
        model.bn.weight.fill_(1.0)
    found = suggest(scan(model, torch.randn(40, 3, 8, 8)), model)
    assert by_id(found, "batchnorm-dead") == []


# -- SELU -----------------------------------------------------------------------------------------

def selu_mlp(init: str = "default", extra: nn.Module | None = None) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(16, 64), nn.SELU(), *( [extra] if extra is not None else []), nn.Linear(64, 4))
    if init == "lecun":
        he_init(model, nonlinearity="linear")
    return model


def test_selu_init_fires_for_default_init_with_the_lecun_numbers():
    model = selu_mlp()
    found = one(suggest(scan(model, torch.randn(100, 16)), model), "selu-init")
    layer = found["evidence"]["layers"]["0"]
    assert layer["lecun_std"] == pytest.approx(1 / 4, rel=1e-3) and layer["fan_in"] == 16
    assert layer["looks_like"] == "pytorch_default"
    apply_code(found, model)
    assert float(model[0].weight.detach().std()) == pytest.approx(0.25, rel=0.15)


def test_selu_rules_silent_for_a_lecun_initialised_plain_mlp():
    model = selu_mlp(init="lecun")
    found = suggest(scan(model, torch.randn(100, 16)), model)
    assert [s["id"] for s in found if s["id"].startswith("selu")] == []


def test_selu_in_a_cnn():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.SELU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    found = one(suggest(scan(model, torch.randn(20, 3, 8, 8)), model), "selu-cnn")
    assert found["evidence"]["conv_layers"] == 1


def test_selu_next_to_batchnorm():
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.SELU(), nn.Linear(32, 2))
    found = one(suggest(scan(model, torch.randn(50, 16)), model), "selu-batchnorm")
    assert "1" in found["title"]
    apply_code(found, model)
    assert isinstance(model[1], nn.Identity)


def test_selu_with_plain_dropout_and_the_alpha_dropout_fix():
    model = selu_mlp(init="lecun", extra=nn.Dropout(0.3))
    found = one(suggest(scan(model, torch.randn(100, 16)), model), "selu-dropout")
    assert found["evidence"]["dropout_layers"] == 1
    apply_code(found, model)
    assert type(model[2]) is nn.AlphaDropout and model[2].p == 0.3
    assert by_id(suggest(scan(model, torch.randn(100, 16)), model), "selu-dropout") == []


# -- saturation -------------------------------------------------------------------------------------

def test_elu_pinned_at_its_floor_gets_lower_lr_normalise_and_check_bias():
    model = linear_with_dead_units(dead=4, width=16, activation=nn.ELU())
    result = scan(model, bounded_inputs(200, 10))
    found = one(suggest(result, model), "saturation")
    entry = found["evidence"]["per_site"]["1"]
    assert entry["saturated"] == 4 and entry["units"] == 16 and entry["saturated_ratio"] == 0.25
    assert entry["min_output"] == pytest.approx(-1.0)
    assert entry["median_bias_saturated"] == -100.0 and entry["median_bias_others"] == 0.5
    bias = one(suggest(result, model), "bias-reset")
    assert bias["evidence"]["units"] == [0, 1, 2, 3]
    assert "at or near the floor where the gradient is ~0" in bias["action"] and "output 0" not in bias["action"]
    assert "learning rate" in found["action"] and "normalise" in found["action"] and "bias" in found["action"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    apply_code(found, model, optimizer=optimizer, print=lambda *a: None)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_saturation_from_json_without_the_model():
    result = scan(linear_with_dead_units(dead=4, width=16, activation=nn.ELU()), bounded_inputs(200, 10))
    found = one(suggest(ScanResult.from_dict(json.loads(result.to_json()))), "saturation")
    assert found["evidence"]["per_site"]["1"]["saturated"] == 4
    assert "feeding_layer" not in found["evidence"]["per_site"]["1"]


def test_relu6_stuck_at_its_upper_bound_is_saturation_not_death():
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU6(), nn.Linear(16, 1))
    with torch.no_grad():
        model[0].bias.fill_(0.5)
        model[0].bias[:5] = 100.0
    result = scan(model, bounded_inputs(200, 10))
    found = one(suggest(result, model), "saturation")
    assert found["evidence"]["per_site"]["1"]["saturated"] == 5
    assert by_id(suggest(result, model), "dead-share") == []


def test_saturation_silent_for_a_healthy_elu():
    model = linear_with_dead_units(dead=0, width=16, activation=nn.ELU())
    assert by_id(suggest(scan(model, bounded_inputs(200, 10)), model), "saturation") == []


# -- depth trend --------------------------------------------------------------------------------------

def test_dead_share_growing_with_depth():
    model = deep_relu_mlp([0, 2, 4, 6, 8, 10])
    result = scan(model, bounded_inputs(100, 10))
    dead = [s.dead for s in result.sites]
    assert dead[:5] == [0, 2, 4, 6, 8] and dead[5] >= 10  # the last layer may lose one more unit naturally
    found = one(suggest(result, model), "depth-trend")
    assert found["evidence"]["spearman_depth_vs_dead_ratio"] == 1.0
    assert found["evidence"]["first_third_mean_dead_ratio"] == pytest.approx((0 + 2) / 64, rel=1e-3)
    assert found["evidence"]["last_third_mean_dead_ratio"] == pytest.approx((8 + dead[5]) / 64, rel=1e-3)
    assert found["evidence"]["dead_ratio_by_depth"] == pytest.approx([d / 32 for d in dead], abs=1e-3)
    assert "BatchNorm" in found["action"] and "residual" in found["action"] and "learning rate" in found["action"]
    namespace = apply_code(found, model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    assert isinstance(model[11], nn.Sequential) and isinstance(model[11][0], nn.BatchNorm1d)
    assert namespace["optimizer"].param_groups[0]["lr"] == pytest.approx(0.1)
    model.eval()
    model(torch.randn(4, 10))  # the patched model still runs


@pytest.mark.parametrize("dead", [[4, 4, 4, 4, 4, 4], [10, 8, 6, 4, 2, 0]])
def test_depth_trend_silent_when_flat_or_shrinking(dead):
    model = deep_relu_mlp(dead)
    assert by_id(suggest(scan(model, bounded_inputs(100, 10)), model), "depth-trend") == []


# -- PReLU ------------------------------------------------------------------------------------------

def prelu_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 12), nn.PReLU(12), nn.Linear(12, 1))


def test_prelu_negative_slopes_explained():
    model = prelu_net()
    with torch.no_grad():
        model[1].weight[:3] = -0.5
    found = one(suggest(scan(model, bounded_inputs(100, 10)), model), "prelu-slopes")
    assert found["severity"] == "info"
    entry = found["evidence"]["per_site"]["1"]
    assert entry["negative_channels"] == [0, 1, 2] and entry["negative_slopes"] == 3
    assert found["title"] == "Site 1: PReLU slopes 3 negative (min -0.5, max 0.25)"
    assert "non-monotonic" in found["action"]


def test_prelu_collapsed_slopes_with_dead_units_is_a_warning():
    model = prelu_net()
    with torch.no_grad():
        model[1].weight[4:8] = 0.0
        model[0].bias[4:8] = -100.0
    found = one(suggest(scan(model, bounded_inputs(100, 10)), model), "prelu-slopes")
    assert found["severity"] == "warning"
    assert found["evidence"]["per_site"]["1"]["collapsed_channels"] == [4, 5, 6, 7]
    apply_code(found, model)
    assert float(model[1].weight.detach().min()) == pytest.approx(0.01)


def test_prelu_default_slopes_are_fine():
    model = prelu_net()
    assert by_id(suggest(scan(model, bounded_inputs(100, 10)), model), "prelu-slopes") == []


def test_prelu_negative_slopes_from_json_summary():
    model = prelu_net()
    with torch.no_grad():
        model[1].weight[:3] = -0.5
    result = ScanResult.from_dict(json.loads(scan(model, bounded_inputs(100, 10)).to_json()))
    found = one(suggest(result), "prelu-slopes")
    entry = found["evidence"]["per_site"]["1"]
    assert entry["nonpositive"] == 3 and entry["slope_min"] == -0.5
    assert found["title"] == "Site 1: PReLU slopes negative (min -0.5, max 0.25)"


def test_many_prelu_sites_make_one_suggestion():
    model = nn.Sequential(*[layer for _ in range(5) for layer in (nn.Linear(12, 12), nn.PReLU(12))])
    with torch.no_grad():
        for k in range(1, 10, 2):
            model[k].weight[:2] = -0.4
    found = one(suggest(scan(model, bounded_inputs(50, 12)), model), "prelu-slopes")
    assert found["sites"] == ["1", "3", "5", "7", "9"] and found["evidence"]["sites"] == 5
    assert found["title"].startswith("5 PReLU sites with negative or collapsed slopes (first: site 1:")
    apply_code(found, model)
    assert all(float(model[k].weight.detach().min()) == pytest.approx(0.01) for k in range(1, 10, 2))


# -- the selection guide ------------------------------------------------------------------------------

def plain_cnn(norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for _ in range(4):
        layers += [nn.Conv2d(channels, 8, 3, padding=1)] + ([nn.BatchNorm2d(8)] if norm else []) + [nn.ReLU()]
        channels = 8
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def test_guide_deep_cnn_without_batchnorm():
    model = plain_cnn(norm=False)
    found = one(suggest(scan(model, torch.randn(8, 3, 8, 8)), model), "guide-cnn-batchnorm")
    assert found["evidence"]["conv_layers"] == 4 and found["evidence"]["norm_layers"] == 0
    apply_code(found, model)
    assert isinstance(model[0], nn.Sequential) and isinstance(model[0][1], nn.BatchNorm2d)
    model.eval()
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 2)


def test_guide_silent_for_a_cnn_with_batchnorm():
    model = plain_cnn(norm=True)
    assert by_id(suggest(scan(model, torch.randn(8, 3, 8, 8)), model), "guide-cnn-batchnorm") == []


def test_guide_selu_for_a_deep_mlp_with_dying_units_only():
    dying = deep_relu_mlp([8, 8, 8])
    found = one(suggest(scan(dying, bounded_inputs(100, 10)), dying), "guide-selu-mlp")
    assert found["evidence"]["linear_layers"] == 4
    apply_code(found, dying)
    assert all(isinstance(dying[k], nn.SELU) for k in (1, 3, 5))
    healthy = deep_relu_mlp([0, 0, 0])
    assert by_id(suggest(scan(healthy, bounded_inputs(100, 10)), healthy), "guide-selu-mlp") == []


class AttentionBlock(nn.Module):
    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.up = nn.Linear(16, 32)
        self.act = activation
        self.down = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x, x, x, need_weights=False)[0]
        return x + self.down(self.act(self.up(x)))


def test_guide_gelu_for_relu_in_a_transformer_block():
    model = AttentionBlock(nn.ReLU())
    found = one(suggest(scan(model, torch.randn(6, 5, 16)), model), "guide-gelu-transformer")
    assert found["sites"] == ["act"]
    apply_code(found, model)
    assert isinstance(model.act, nn.GELU)
    gelu = AttentionBlock(nn.GELU())
    assert by_id(suggest(scan(gelu, torch.randn(6, 5, 16)), gelu), "guide-gelu-transformer") == []


# -- healthy --------------------------------------------------------------------------------------------

def test_healthy_model_says_nothing_wrong_with_the_numbers():
    model = he_init(linear_with_dead_units(dead=0, width=32))
    result = scan(model, bounded_inputs(200, 10))
    assert result.summary.dead == 0
    found = suggest(result, model)
    assert [s["id"] for s in found] == ["healthy"]
    healthy = found[0]
    assert healthy["title"] == "Nothing wrong found: 0 of 32 units dead, none saturated, across 1 site(s) on 200 samples"
    assert healthy["evidence"]["units"] == 32 and healthy["evidence"]["dead"] == 0
    assert healthy["evidence"]["samples"] == 200
    assert healthy["code"] == ""


# -- the feeder heuristic -------------------------------------------------------------------------------

def test_feeding_layers_follow_named_modules_order():
    model = ConvBNInplace()
    feeders = feeding_layers(model)
    assert feeders["relu"][0] == "bn"
    sequential = linear_with_dead_units()
    assert feeding_layers(sequential)["1"][0] == "0"


def test_weight_rules_follow_the_traced_input_not_registration_order():
    class ReluRegisteredFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()
            self.fc = nn.Linear(10, 32)
            with torch.no_grad():
                self.fc.bias[:8] = -100.0

        def forward(self, x):
            return self.relu(self.fc(x))
    model = ReluRegisteredFirst()
    result = scan(model, bounded_inputs(100, 10))
    assert result.sites[0].producer.layer == "fc" and result.sites[0].producer.how == "output"
    found = suggest(result, model)
    assert by_id(found, "dead-share"), "the result-only rule still fires"
    # The capture saw fc's output reach relu, so the rules blame fc although relu is registered first.
    assert one(found, "bias-reset")["evidence"]["layer"] == "fc"
    assert one(found, "bias-reset")["evidence"]["units"] == list(range(8))
    assert list(one(found, "init-not-he")["evidence"]["layers"]) == ["fc"]


def test_weight_rules_run_per_call_of_a_reused_relu():
    # issue 10: relu#0 is fed by fc1 (bias -100 on units 0..2); relu#1 sees fc2(...) + shift, which no
    # layer's parameters decide, so nothing is blamed there and the report says why.
    from truth_models import ReusedReLUBlock
    model = ReusedReLUBlock()
    found = suggest(scan(model, torch.rand(50, 6) * 2 - 1), model)
    bias = one(found, "bias-reset")
    assert bias["sites"] == ["relu#0"] and bias["evidence"]["layer"] == "fc1"
    assert bias["evidence"]["units"] == [0, 1, 2] and bias["units_explained"] == 3
    assert all("relu#1" not in s["sites"] for s in found if s["units_explained"])
    note = one(found, "not-explained")
    assert note["sites"] == ["relu#1"]
    assert "an add, concat or other op comes after fc2" in note["evidence"]["per_site"]["relu#1"]["reason"]


def test_torchscript_model_gets_result_only_rules_without_rule_errors():
    import torch
    from torch import nn

    import deadrelu
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        model[0].bias[:20] = -100.0
    scripted = torch.jit.script(model)
    result = deadrelu.scan(scripted, torch.rand(64, 10) * 2 - 1)
    ids = [s["id"] for s in result.suggestions]
    assert "rule-error" not in ids
    assert "dead-share" in ids


def test_average_ranks_match_pandas_rank_without_importing_it():
    """The depth-trend rule ranks with numpy (pandas cost 0.3-0.5 s of start-up): ties share
    their mean rank and NaN stays NaN, as ``pandas.Series.rank()`` gives."""
    import numpy as np

    from deadrelu.judge.rules.results import _average_ranks
    ranks = _average_ranks(np.array([3.0, 1.0, np.nan, 3.0, 2.0, 1.0]))
    np.testing.assert_array_equal(ranks, [4.5, 1.5, np.nan, 4.5, 3.0, 1.5])
    assert _average_ranks(np.array([])).size == 0
