"""``--functional auto`` when batch 1 made functional calls or gated products inside submodules:
functional capture stays on only while those modules' forwards run (the mode and the running-module
stack are turned on by their own hooks), the global module hooks go, and the activation modules
outside them run hook-free. The sites, their names and every statistic equal ``--functional always``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_globals

import deadrelu
from conftest import bounded, dead_linear
from deadrelu.capturing.attribution import enclosing
from deadrelu.capturing.hooks import functional_scoped_note
from deadrelu.result import ScanResult

SAMPLES, BATCH = 40, 10  # four batches


def state() -> tuple[int, int]:
    """Torch's process-wide capture state now: function modes, global module pre-hooks."""
    return torch._C._len_torch_function_stack(), len(module_globals._global_forward_pre_hooks)


class Block(nn.Module):
    """``F.relu(fc(x))`` (units 0 and 3 of 5 dead) in its own forward; from ``late`` calls on also
    ``F.relu6`` of a second layer (unit 1 of 3 dead)."""

    def __init__(self, late: int | None = None) -> None:
        super().__init__()
        self.fc, self.fc2 = dead_linear(4, 5, (0, 3)), dead_linear(4, 3, (1,))
        self.late, self.calls = late, 0
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(state())
        out = F.relu(self.fc(x)).sum(1, keepdim=True)
        if self.late is not None and self.calls >= self.late:
            out = out + F.relu6(self.fc2(x)).sum(1, keepdim=True)
        self.calls += 1
        return out


class Mlp(nn.Module):
    """A Llama-style gated MLP: ``down(act(gate(x)) * up(x))`` with an ``nn.SiLU`` module."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 4)
        self.act = nn.SiLU()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(state())
        return self.down(self.act(self.gate(x)) * self.up(x))


class Net(nn.Module):
    """A module ReLU (units 1 and 4 of 6 dead) outside, then a block with a functional ReLU and a
    gated MLP (called twice: two sites each)."""

    def __init__(self, late: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.act = dead_linear(4, 6, (1, 4)), nn.ReLU()
        self.head = nn.Linear(6, 4)
        self.block = Block(late)
        self.mlp = Mlp()
        self.seen: list[tuple[int, int]] = []
        self.act_hooks: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(state())
        self.act_hooks.append(len(self.act._forward_hooks) + len(self.act._forward_pre_hooks))
        h = self.head(self.act(self.stem(x)))
        h = self.mlp(self.mlp(h))
        return h + self.block(x)


def scan(model: nn.Module, functional: str) -> ScanResult:
    return deadrelu.scan(model, bounded(), batch_size=BATCH, functional=functional)


def rows(result: ScanResult) -> dict[str, list[dict]]:
    return {site.name: site.to_dict()["unit_stats"] for site in result.sites}


def test_capture_stays_on_only_inside_the_modules_that_made_the_calls():
    auto_model, always_model = Net(), Net()
    auto, always = scan(auto_model, "auto"), scan(always_model, "always")
    # Batch 1: the discovery watch and the functional mode, global hooks (producers', capture's)
    # everywhere. Later batches: nothing at the root; the mode on inside block and mlp only.
    assert auto_model.seen[1:] == [(0, 0)] * 3
    assert auto_model.block.seen[1:] == [(1, 0)] * 3
    assert auto_model.mlp.seen[2:] == [(1, 0)] * 6
    assert always_model.seen[1:] == [(1, 1)] * 3
    # The activation module outside went hook-free after batch 1; the SiLU inside mlp kept its hooks.
    assert auto_model.act_hooks[1:] == [0, 0, 0] and always_model.act_hooks[1:] == [2, 2, 2]
    assert len(auto_model.mlp.act._forward_hooks) == 0  # every hook went with the capture
    assert auto.coverage["functional_note"] == functional_scoped_note(["block", "mlp"])
    names = ["act", "mlp.act#0", "mlp:swiglu#0", "mlp.act#1", "mlp:swiglu#1", "block:relu#0"]
    assert [s.name for s in auto.sites] == [s.name for s in always.sites] == names
    assert all(s.observations == SAMPLES for s in auto.sites)
    assert (auto.site("act").dead, auto.site("block:relu#0").dead) == (2, 2)
    assert rows(auto) == rows(always)
    assert state() == (0, 0)


def test_a_call_made_inside_an_owner_only_on_later_batches_is_still_seen():
    auto, always = scan(Net(late=2), "auto"), scan(Net(late=2), "always")
    site = auto.site("block:relu6#0")
    assert (site.dead, site.observations) == (1, 20)  # batches 3 and 4
    assert rows(auto) == rows(always)


class Outer(nn.Module):
    """``F.relu`` in its own forward around an inner block with its own ``F.relu``: nested owners."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc = dead_linear(4, 4, (2,))
        self.inner = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(F.relu(self.fc(x)))


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.outer = Outer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(x)


