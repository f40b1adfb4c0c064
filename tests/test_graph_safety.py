"""A graph model from a file only computes on tensors (issue 18 §1), and its shape formulas
are bounded (§6).

A ``.pt2`` graph or a TorchScript archive can call any registered operator: ``aten::from_file``
maps a file into a tensor, so writing the tensor writes the file; ``prim::Print`` prints; a
custom op runs whatever its library does; a TorchScript ``__setstate__`` runs while the
archive loads. Each attack here is built small inside the test and aimed at a marker file:
the scan must end with exit 2 and one line naming the op and where it is, and the marker
must be neither created nor overwritten. The real architectures the project scans keep
loading: their graphs only hold allowed ops.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim

from conftest import error_line, run
from deadrelu.load import archive, graphcheck
from deadrelu.load.formula import formula_problem

ORIGINAL = b"original"  # 8 bytes: what from_file(..., size=8) would map and fill_ overwrite


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).uniform(-1, 1, (8, 4)).astype(np.float32))
    return path


def rewrite_zip(source: Path, target: Path, edit) -> Path:
    """Copy a zip member by member, letting ``edit(name, bytes) -> bytes`` change any."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
        for name in original.namelist():
            copy.writestr(name, edit(name, original.read(name)))
    return target


# -- torch.export ---------------------------------------------------------------------------------


class ZerosThenFill(nn.Module):
    """A clean program whose first node (``zeros``) the attack turns into ``from_file``; its
    ``fill_`` then writes 'A' through the mapped tensor, which the output uses."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        buffer = torch.zeros(8, dtype=torch.uint8)
        buffer.fill_(65)
        return torch.relu(self.linear(x)) + buffer.sum() * 0


def exported(tmp_path: Path, model: nn.Module, name: str = "clean.pt2") -> Path:
    path = tmp_path / name
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(2, 4),)), str(path))
    return path


def with_first_node(source: Path, written: Path, **node) -> Path:
    """``source`` with its first node's fields replaced by ``node``, as ``written``."""

    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        document = json.loads(data)
        document["graph_module"]["graph"]["nodes"][0].update(node)
        return json.dumps(document).encode()
    return rewrite_zip(source, written, edit)


