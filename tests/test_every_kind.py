"""Every kind in ``kinds.KINDS``, in place and not, on both capture paths, against plain-hook references.

Each model is a conv (or two Linears, for gated products) feeding one activation module,
built so that its truth is known: units ``DEAD`` have their pre-activation pushed to -100
(below every kind's dead region: 0, Hardtanh's -0.5, Hardswish's and Hardsigmoid's -3),
unit ``HIGH`` to +100 (at the upper bound of the bounded kinds), the rest random.

The reference is computed here, not by deadrelu: a plain forward pre-hook keeps the
pre-activation, and the kind's definition (written out below, independently of
``kinds.py``) gives each unit's active count and its counts at the floor / bounds. Every
path must match it exactly: the eager scan (module hooks), the TorchScript scan and the
``torch.export`` scan (aten-level dispatch), the exported program saved and loaded first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deadrelu
from deadrelu.kinds import KINDS, SELU_ALPHA, SELU_SCALE

UNITS = 8
DEAD = [0, 1]
HIGH = [2]
RTOL = 0.01  # Thresholds.saturation_rtol
SATURATION = 0.99  # Thresholds.saturation


class ReLUSquaredActivation(nn.Module):
    """As transformers writes it: relu, then square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))


@dataclass(frozen=True)
class Truth:
    """A kind's definition, written out for the reference.

    Attributes:
        active: pre-activation -> active (bool), elementwise.
        low: the floor (asymptotic: ELU family) or lower bound (ReLU6, Hardtanh, Hardsigmoid).
        high: the upper bound, for bounded kinds.
        output: pre-activation -> output, to count the observations at the floor / bounds.
        asymptotic: the floor is approached (ELU family), so "at it" is within RTOL.
    """

    active: Callable[[torch.Tensor], torch.Tensor]
    output: Callable[[torch.Tensor], torch.Tensor] | None = None
    low: float | None = None
    high: float | None = None
    asymptotic: bool = False


def positive(x: torch.Tensor) -> torch.Tensor:
    return x > 0