def test_nested_owners_keep_their_own_names():
    auto, always = scan(Nested(), "auto"), scan(Nested(), "always")
    assert [s.name for s in auto.sites] == ["outer:relu#0", "outer.inner:relu#0"]
    assert auto.coverage["functional_note"] == functional_scoped_note(["outer"])
    assert rows(auto) == rows(always)


class Multiply(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class Part(nn.Module):
    """A gate computed in one submodule, multiplied in another: the product's owner is their parent."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up = nn.Linear(4, 6), nn.Linear(4, 6)
        self.act = nn.GELU()
        self.mul = Multiply()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mul(self.act(self.gate(x)), self.up(x))


class SplitGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.part = Part()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.part(x))


def test_a_product_whose_gate_ran_elsewhere_keeps_both_in_scope():
    model = SplitGate()
    auto, always = scan(model, "auto"), scan(SplitGate(), "always")
    assert auto.coverage["functional_note"] == functional_scoped_note(["part"])
    assert [(s.name, s.observations) for s in auto.sites] == [("part.act", 40), ("part.mul:geglu#0", 40), ("act", 40)]
    assert rows(auto) == rows(always)


def test_a_call_in_the_models_own_forward_keeps_capture_on_everywhere():
    class Root(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(super().forward(x))

    model = Root()
    result = scan(model, "auto")
    assert model.seen[1:] == [(1, 1)] * 3
    assert result.coverage["functional_note"] is None
    assert rows(result) == rows(scan(Root(), "always"))


def test_a_forward_that_raises_inside_an_owner_leaves_no_mode_behind():
    class Failing(Block):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            if self.calls == 4:  # the fourth forward pass
                raise RuntimeError("boom")
            return out

    model = Net()
    model.block = Failing()
    with deadrelu.capture(model) as cap:
        for index in range(3):
            model(bounded(10, seed=index))
        with pytest.raises(RuntimeError, match="boom"):
            model(bounded(10, seed=3))
        assert state() == (0, 0)
    assert state() == (0, 0)


@pytest.mark.parametrize("first, second, parent", [("a.b.c", "a.b.d", "a.b"), ("a.b", "a.bc", "a"), ("", "a", ""),
                                                   ("a.b", "a.b", "a.b"), ("x", "y", "")])
def test_enclosing_is_the_common_dotted_prefix(first, second, parent):
    assert enclosing(first, second) == parent


def test_the_note_names_a_few_modules_and_counts_the_rest():
    assert functional_scoped_note(["a"]).startswith("functional capture kept on after batch 1 only inside the 1 module ")
    note = functional_scoped_note([f"layers.{i}.mlp" for i in range(5)])
    assert "(layers.0.mlp, layers.1.mlp, layers.2.mlp and 2 more)" in note and "--functional always" in note


class Layer(nn.Module):
    """A layer with an activation module (``nn.GELU`` calls ``F.gelu`` inside) that records the
    capture state its forward ran under."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act = nn.Linear(4, 4), nn.GELU()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(state())
        return self.act(self.fc(x))


class Encoder(nn.Module):
    """Whisper's shape: ``F.gelu`` in the encoder's own forward, then layers from a ModuleList
    (a container whose own forward never runs)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Linear(4, 4)
        self.layers = nn.ModuleList([Layer(), Layer()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.stem(x))
        for layer in self.layers:
            h = layer(h)
        return h


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def test_the_mode_is_off_inside_the_layers_an_owner_calls_from_a_module_list():
    model = Wrapped()
    auto, always = scan(model, "auto"), scan(Wrapped(), "always")
    # Inside each layer (called from the encoder, whose forward keeps the mode on) the mode is off.
    assert [layer.seen[1:] for layer in model.encoder.layers] == [[(0, 0)] * 3] * 2
    assert [s.name for s in auto.sites] == [s.name for s in always.sites] == \
        ["encoder:gelu#0", "encoder.layers.0.act", "encoder.layers.1.act"]
    assert rows(auto) == rows(always)
    assert auto.coverage["functional_note"] == functional_scoped_note(["encoder"])


# --- cases a review found (each failed before its fix) -----------------------------------------------


def test_an_activation_module_an_owner_gets_as_an_argument_is_not_a_functional_site():
    """``block(x, act)``: the ELU module is not below the owner, and its own ``F.elu`` is its own."""
    class Owner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, act: nn.Module) -> torch.Tensor:
            return F.relu(self.lin(x)) + act(x)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.block, self.act = Owner(), nn.ELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(x, self.act)

    auto, always = scan(Model(), "auto"), scan(Model(), "always")
    assert [s.name for s in auto.sites] == [s.name for s in always.sites] == ["block:relu#0", "act"]
    assert rows(auto) == rows(always)


def test_a_module_that_did_not_run_in_batch_one_is_never_named_after_its_owner():
    """A child first called on batch 2 is 'elsewhere': its own F.relu is missed (the note says so),
    never counted as a second call of the owner's."""
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.lin(x))

    class Owner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.branch, self.calls = nn.Linear(4, 4), Branch(), 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out = F.relu(self.lin(x))
            return out + self.branch(x) if self.calls > 1 else out

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(6)
            self.block = Owner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(x)

    auto, always = scan(Model(), "auto"), scan(Model(), "always")
    assert [s.name for s in always.sites] == ["block:relu#0", "block.branch:relu#0"]
    assert [s.name for s in auto.sites] == ["block:relu#0"]
    assert rows(auto)["block:relu#0"] == rows(always)["block:relu#0"]
    assert "would be missed: use --functional always" in auto.coverage["functional_note"]