def from_file_node(marker: Path) -> dict:
    return {"target": "torch.ops.aten.from_file.default",
            "inputs": [{"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                       {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                       {"name": "size", "arg": {"as_int": 8}, "kind": 1},
                       {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2}]}


@pytest.mark.parametrize("existing", [True, False], ids=["overwrite", "create"])
def test_a_pt2_graph_mapping_a_file_and_filling_it_is_refused(runner, tmp_path, data, existing):
    marker = tmp_path / "victim.bin"
    if existing:
        marker.write_bytes(ORIGINAL)
    evil = with_first_node(exported(tmp_path, ZerosThenFill()), tmp_path / "evil.pt2", **from_file_node(marker))
    error_line(run(runner, evil, data), "evil.pt2", "aten::from_file", "node zeros in the top-level graph",
               "maps a file")
    assert (marker.read_bytes() == ORIGINAL) if existing else not marker.exists()


def test_the_clean_program_the_attack_starts_from_scans(runner, tmp_path, data):
    result = run(runner, exported(tmp_path, ZerosThenFill()), data)
    assert result.exit_code == 0, result.output


def test_a_pt2_node_target_is_never_resolved_by_walking_torch_attributes(runner, tmp_path, data):
    """torch's deserializer turns ``torch.os.system`` into ``os.system``; ours names it and stops."""
    marker = tmp_path / "ran"
    evil = with_first_node(exported(tmp_path, ZerosThenFill()), tmp_path / "evil.pt2", target="torch.os.system",
                           inputs=[{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}])
    error_line(run(runner, evil, data), "evil.pt2", "torch.os.system", "not an operation on tensors")
    assert not marker.exists()
    assert graphcheck.resolve_serialized("torch.os.system")[0] is None
    assert graphcheck.resolve_serialized("torch.ops.aten.relu.default")[0] is torch.ops.aten.relu.default


class Printing(nn.Module):
    def forward(self, x):
        torch.ops.aten._print("from the model")
        return torch.relu(x)


def test_a_pt2_graph_that_prints_is_refused(runner, tmp_path, data, capfd):
    error_line(run(runner, exported(tmp_path, Printing()), data), "aten::_print", "node _print")
    assert "from the model" not in capfd.readouterr().out


@pytest.fixture(scope="module")
def touch_op():
    """A custom op (namespace ``deadrelu_graphtest``) that creates the file its second input names."""
    library = torch.library.Library("deadrelu_graphtest", "DEF")
    library.define("touch(Tensor x, str path) -> Tensor")

    def touch(x, path):
        Path(path).touch()
        return x.clone()

    library.impl("touch", touch, "CompositeExplicitAutograd")
    library.impl("touch", lambda x, path: torch.empty_like(x), "Meta")
    yield torch.ops.deadrelu_graphtest.touch
    library._destroy()


class CustomOp(nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x):
        return torch.relu(torch.ops.deadrelu_graphtest.touch(x, self.marker))


def test_a_pt2_custom_op_is_refused(runner, tmp_path, data, touch_op):
    marker = tmp_path / "ran"
    path = exported(tmp_path, CustomOp(str(marker)))
    assert not marker.exists()
    error_line(run(runner, path, data), "deadrelu_graphtest::touch", "'deadrelu_graphtest' namespace")
    assert not marker.exists()


# -- TorchScript ----------------------------------------------------------------------------------


class ScriptedFromFile(nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.marker = marker

    def forward(self, x):
        mapped = torch.from_file(self.marker, True, 8, dtype=torch.uint8)
        mapped.fill_(65)
        return torch.relu(self.linear(x)) + mapped.sum() * 0


def test_a_scripted_forward_mapping_a_file_is_refused(runner, tmp_path, data):
    marker = tmp_path / "victim.bin"
    marker.write_bytes(ORIGINAL)
    torch.jit.save(torch.jit.script(ScriptedFromFile(str(marker))), str(tmp_path / "evil.pt"))
    error_line(run(runner, tmp_path / "evil.pt", data), "aten::from_file", "method forward of the model")
    assert marker.read_bytes() == ORIGINAL


class Clean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.linear(x))


CLEAN_LINE = "    return torch.relu((linear).forward(x, ))"


def test_a_tampered_code_member_of_a_clean_torchscript_zip_is_refused(runner, tmp_path, data):
    marker = tmp_path / "victim.bin"
    torch.jit.save(torch.jit.script(Clean()), str(tmp_path / "clean.pt"))
    tampered = "\n".join([f"    mapped = torch.from_file({str(marker)!r}, True, 8, dtype=0)",
                          "    filled = mapped.fill_(65)",
                          "    return torch.add(torch.relu((linear).forward(x, )), torch.mul(torch.sum(filled), 0))"])

    edited = []

    def edit(name: str, text: bytes) -> bytes:
        if "/code/" in name and name.endswith(".py") and CLEAN_LINE.encode() in text:
            edited.append(name)
            return text.replace(CLEAN_LINE.encode(), tampered.encode())
        return text

    rewrite_zip(tmp_path / "clean.pt", tmp_path / "tampered.pt", edit)
    assert len(edited) == 1
    assert run(runner, tmp_path / "clean.pt", data).exit_code == 0
    error_line(run(runner, tmp_path / "tampered.pt", data), "tampered.pt", "aten::from_file")
    assert not marker.exists()


class Blocks(nn.Module):
    """The op hides in a submodule, inside an ``if`` inside a loop."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Clean(), ScriptedFromFileWhenNegative(marker)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class ScriptedFromFileWhenNegative(nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x):
        for _ in range(2):
            if bool(x.sum() < -1e9):
                mapped = torch.from_file(self.marker, True, 8, dtype=torch.uint8)
                x = x + mapped.fill_(65).sum()
        return x


def test_an_op_in_a_nested_block_of_a_submodule_is_found_and_named(runner, tmp_path, data):
    marker = tmp_path / "victim.bin"
    torch.jit.save(torch.jit.script(Blocks(str(marker))), str(tmp_path / "nested.pt"))
    error_line(run(runner, tmp_path / "nested.pt", data), "aten::from_file", "method forward of blocks.1")
    assert not marker.exists()


class ScriptedPrint(nn.Module):
    def forward(self, x):
        print("from the model")
        return torch.relu(x)


def test_prim_print_is_refused_and_consent_lets_the_file_run(runner, tmp_path, data, capfd):
    torch.jit.save(torch.jit.script(ScriptedPrint()), str(tmp_path / "print.pt"))
    error_line(run(runner, tmp_path / "print.pt", data), "prim::Print", "prints")
    assert "from the model" not in capfd.readouterr().out
    assert run(runner, tmp_path / "print.pt", data, "--allow-pickle").exit_code == 0


def test_a_scripted_custom_op_is_refused(runner, tmp_path, data, touch_op):
    marker = tmp_path / "ran"
    torch.jit.save(torch.jit.script(CustomOp(str(marker))), str(tmp_path / "custom.pt"))
    error_line(run(runner, tmp_path / "custom.pt", data), "deadrelu_graphtest::touch")
    assert not marker.exists()


class PackedWeights(nn.Module):
    """Quantized packed weights: a ``torch.classes`` C++ object whose methods are native code."""

    def __init__(self) -> None:
        super().__init__()
        weight = torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(weight, torch.zeros(4))

    def forward(self, x):
        weight, _ = self.packed.unpack()
        return torch.relu(x @ weight.dequantize().t())


def test_a_method_of_a_cpp_object_is_refused(runner, tmp_path, data):
    torch.jit.save(torch.jit.script(PackedWeights()), str(tmp_path / "packed.pt"))
    error_line(run(runner, tmp_path / "packed.pt", data), "prim::CallMethod", "unpack() of a C++ object")


class LoadTime(nn.Module):
    """``__setstate__`` runs inside ``torch.jit.load``, before any check could look at a graph."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = torch.ones(4)
        self.marker = marker

    def forward(self, x):
        return torch.relu(x * self.weight)

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.marker = state[1]
        self.training = state[2]
        mapped = torch.from_file(self.marker, True, 8, dtype=torch.uint8)
        self.weight = state[0] + mapped.fill_(65).sum().float() * 0


def test_torchscript_setstate_is_refused_before_it_runs(runner, tmp_path, data):
    marker = tmp_path / "victim.bin"
    torch.jit.save(torch.jit.script(LoadTime(str(marker))), str(tmp_path / "setstate.pt"))
    assert not marker.exists()
    error_line(run(runner, tmp_path / "setstate.pt", data), "__setstate__", "runs while the archive loads")
    assert not marker.exists()


# -- the allow-list -------------------------------------------------------------------------------


def schema(name: str, overload: str = ""):
    return next(s for s in torch._C._jit_get_all_schemas() if s.name == name and s.overload_name == overload)


@pytest.mark.parametrize("name,overload,says", [
    ("aten::from_file", "", "maps a file"),
    ("aten::save", "", "writes a file"),
    ("aten::_print", "", "prints"),
    ("aten::manual_seed", "", "random number generator"),
    ("aten::manual_seed", "generator", "random number generator"),
    ("aten::set_", "source_Storage", "Storage"),
    ("aten::record_stream", "", "Stream"),
    ("aten::wait", "", "Future"),
    ("aten::backward", "", "only runs for a side effect"),
])
def test_ops_that_reach_outside_the_graph_are_refused_by_their_schema(name, overload, says):
    assert says in graphcheck.schema_refusal(schema(name, overload))


@pytest.mark.parametrize("name,overload", [
    ("aten::add", "Tensor"), ("aten::fill_", "Scalar"), ("aten::set_", "source_Tensor"), ("aten::linear", ""),
    ("aten::scaled_dot_product_attention", ""), ("aten::layer_norm", ""), ("aten::dropout", ""),
    ("aten::bernoulli", ""), ("aten::embedding", ""), ("aten::gelu", ""), ("aten::softmax", "int"),
    ("aten::einsum", ""), ("aten::append", "t"), ("aten::warn", ""), ("aten::_assert_scalar", ""),
    ("aten::relu_", ""), ("aten::add", "out"),
])
def test_ops_that_only_compute_are_allowed(name, overload):
    assert graphcheck.schema_refusal(schema(name, overload)) is None


@pytest.mark.parametrize("text,says", [
    ("aten::made_up(Tensor self, str location) -> Tensor", "string argument 'location'"),
    ("aten::made_up(Tensor self, Storage source) -> Tensor", "Storage"),
    ("aten::made_up(Tensor self, int seed) -> ()", "only runs for a side effect"),
    ("aten::made_up(Tensor self, Generator(a!) generator) -> Tensor", "writes its Generator"),
    ("mylib::made_up(Tensor self) -> Tensor", "'mylib' namespace"),
    ("aten::made_up(Tensor self, str mode) -> Tensor", None),
    ("aten::made_up_(Tensor(a!) self, Tensor other) -> Tensor(a!)", None),
])
def test_an_op_torch_adds_later_is_judged_by_its_schema(text, says):
    """A new op is refused unless its schema says it only computes: a string argument under a
    name nobody reviewed (a path?) or a side-effect-only signature is refused by default."""
    found = graphcheck.schema_refusal(torch._C.parse_schema(text))
    assert found is None if says is None else says in found, found


# -- what must keep loading -----------------------------------------------------------------------


class AttentionBlock(nn.Module):
    """Embedding, LayerNorm, attention through scaled_dot_product_attention and softmax, GELU, dropout."""

    def __init__(self, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(50, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(0.1))

    def forward(self, ids):
        x = self.embed(ids)
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F_sdpa(q, k, v) + torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


def F_sdpa(q, k, v):
    return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_real_architectures_script_and_export_to_allowed_ops_only():
    from real_nets import broken_resnet

    ids = torch.randint(0, 50, (2, 6))
    scripted = {"resnet": torch.jit.script(broken_resnet().eval()),
                "encoder": torch.jit.script(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()),
                "lstm": torch.jit.script(nn.LSTM(8, 8).eval()),
                "traced block": torch.jit.trace(AttentionBlock().eval(), (ids,))}
    for name, module in scripted.items():
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        unit = torch._C.CompilationUnit()
        loaded = torch.jit._recursive.wrap_cpp_module(
            torch._C.import_ir_module_from_buffer(unit, buffer.getvalue(), torch.device("cpu"), {}, False))
        assert graphcheck.torchscript_findings(loaded, list(unit.get_functions())) == [], name
    program = torch.export.export(AttentionBlock().eval(), (ids,), dynamic_shapes={"ids": {0: Dim("batch")}})
    assert graphcheck.exported_findings(program.graph_module) == []


def test_control_flow_higher_order_ops_and_grad_regions_are_allowed():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x):
            with torch.no_grad():
                y = self.linear(x)
            return torch.cond(y.sum() > 0, lambda t: torch.relu(t), lambda t: nn.functional.gelu(t), (y,))

    program = torch.export.export(Branchy().eval(), (torch.rand(2, 4),))
    targets = {graphcheck.target_name(node.target) for module in program.graph_module.modules()
               if isinstance(module, torch.fx.GraphModule) for node in module.graph.nodes
               if node.op == "call_function"}
    assert "higher_order.cond" in targets
    assert graphcheck.exported_findings(program.graph_module) == []


# -- §6: shape formulas that never come back ------------------------------------------------------


@pytest.mark.parametrize("text,problem", [
    ("Symbol('s0') + 9**9**9", "exponent"),
    ("Pow(Integer(9), Pow(Integer(9), Integer(9)))", "exponent"),
    ("Pow(Pow(Integer(9), 64), 64)", "power of a power"),
    ("PowByNatural(s0, 100)", "exponent"),
    ("LShift(1, 10000000000)", "exponent"),
    ("Integer(100000000000000000000000)", "2**64"),
    ("Float('1.5', precision=1000000000)", "precision"),
    ("factorial(100000)", "not a shape function"),
    ("Max(" + ", ".join(f"s{i}" for i in range(20)) + ")", "Max/Min"),
    ("s0 + " * 1000 + "1", "longer than"),
])
def test_formulas_past_a_bound_are_refused(text, problem):
    found = formula_problem(text)
    assert found is not None and found.startswith("too costly to evaluate") and problem in found, found
    assert not archive.plain_formula(text)


@pytest.mark.parametrize("text", [
    "Pow(Symbol('s0', integer=True, positive=True), Integer(2))", "Pow(s0, Rational(1, 2))", "s0**-1",
    "Add(Mul(Integer(2), Symbol('s0', integer=True, positive=True)), Integer(-1))", "Max(1, s0) + Min(s1, 64)",
    "FloorDiv(s0, 2) + ModularIndexing(s0, 1, 4)", "int_oo", "-oo",
])
def test_torch_formulas_stay_plain(text):
    assert formula_problem(text) is None


def test_a_pt2_with_a_power_tower_in_a_shape_is_refused_quickly(tmp_path, data):
    """Old code handed this to ``sympy.sympify``, which never returned: the CLI runs in a
    subprocess with a timeout, so the test fails (rather than hangs) there."""
    program = torch.export.export(Clean().eval(), (torch.zeros(4, 4),), dynamic_shapes={"x": {0: Dim("batch")}})
    torch.export.save(program, str(tmp_path / "clean.pt2"))

    def edit(name: str, text: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return text
        document = json.loads(text)
        for tensor in document["graph_module"]["graph"]["tensor_values"].values():
            for size in tensor["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] = "Symbol('s0', integer=True, positive=True) + 9**9**9"
        return json.dumps(document).encode()

    rewrite_zip(tmp_path / "clean.pt2", tmp_path / "tower.pt2", edit)
    root = str(Path(__file__).resolve().parents[1])  # this checkout's deadrelu, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    try:
        result = subprocess.run([sys.executable, "-m", "deadrelu", "scan", str(tmp_path / "tower.pt2"), str(data)],
                                capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the scan did not come back within 120 s")
    assert result.returncode == 2, result.stderr
    assert "too costly to evaluate" in result.stderr and "tower.pt2" in result.stderr, result.stderr
