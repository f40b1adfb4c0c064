"""A padding mask is about the padded sequence: sites it never reaches (a CLIP vision tower fed
pixels) are neither masked nor told "padding counted there"; sites it reaches but whose
activation does not start with its (N, L) axes still are (issue 19, item 7).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deadrelu

VOCAB, WIDTH, LENGTH, SAMPLES = 12, 8, 7, 6
PATCHES = 9  # a 6x6 image in 2x2 patches: never the text's length


def padded_batch() -> dict[str, torch.Tensor]:
    """Token ids with 2..6 real tokens per row (padding id 0 after them), a mask, and pixels."""
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB, (SAMPLES, LENGTH), generator=generator)
    mask = torch.zeros(SAMPLES, LENGTH, dtype=torch.long)
    for row in range(SAMPLES):
        mask[row, :2 + row % (LENGTH - 2)] = 1
    ids[mask == 0] = 0
    pixels = torch.randn(SAMPLES, 3, 6, 6, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


class TwoTowers(nn.Module):
    """CLIP's layout by hand: a text tower fed the padded ids, a vision tower fed pixels.

    * ``text_act``: (N, L, D) — masked: only real tokens are observations;
    * ``conv_act``: a Conv1d over the tokens, (N, D, L) — reached by the padded sequence but
      not starting with (N, L): listed as mask not applied;
    * ``vision_act`` (N, D, 3, 3) and ``patch_act`` (N, 9, D): pixels only — neither masked
      nor listed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.text_fc = nn.Linear(WIDTH, WIDTH)
        self.text_act = nn.ReLU()
        self.text_conv = nn.Conv1d(WIDTH, WIDTH, 1)
        self.conv_act = nn.ReLU()
        self.patch = nn.Conv2d(3, WIDTH, 2, stride=2)
        self.vision_act = nn.ReLU()
        self.patch_fc = nn.Linear(WIDTH, WIDTH)
        self.patch_act = nn.GELU()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor) -> torch.Tensor:
        text = self.text_act(self.text_fc(self.embed(input_ids)))
        conv = self.conv_act(self.text_conv(text.transpose(1, 2)))
        pixels = self.vision_act(self.patch(pixel_values))
        patches = self.patch_act(self.patch_fc(pixels.flatten(2).transpose(1, 2)))
        return text.mean(1) + conv.mean(2) + patches.mean(1)


def scan_towers(model: nn.Module) -> deadrelu.ScanResult:
    return deadrelu.scan(model, padded_batch(), kwargs=["input_ids", "attention_mask", "pixel_values"],
                         mask="attention_mask", batch_size=3)


@pytest.mark.parametrize("script", [False, True], ids=["eager", "torchscript"])
def test_only_sites_the_padded_sequence_reaches_are_listed(script):
    model = TwoTowers().eval()
    result = scan_towers(torch.jit.script(model) if script else model)
    real = int(padded_batch()["attention_mask"].sum())
    observations = {site.name: int(site.stats.observations[0]) for site in result.sites}
    assert observations == {"text_act": real, "conv_act": SAMPLES * LENGTH, "vision_act": SAMPLES * 3 * 3,
                            "patch_act": SAMPLES * PATCHES}
    assert result.coverage["masked"] is True
    assert result.coverage["mask_not_applied"] == ["conv_act"]
    assert ("mask not applied at 1 site(s) that the padded sequence reaches but whose activation does not start "
            "with its (N, L) axes (padding counted there): conv_act") in result.warnings


def test_a_clip_vision_tower_is_not_told_about_padding():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=6, patch_size=2, num_channels=3),
        projection_dim=8)
    model = transformers.CLIPModel(config).eval()
    result = scan_towers(model)
    real = int(padded_batch()["attention_mask"].sum())
    observations = {site.name: int(site.stats.observations[0]) for site in result.sites}
    # 9 patches and a class token per image; the text tower's activations see real tokens only.
    assert observations == {**{f"vision_model.encoder.layers.{i}.mlp.activation_fn": SAMPLES * (PATCHES + 1)
                               for i in (0, 1)},
                            **{f"text_model.encoder.layers.{i}.mlp.activation_fn": real for i in (0, 1)}}
    assert result.coverage["mask_not_applied"] == []
    assert not any("mask not applied" in warning for warning in result.warnings)