def test_a_module_registered_under_two_names_keeps_its_capture():
    """The owner ``a`` is also ``v.shared``, below the owner ``v``: wanted by identity, not by name."""
    class Own(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.lin(x))

    class Via(nn.Module):
        def __init__(self, shared: nn.Module) -> None:
            super().__init__()
            self.shared, self.lin = shared, nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu6(self.lin(self.shared(x)))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(7)
            self.a = Own()
            self.v = Via(self.a)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.v(x)

    auto, always = scan(Model(), "auto"), scan(Model(), "always")
    assert [(s.name, s.observations) for s in auto.sites] == [(s.name, s.observations) for s in always.sites]
    assert all(s.observations == SAMPLES for s in auto.sites)
    assert rows(auto) == rows(always)


def test_the_models_own_function_mode_inside_an_owner_keeps_its_calls_and_its_place():
    """An owner's ``with MyMode(): self.lin2(y)``: switching ours off and on inside it leaves the
    model's mode where it was (its ``__exit__`` pops the top), seeing every call it saw under always."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        def __init__(self, log: list[str]) -> None:
            super().__init__()
            self.log = log

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.log.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    class Own(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.lin2 = nn.Linear(4, 4), nn.Linear(4, 4)
            self.seen: list[tuple[int, int]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.lin(x))
            log: list[str] = []
            with Count(log):
                z = self.lin2(y)
            self.seen.append((len(log), torch._C._len_torch_function_stack()))
            return F.relu(z)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(8)
            self.blk = Own()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blk(x)

    auto_model, always_model = Model(), Model()
    auto, always = scan(auto_model, "auto"), scan(always_model, "always")
    assert auto_model.blk.seen[1:] == always_model.blk.seen[1:] == [(1, 1)] * 3  # linear seen; ours alone after
    assert rows(auto) == rows(always)
    assert state() == (0, 0)


@pytest.mark.parametrize("functional", ["auto", "always", "off"])
def test_a_transformer_encoder_layer_is_scanned_on_every_batch(functional):
    """torch's inference fast path computes nn.TransformerEncoderLayer in one op without calling its
    activation, but only while no function mode is on: batch 1 (under the discovery mode) counted,
    later batches did not (50 of 200 observations). The scan turns it off, and gives it back."""
    torch.manual_seed(9)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=nn.ReLU(), batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    data = torch.randn(40, 5, 8, generator=torch.Generator().manual_seed(10))
    result = deadrelu.scan(model, data, batch_size=10, functional=functional)
    assert [(s.name, s.observations) for s in result.sites] == [("layers.0.activation", 200),
                                                                ("layers.1.activation", 200)]
    assert torch.backends.mha.get_fastpath_enabled()
