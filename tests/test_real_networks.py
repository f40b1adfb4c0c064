"""Reports on networks built like torchvision's and timm's (issue 10): every call site linked to the
layer that fed it, causes found for a reused ReLU's second call, no blame across a residual add,
norm layers recognised by isinstance, and a terminal report that fits 80 columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.cli import app
from deadrelu.judge.suggestions import suggest
from real_nets import (BROKEN_CHANNELS, HARDSWISH_DEAD, DenseLike, broken_resnet, images, mobilenetv3_like, push_beta,
                       timm_like, timm_stem_only)

NETS = str(Path(__file__).with_name("real_nets.py"))


def by_id(found, rule_id):
    return [s for s in found if s["id"] == rule_id]


def one(found, rule_id):
    matches = by_id(found, rule_id)
    assert len(matches) == 1, [s["id"] for s in found]
    return matches[0]


@pytest.fixture(scope="module")
def resnet():
    model = broken_resnet()
    return model, deadrelu.scan(model, images())


# -- torchvision-style ResNet-50 with a reused in-place ReLU ---------------------------------------

def test_every_call_site_is_linked_to_the_layer_that_fed_it(resnet):
    _, result = resnet
    assert len(result.sites) == 49
    links = {site.name: (site.producer.layer, site.producer.how) for site in result.sites}
    assert links["relu"] == ("bn1", "output")
    assert links["layer3.4.relu#0"] == ("layer3.4.bn1", "output")
    assert links["layer3.4.relu#1"] == ("layer3.4.bn2", "output")
    # `out += identity` writes into bn3's output in place: the third call is not bn3's output any more.
    assert links["layer3.4.relu#2"] == ("layer3.4.bn3", "after-op")
    assert links["layer2.0.relu#2"] == ("layer2.0.downsample.1", "after-op")  # the shortcut ran last
    assert sum(how == "after-op" for _, how in links.values()) == 16
    assert result.warnings == (), "no unit-axis warning on a plain ResNet"


def test_the_second_call_of_a_reused_relu_gets_the_batchnorm_cause(resnet):
    _, result = resnet
    site = result.site("layer3.4.relu#1")
    assert site.verdict.dead_units == BROKEN_CHANNELS
    found = one(result.suggestions, "batchnorm-dead")
    assert found["sites"] == ["layer3.4.relu#1"]
    assert found["evidence"]["batchnorm"] == "layer3.4.bn2"
    assert found["evidence"]["channels"] == BROKEN_CHANNELS
    assert found["evidence"]["beta"] == [-10.0] * 8
    assert found["title"] == "layer3.4.relu#1 ← layer3.4.bn2: β < −3·|γ| on channels 0–7"
    assert found["units_explained"] == 8 and found["rank"] == 1
    assert found["severity"] == "warning" and not found["destructive"]
    assert found["changes"] == "sets β = 0 and γ = 1 on 8 channel(s) of layer3.4.bn2"
    generic = one(result.suggestions, "dead-share")
    assert generic["rank"] > found["rank"] and generic["units_explained"] == 0


def test_the_link_is_in_the_json_and_survives_a_round_trip(resnet):
    _, result = resnet
    data = json.loads(result.to_json())
    entry = next(s for s in data["sites"] if s["name"] == "layer3.4.relu#1")
    assert entry["producer"] == {"layer": "layer3.4.bn2", "how": "output"}
    again = deadrelu.ScanResult.from_dict(data)
    assert again.site("layer3.4.relu#1").producer == result.site("layer3.4.relu#1").producer
    # ... so the weight rules run again, per call site, from a saved report plus the model.
    model, _ = resnet
    assert one(suggest(again, model), "batchnorm-dead")["sites"] == ["layer3.4.relu#1"]


def test_its_code_revives_the_channels(resnet):
    model, result = resnet
    model = broken_resnet()
    found = one(result.suggestions, "batchnorm-dead")
    exec(found["code"], {"model": model, "torch": torch})  # noqa: S102 - the snippet under test
    assert deadrelu.scan(model, images()).site("layer3.4.relu#1").dead == 0


def test_cli_at_80_columns_is_short_and_names_the_site_in_full(runner, tmp_path):
    done = runner.invoke(app, ["scan", "--model", f"{NETS}:broken_resnet",
                                            "--data", f"{NETS}:resnet_data"], env={"COLUMNS": "80"})
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert lines[0].startswith("WARN  worst site layer3.4.relu#1: 8 of 16 dead (50.0%)")
    assert any(line.startswith("layer3.4.relu#1 ") for line in lines), "the problem site, in full, in the table"
    assert any(line.strip().startswith("48 sites clean") for line in lines)
    # issue 22: the action (where: what to do → what it explains), wrapped under itself; the evidence
    # ('layer3.4.relu#1 ← layer3.4.bn2: β < −3·|γ| on channels 0–7') is one --verbose away
    start = lines.index("  #1  WARN  layer3.4.bn2: reset β to 0 and γ to 1 on 8 channels → explains 8 of")
    assert lines[start + 1] == "            8 dead at layer3.4.relu#1"
    assert not any("β < −3·|γ|" in line for line in lines)
    assert len(lines) <= 20, done.stdout


def test_cli_verbose_prints_code_unwrapped(runner):
    done = runner.invoke(app, ["scan", "--model", f"{NETS}:broken_resnet",
                                            "--data", f"{NETS}:resnet_data", "--verbose"], env={"COLUMNS": "60"})
    assert done.exit_code == 0, done.output
    assert "      bn = model.get_submodule('layer3.4.bn2')" in done.stdout
    assert "      with torch.no_grad():" in done.stdout
    assert "    bn.bias[[0, 1, 2, 3, 4, 5, 6, 7]] = 0.0" in done.stdout, "a code line is never cut or wrapped"


def test_cli_output_to_a_log_keeps_full_names(runner, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    done = runner.invoke(app, ["scan", "--model", f"{NETS}:broken_resnet",
                                            "--data", f"{NETS}:resnet_data"], env={"COLUMNS": None})
    assert done.exit_code == 0, done.output
    action = one(json.loads(runner.invoke(app, [
        "scan", "--model", f"{NETS}:broken_resnet", "--data", f"{NETS}:resnet_data", "--json", "-"]).stdout
    )["suggestions"], "batchnorm-dead")["action_line"]
    # the default view leads with the action line (issue 22), one line in a log
    assert action in done.stdout, "not a terminal and no COLUMNS: suggestion lines are not cut"


# -- timm-style networks ---------------------------------------------------------------------------

def test_zero_gamma_batchnorm_before_a_residual_add_is_not_blamed():
    model = timm_like()
    result = deadrelu.scan(model, images())
    site = result.site("blocks.1.act2")
    assert site.verdict.dead_units == [0, 1, 2, 3]  # from the shortcut's BatchNorm, through the add
    assert float(model.blocks[1].bn2.weight.detach().abs().max()) == 0.0
    found = result.suggestions
    assert by_id(found, "batchnorm-dead") == [], "bn2 (γ = 0, zero-init residual) feeds the add, not the site"
    note = one(found, "not-explained")
    assert note["sites"] == ["blocks.1.act2"]
    assert note["evidence"]["per_site"]["blocks.1.act2"]["reason"] == (
        "an add, concat or other op comes after blocks.1.bn2 (a residual connection?)")


def test_an_activation_inside_batchnormact_is_linked_to_that_norm_and_its_beta_blamed():
    model = timm_like()
    push_beta(model, "stem.2.bn1", [1, 5])
    result = deadrelu.scan(model, images())
    site = result.site("stem.2.bn1.act")
    assert (site.producer.layer, site.producer.how) == ("stem.2.bn1", "enclosing")
    found = [s for s in by_id(result.suggestions, "batchnorm-dead") if s["sites"] == ["stem.2.bn1.act"]]
    assert len(found) == 1 and found[0]["evidence"]["batchnorm"] == "stem.2.bn1"
    assert found[0]["evidence"]["channels"] == [1, 5]


def test_batchnormact_counts_as_normalisation_for_the_selection_guide():
    model = timm_stem_only()
    result = deadrelu.scan(model, images())
    assert by_id(suggest(result, model), "guide-cnn-batchnorm") == [], "4 convs, each through BatchNormAct2d"


def test_relu6_sites_are_called_relu6_in_advice():
    model = timm_like(nn.ReLU6)
    result = deadrelu.scan(model, images())
    found = one(result.suggestions, "dead-share")
    assert found["title"].startswith("1 ReLU6 site(s) have more than 10% dead units")
    assert "Replace the ReLU6 at these sites" in found["action"] and "clip at 6" in found["action"]
    assert "a dead ReLU6 unit gets no gradient" in found["code"]


def test_a_dense_block_concat_is_not_an_ambiguous_axis():
    torch.manual_seed(0)
    result = deadrelu.scan(DenseLike().eval(), images(8, size=4))
    assert [site.unit_dim for site in result.sites] == [1, 1, 1, 1]
    assert [site.units for site in result.sites] == [8, 12, 16, 20]
    assert result.warnings == ()


def test_batch_size_equal_to_the_channel_count_is_not_ambiguous():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    result = deadrelu.scan(model, torch.randn(8, 3, 8, 8), batch_size=8)
    assert result.sites[0].unit_dim == 1 and result.warnings == ()


# -- timm's MobileNetV3: in-place Hardswish inside BatchNormAct2d -----------------------------------

def _exported(model: nn.Module, x: torch.Tensor):
    import io
    program = torch.export.export(model, (x[:2],), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2)}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer)


def test_mobilenetv3_in_place_hardswish_channels_killed_by_beta_are_dead_on_every_path():
    model = mobilenetv3_like()
    x = images()
    for path, scanned in (("eager", model), ("torchscript", torch.jit.script(model)), ("export", _exported(model, x))):
        result = deadrelu.scan(scanned, x, batch_size=8)
        hardswish = {site.name: site.verdict.dead_units for site in result.sites if site.kind == "Hardswish"}
        # Channels at beta -1.5 mostly output negative values but sit above -3: alive, not dead.
        assert hardswish == {"bn1.act": [], "blocks.0.bn1.act": HARDSWISH_DEAD, "blocks.0.bn2.act": [],
                             "blocks.1.bn1.act": [], "blocks.1.bn2.act": [], "act2": []}, path
        assert [site.kind for site in result.sites].count("Hardsigmoid") == 2, path
        if path == "eager":
            found = one(result.suggestions, "batchnorm-dead")
            assert found["sites"] == ["blocks.0.bn1.act"]
            assert found["evidence"]["batchnorm"] == "blocks.0.bn1"
            assert found["evidence"]["channels"] == HARDSWISH_DEAD
