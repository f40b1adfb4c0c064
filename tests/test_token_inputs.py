"""Token ids, keyword inputs and padding masks, without transformers: models that carry their truth.

* ``PadDetector``: unit 0 fires only on the padding token's embedding, so it is dead exactly
  when the mask leaves padding out;
* ``TokenMLP``: an embedding, a Linear with ``DEAD`` units killed through its bias, a ReLU —
  fed int64 ids through a factory, a state_dict + --arch, TorchScript and ``.pt2``;
* uint8 images into a Conv: cast to float (and said so), or refused with the layer named.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import deadrelu
from deadrelu.cli import app
from deadrelu.schema import validate_result

VOCAB, WIDTH, DEAD = 12, 16, 5
PAD = 0


class PadDetector(nn.Module):
    """Unit 0 of the ReLU is > 0 only at the padding token (id 0); every other unit is > 0 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[PAD, 0] = 1.0
            self.embed.weight[1:, 0] = -1.0
            self.proj.weight.copy_(torch.eye(WIDTH))
            self.proj.bias.fill_(1.0)
            self.proj.bias[0] = 0.0

    def forward(self, input_ids, attention_mask=None):
        return {"hidden": self.act(self.proj(self.embed(input_ids)))}  # a dict output is fine


def padded_tokens(samples: int = 6, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with a different number of real tokens per row, padding (id 0) after them."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (samples, length), generator=generator)
    mask = torch.zeros(samples, length, dtype=torch.long)
    for row in range(samples):
        real = 2 + row % (length - 2)
        mask[row, :real] = 1
    ids[mask == 0] = PAD
    return ids, mask


def test_a_unit_firing_only_on_padding_is_dead_with_the_mask_and_alive_without():
    ids, mask = padded_tokens()
    data = {"input_ids": ids, "attention_mask": mask}
    masked = deadrelu.scan(PadDetector(), data, kwargs=["input_ids", "attention_mask"], mask="attention_mask")
    site = masked.sites[0]
    assert site.verdict.dead_units == [0] and site.observations == int(mask.sum())
    assert masked.data["mask"] == "attention_mask" and masked.coverage["mask_not_applied"] == []
    unmasked = deadrelu.scan(PadDetector(), data, kwargs=["input_ids"])
    assert unmasked.sites[0].dead == 0 and unmasked.sites[0].observations == ids.numel()


def test_mask_from_an_npz_on_the_command_line(runner, tmp_path):
    ids, mask = padded_tokens()
    np.savez(tmp_path / "tokens.npz", input_ids=ids.numpy(), attention_mask=mask.numpy(), labels=ids.numpy())
    torch.save(PadDetector().state_dict(), tmp_path / "m.pt")
    args = ["scan", str(tmp_path / "m.pt"), str(tmp_path / "tokens.npz"), "--arch", f"{__file__}:PadDetector",
            "--kwarg", "input_ids", "--json", "-", "--quiet"]
    with_mask = runner.invoke(app, args + ["--mask", "attention_mask", "--kwarg", "attention_mask"])
    assert with_mask.exit_code == 0, with_mask.stderr
    site = json.loads(with_mask.stdout)["sites"][0]
    assert site["dead_units"] == [0] and site["observations"] == int(mask.sum())
    without = runner.invoke(app, args)
    assert without.exit_code == 0, without.stderr
    assert json.loads(without.stdout)["sites"][0]["dead"] == 0


class FlatTokens(nn.Module):
    """(N, L) ids -> (N*L, D) rows before the MLP, as OPT does."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = PadDetector()

    def forward(self, input_ids):
        hidden = self.inner.embed(input_ids).reshape(-1, WIDTH)
        return self.inner.act(self.inner.proj(hidden))


def test_flattened_token_rows_get_the_flattened_mask():
    ids, mask = padded_tokens()
    result = deadrelu.scan(FlatTokens(), {"input_ids": ids, "attention_mask": mask}, input_key="input_ids",
                           mask="attention_mask")
    assert result.sites[0].verdict.dead_units == [0] and result.sites[0].observations == int(mask.sum())


class PooledHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = PadDetector()
        self.head = nn.Linear(WIDTH, 3)
        self.head_act = nn.ReLU()

    def forward(self, input_ids):
        hidden = self.inner(input_ids)["hidden"]
        return self.head_act(self.head(hidden.mean(1)))


def test_sites_without_the_token_axes_are_listed_as_unmasked():
    ids, mask = padded_tokens()
    result = deadrelu.scan(PooledHead(), {"input_ids": ids, "attention_mask": mask}, input_key="input_ids",
                           mask="attention_mask")
    assert [site.name for site in result.sites] == ["inner.act", "head_act"]
    assert result.sites[0].observations == int(mask.sum()) and result.sites[1].observations == len(ids)
    assert result.coverage["mask_not_applied"] == ["head_act"]
    validate_result(json.loads(result.to_json()), "pooled-head report")
    assert any(w.startswith("mask not applied at 1 site(s)") and w.endswith(": head_act") for w in result.warnings)


def test_a_mask_of_the_wrong_shape_is_refused():
    ids, mask = padded_tokens()
    with pytest.raises(deadrelu.DataLoadError, match=r"the padding mask .attention_mask. has shape \(6, 6\), the token ids \(6, 7\)"):
        deadrelu.scan(PadDetector(), {"input_ids": ids, "attention_mask": mask[:, :6]}, kwargs=["input_ids"],
                      mask="attention_mask")


@dataclasses.dataclass
class Output:
    logits: torch.Tensor


class TokenMLP(nn.Module):
    """Embedding -> Linear (units 0..DEAD-1 killed through the bias) -> ReLU; returns a dataclass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.fc.bias[:DEAD] = -100.0

    def forward(self, input_ids):
        return Output(self.act(self.fc(self.embed(input_ids))))


class ScriptableTokenMLP(TokenMLP):
    def forward(self, input_ids):  # TorchScript and export take tensor outputs
        return self.act(self.fc(self.embed(input_ids)))


def test_int64_ids_through_every_model_format(runner, tmp_path):
    ids = torch.randint(0, VOCAB, (20, 9), generator=torch.Generator().manual_seed(2))
    np.save(tmp_path / "ids.npy", ids.numpy())
    model = ScriptableTokenMLP().eval()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    torch.jit.save(torch.jit.script(model), str(tmp_path / "ts.pt"))
    torch.export.save(torch.export.export(model, (ids[:4],), dynamic_shapes={"input_ids": {0: torch.export.Dim(
        "batch", min=2)}}), str(tmp_path / "ep.pt2"))
    data = str(tmp_path / "ids.npy")
    runs = {"factory": ["--model", f"{__file__}:TokenMLP", data],
            "arch": [str(tmp_path / "sd.pt"), data, "--arch", f"{__file__}:ScriptableTokenMLP"],
            "torchscript": [str(tmp_path / "ts.pt"), data],
            "export": [str(tmp_path / "ep.pt2"), data]}
    for fmt, args in runs.items():
        done = runner.invoke(app, ["scan", *args, "--json", "-", "--quiet", "--batch-size", "8"])
        assert done.exit_code == 0, (fmt, done.stderr)
        report = json.loads(done.stdout)
        assert [(s["name"], s["dead"], s["observations"]) for s in report["sites"]] == [("act", DEAD, ids.numel())], fmt
        assert not any("cast" in warning for warning in report["warnings"]), fmt


def test_float_ids_name_the_embedding_that_rejected_them():
    with pytest.raises(deadrelu.ForwardError) as caught:
        deadrelu.scan(TokenMLP(), torch.randint(0, VOCAB, (4, 3)).float())
    assert caught.value.hint == "embed (Embedding(num_embeddings=12)) rejected the input: it looks up integer ids; " \
                                "feed int64 token ids"


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    def forward(self, x):
        return self.features(x)


def test_uint8_images_still_scan_and_the_report_says_they_were_cast(runner, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    torch.save(TinyConv().state_dict(), tmp_path / "conv.pt")
    base = ["scan", str(tmp_path / "conv.pt"), str(tmp_path / "images.npy"), "--arch", f"{__file__}:TinyConv",
            "--json", "-", "--quiet"]
    done = runner.invoke(app, base)
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["sites"][0]["observations"] == 6 * 6 * 6
    assert ("integer data cast to float32: features.0 (Conv2d(in_channels=3)) rejected them as they were "
            "(--input-dtype float says so up front; --scale 0.00392 for 0-255 images)") in report["warnings"]
    scaled = json.loads(runner.invoke(app, base + ["--scale", "0.00392"]).stdout)
    assert "data were uint8 integers; cast to float32, scaled by 0.00392" in scaled["warnings"]
    kept = runner.invoke(app, base + ["--input-dtype", "keep"])
    assert kept.exit_code == 2
    assert kept.stderr.splitlines()[-1] == ("hint: features.0 (Conv2d(in_channels=3)) rejected the uint8 input: "
                                            "pass --input-dtype float (and --scale for 0-255 images)")


def test_labels_in_dict_batches_are_never_fed():
    ids, mask = padded_tokens()
    batches = [{"input_ids": ids, "attention_mask": mask, "labels": ids}]
    result = deadrelu.scan(PadDetector(), batches)
    # input_ids + attention_mask as keywords, the attention mask as padding mask, labels left out
    assert result.sites[0].verdict.dead_units == [0] and result.sites[0].observations == int(mask.sum())
    assert ("dict batches fed as keyword inputs: input_ids, attention_mask (labels left out); "
            "padding mask: attention_mask") in result.warnings


def test_the_mask_applies_in_torchscript_too():
    class Detector(PadDetector):
        def forward(self, input_ids):
            return self.act(self.proj(self.embed(input_ids)))

    ids, mask = padded_tokens()
    data = {"input_ids": ids, "attention_mask": mask}
    for model in (Detector(), torch.jit.script(Detector())):
        result = deadrelu.scan(model, data, input_key="input_ids", mask="attention_mask")
        assert result.sites[0].verdict.dead_units == [0] and result.sites[0].observations == int(mask.sum())