def prelu_module() -> nn.PReLU:
    module = nn.PReLU(UNITS)
    with torch.no_grad():  # negative slopes on odd units: "active" must come from the input
        module.weight.copy_(torch.tensor([0.25, -0.5] * (UNITS // 2)))
    return module


#: kind -> (activation module for inplace False/True (None: no inplace flag), its truth)
ELEMENTWISE: dict[str, tuple[Callable[[bool], nn.Module], bool, Truth]] = {
    "ReLU": (lambda ip: nn.ReLU(inplace=ip), True, Truth(positive)),
    "ReLU6": (lambda ip: nn.ReLU6(inplace=ip), True,
              Truth(positive, lambda x: x.clamp(0, 6), low=0.0, high=6.0)),
    "Hardtanh": (lambda ip: nn.Hardtanh(-0.5, 2.0, inplace=ip), True,
                 Truth(lambda x: x > -0.5, lambda x: x.clamp(-0.5, 2.0), low=-0.5, high=2.0)),
    "LeakyReLU": (lambda ip: nn.LeakyReLU(-0.2, inplace=ip), True, Truth(positive)),
    "PReLU": (lambda ip: prelu_module(), False, Truth(positive)),
    "RReLU": (lambda ip: nn.RReLU(0.1, 0.3, inplace=ip), True, Truth(positive)),
    "SELU": (lambda ip: nn.SELU(inplace=ip), True,
             Truth(positive, lambda x: SELU_SCALE * torch.where(x > 0, x, SELU_ALPHA * torch.expm1(x)),
                   low=-SELU_SCALE * SELU_ALPHA, asymptotic=True)),
    "CELU": (lambda ip: nn.CELU(0.5, inplace=ip), True,
             Truth(positive, lambda x: torch.where(x > 0, x, 0.5 * torch.expm1(x / 0.5)), low=-0.5,
                   asymptotic=True)),
    "ELU": (lambda ip: nn.ELU(0.5, inplace=ip), True,
            Truth(positive, lambda x: torch.where(x > 0, x, 0.5 * torch.expm1(x)), low=-0.5, asymptotic=True)),
    "GELU": (lambda ip: nn.GELU(approximate="tanh"), False, Truth(positive)),
    "SiLU": (lambda ip: nn.SiLU(inplace=ip), True, Truth(positive)),
    "Mish": (lambda ip: nn.Mish(inplace=ip), True, Truth(positive)),
    # x * relu6(x + 3) / 6: 0 with gradient 0 at and below -3; negative but alive in (-3, 0).
    "Hardswish": (lambda ip: nn.Hardswish(inplace=ip), True, Truth(lambda x: x > -3)),
    "Hardsigmoid": (lambda ip: nn.Hardsigmoid(inplace=ip), True,
                    Truth(lambda x: x > -3, lambda x: (x / 6 + 0.5).clamp(0, 1), low=0.0, high=1.0)),
    "ReLUSquared": (lambda ip: ReLUSquaredActivation(), False, Truth(positive)),
}

#: gated product kind -> (the gate's activation for inplace False/True, has an inplace flag, gate function)
GATED: dict[str, tuple[Callable[[bool], nn.Module], bool, Callable[[torch.Tensor], torch.Tensor]]] = {
    "SwiGLU": (lambda ip: nn.SiLU(inplace=ip), True, F.silu),
    "GeGLU": (lambda ip: nn.GELU(), False, F.gelu),
    "ReGLU": (lambda ip: nn.ReLU(inplace=ip), True, F.relu),
    # A gate no kind names (Mish) makes a GLU product.
    "GLU": (lambda ip: nn.Mish(inplace=ip), True, F.mish),
}


class ConvAct(nn.Module):
    """conv -> activation; the conv's bias plants the truth (DEAD at -100, HIGH at +100)."""

    def __init__(self, act: nn.Module, channels: int = UNITS) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.act = act
        with torch.no_grad():
            self.conv.weight.mul_(0.5)
            for offset in range(0, channels, UNITS):  # GLU: both halves of the split axis
                self.conv.bias[[offset + unit for unit in DEAD]] = -100.0
                self.conv.bias[[offset + unit for unit in HIGH]] = 100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class GatedMlp(nn.Module):
    """``act(gate(x)) * up(x)``; up's rows DEAD are 0, so the product is 0 there however lively the gate."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(6, UNITS)
        self.up_proj = nn.Linear(6, UNITS)
        self.act = act
        with torch.no_grad():
            self.up_proj.weight[DEAD] = 0.0
            self.up_proj.bias[DEAD] = 0.0
            self.gate_proj.weight[HIGH] = 0.0
            self.gate_proj.bias[HIGH] = -20.0  # the gate's own dead unit (its product lives where act(-20) != 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.gate_proj(x)) * self.up_proj(x)


def images() -> torch.Tensor:
    return torch.randn(10, 3, 5, 5, generator=torch.Generator().manual_seed(7))


def tokens() -> torch.Tensor:
    return torch.randn(10, 4, 6, generator=torch.Generator().manual_seed(8))


def captured(model: nn.Module, x: torch.Tensor, *modules: str) -> dict[str, torch.Tensor]:
    """The inputs (pre-activations) and outputs of ``modules`` in a plain forward pass, by plain hooks."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in modules:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(
            lambda mod, args, name=name: seen.__setitem__(f"{name}:in", args[0].detach().clone())))
        handles.append(module.register_forward_hook(
            lambda mod, args, out, name=name: seen.__setitem__(f"{name}:out", out.detach().clone())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def unit_counts(flags: torch.Tensor, unit_dim: int) -> np.ndarray:
    """Per-unit counts of a boolean tensor (every axis but the unit axis summed)."""
    dims = tuple(axis for axis in range(flags.ndim) if axis != unit_dim)
    return flags.sum(dims).numpy()


@dataclass
class Reference:
    name: str
    kind: str
    active: np.ndarray
    at_floor: np.ndarray | None = None
    at_ceiling: np.ndarray | None = None
    observations: int = 0

    @property
    def dead_units(self) -> list[int]:
        return [int(unit) for unit in np.flatnonzero(self.active == 0)]

    def saturated_units(self) -> list[int]:
        at = self.at_floor if self.at_ceiling is None else self.at_floor + self.at_ceiling
        return [int(unit) for unit in np.flatnonzero(at / self.observations >= SATURATION)]


def elementwise_reference(kind: str, pre: torch.Tensor) -> Reference:
    truth = ELEMENTWISE[kind][2]
    reference = Reference("act", kind, unit_counts(truth.active(pre), 1), observations=pre.numel() // pre.shape[1])
    if truth.low is not None:
        out = truth.output(pre)
        floor_at = truth.low + abs(truth.low) * RTOL if truth.asymptotic else truth.low
        reference.at_floor = unit_counts(out <= floor_at, 1)
        if truth.high is not None:
            reference.at_ceiling = unit_counts(out >= truth.high, 1)
    return reference


def build(kind: str, inplace: bool) -> tuple[nn.Module, torch.Tensor, list[Reference]]:
    """A model of ``kind``, its data and the plain-hook references of its sites."""
    torch.manual_seed(0)
    if kind in ELEMENTWISE:
        model, x = ConvAct(ELEMENTWISE[kind][0](inplace)).eval(), images()
        pre = captured(model, x, "act")["act:in"]
        return model, x, [elementwise_reference(kind, pre)]
    if kind == "GLU" and not inplace:  # nn.GLU itself: first half * sigmoid(second half) of 2 x UNITS channels
        model, x = ConvAct(nn.GLU(dim=1), channels=2 * UNITS).eval(), images()
        out = captured(model, x, "act")["act:out"]
        return model, x, [Reference("act", "GLU", unit_counts(out != 0, 1), observations=out.numel() // UNITS)]
    make_gate, _has_flag, gate_function = GATED[kind]
    model, x = GatedMlp(make_gate(inplace)).eval(), tokens()
    seen = captured(model, x, "act", "up_proj")
    gate_pre, up = seen["act:in"], seen["up_proj:out"]
    gate_kind = type(model.act).__name__
    product = gate_function(gate_pre) * up
    observations = x.shape[0] * x.shape[1]
    return model, x, [
        Reference("act", gate_kind, unit_counts(gate_pre > 0, 2), observations=observations),
        Reference(f"<root>:{kind.lower()}#0", kind, unit_counts(product != 0, 2), observations=observations)]


def cases() -> list[tuple[str, bool]]:
    found = []
    for kind in KINDS:
        flag = ELEMENTWISE[kind][1] if kind in ELEMENTWISE else GATED[kind][1]
        found += [(kind, False)] + ([(kind, True)] if flag else [])
    return found


def test_every_kind_has_a_case_here():
    """A new kind in KINDS fails here until it has a model and a written-out truth."""
    assert set(ELEMENTWISE) | set(GATED) == set(KINDS)


def exported(model: nn.Module, x: torch.Tensor) -> torch.export.ExportedProgram:
    program = torch.export.export(model, (x[:2],), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2)}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer)


PATHS = {
    "eager": lambda model, x: model,
    "torchscript": lambda model, x: torch.jit.script(model),
    "export": exported,
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind, inplace", cases(), ids=lambda value: str(value))
def test_scan_matches_the_plain_hook_reference(kind, inplace, path):
    model, x, references = build(kind, inplace)
    result = deadrelu.scan(PATHS[path](model, x), x, batch_size=4)
    assert [(site.name, site.kind) for site in result.sites] == [(r.name, r.kind) for r in references]
    for site, reference in zip(result.sites, references):
        label = f"{kind} inplace={inplace} {path}: {site.name}"
        assert site.stats.observations.tolist() == [reference.observations] * UNITS, label
        assert site.stats.active.tolist() == reference.active.tolist(), label
        assert site.verdict.dead_units == reference.dead_units, label
        if reference.at_floor is not None:
            assert site.saturation == ("bounds" if reference.at_ceiling is not None else "floor"), label
            assert site.stats.at_floor.tolist() == reference.at_floor.tolist(), label
            if reference.at_ceiling is not None:
                assert site.stats.at_ceiling.tolist() == reference.at_ceiling.tolist(), label
            assert site.verdict.saturated_units == reference.saturated_units(), label
        else:
            assert site.saturation is None and site.saturated == 0, label


def test_the_planted_truth_is_what_the_references_say():
    """The references themselves: planted units are dead for every kind; bounded kinds saturate at both ends."""
    for kind, inplace in cases():
        references = build(kind, inplace)[2]
        product = references[-1]
        if len(references) == 1:
            assert product.dead_units == DEAD, (kind, inplace)
        else:
            # A gate dead at -20 leaves its product unit at 0 too only where act(-20) is exactly 0 (ReLU, GELU).
            gate_zero = bool(GATED[kind][2](torch.tensor(-20.0)) == 0)
            assert product.dead_units == DEAD + (HIGH if gate_zero else []), (kind, inplace)
            assert gate_zero == (kind in ("ReGLU", "GeGLU")), kind
            assert references[0].dead_units == HIGH, (kind, inplace)
        if kind in ("ReLU6", "Hardtanh", "Hardsigmoid"):
            assert product.saturated_units() == DEAD + HIGH, kind
        if kind in ("SELU", "CELU", "ELU"):
            assert product.saturated_units() == DEAD, kind
