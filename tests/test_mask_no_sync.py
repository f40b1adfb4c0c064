"""The padding mask is read once per forward pass, by the first site it applies to, and never in
``set_mask``: setting it costs no host sync on an accelerator, and the statistics are unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deadrelu

N, L, D = 3, 5, 2
#: real tokens per sequence: 5, 3, 1 (9 of 15 positions)
LENGTHS = (5, 3, 1)


def padding_mask() -> torch.Tensor:
    return torch.arange(L).expand(N, L) < torch.tensor(LENGTHS)[:, None]


def tokens() -> torch.Tensor:
    """Feature 0 is 0 at real positions and 10 at padding; feature 1 is 1 everywhere."""
    x = torch.zeros(N, L, D)
    x[..., 1] = 1.0
    x[..., 0] = torch.where(padding_mask(), 0.0, 10.0)
    return x


class TokenMLP(nn.Module):
    """(N, L, D) -> Linear -> ReLU over 3 units: unit 0 = x0 - 1 (dead on real tokens, active on
    padding), unit 1 = x1 (always active), unit 2 = -x1 (always dead). ``flat``: the MLP runs on
    the ``(N*L, D)`` view, as some models flatten tokens before the FFN."""

    def __init__(self, flat: bool = False) -> None:
        super().__init__()
        self.flat = flat
        self.fc = nn.Linear(D, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([-1.0, 0.0, 0.0]))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flat:
            return self.act(self.fc(x.reshape(-1, D))).reshape(N, L, 3)
        return self.act(self.fc(x))


@pytest.mark.parametrize("flat", [False, True])
def test_masked_counts_are_exact(flat):
    masked = deadrelu.scan(TokenMLP(flat), [{"x": tokens(), "attention_mask": padding_mask()}], kwargs=["x"],
                           mask="attention_mask")
    site = masked.site("act")
    assert site.observations == sum(LENGTHS) == 9
    assert site.dead == 2  # units 0 and 2: unit 0 fires on padding only
    stats = site.to_dict()["unit_stats"]
    assert stats["active"] == [0, 9, 0] and stats["observations"] == [9, 9, 9]
    assert stats["maximum"] == [0.0, 1.0, 0.0]  # padding's 9 at unit 0 left out
    unmasked = deadrelu.scan(TokenMLP(flat), tokens())
    assert unmasked.site("act").observations == N * L and unmasked.site("act").dead == 1


def test_a_full_mask_changes_nothing():
    x = tokens()
    x[..., 0] = 0.0
    full = torch.ones(N, L, dtype=torch.bool)
    with_mask = deadrelu.scan(TokenMLP(), [{"x": x, "attention_mask": full}], kwargs=["x"], mask="attention_mask")
    without = deadrelu.scan(TokenMLP(), [{"x": x}], kwargs=["x"])
    assert with_mask.site("act").to_dict()["unit_stats"] == without.site("act").to_dict()["unit_stats"]


class Pooled(nn.Module):
    """A head on pooled features: its (N, 7) activation holds no (N, L) axes, so no mask applies."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act = nn.Linear(D, 7), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x.mean(1)))


def test_set_mask_reads_nothing_from_the_mask():
    """A mask on the meta device has no values: reading it (``bool(mask.all())``, a host sync on a GPU)
    raises. Setting it and running sites it does not apply to reads nothing."""
    model = Pooled()
    with deadrelu.capture(model) as cap:
        cap.set_mask(torch.ones(N, L, dtype=torch.bool, device="meta"))
        model(tokens())
        model(tokens())
    result = cap.result()
    assert result.site("act").observations == 2 * N
    assert result.coverage["masked"] is True and result.coverage["mask_not_applied"] == []
