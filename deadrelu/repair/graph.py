"""Who produces and who consumes each activation site's units, read from a traced graph.

The model is traced with ``torch.fx`` (standard ``torch.nn`` layers stay whole, so a
call to ``self.fc1`` is one node naming ``fc1``); when ``fx`` cannot trace the
``forward`` (control flow on tensor values, ``len(x)``...), ``torch.export`` is used
and each aten op is mapped back to its module through the parameter it reads and its
``nn_module_stack``. Both become the same small ``Dataflow``: one ``FlowNode`` per op
with its role (``linear``, ``conv``, ``batchnorm``, ``activation``, ``passthrough``,
``flatten``, ``output``, ``other``), its data inputs and users, and its output shape.

``route(site)`` then answers the one question every repair asks: which Linear/Conv
row produces this site's units (through which BatchNorms), and which Linear/Conv
columns consume them, or why that cannot be said exactly.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..capturing.functional import FUNCTIONS, _is_relu_clamp
from ..kinds import FUNCTION_KINDS, spec_for_module
from ..result import SiteResult

#: Modules that act on each channel alone and map an all-zero channel to zeros.
PASSTHROUGH_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
#: Function and method names (fx) and aten op names (export) of the same kind of ops.
PASSTHROUGH_NAMES = frozenset({
    "dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout", "identity",
    "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d",
    "_adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "_adaptive_max_pool2d", "clone", "contiguous", "alias", "detach",
})
#: Calls that read a tensor's metadata, not its values: not data users.
META_NAMES = frozenset({"size", "dim", "shape", "numel", "sym_size", "sym_numel", "sym_stride", "stride",
                        "device", "dtype", "getattr"})
#: Activations (fx functions/methods and aten ops) -> the canonical function name the scan uses.
ATEN_ACTIVATIONS = {**{name: name for name in FUNCTION_KINDS}, **{f"{name}_": name for name in FUNCTION_KINDS},
                    "clamp_min": "clamp", "clamp_min_": "clamp", "_prelu_kernel": "prelu"}


@dataclass
class FlowNode:
    """One op of the traced forward.

    Attributes:
        index: position in execution order.
        role: ``input``, ``linear``, ``conv``, ``batchnorm``, ``activation``, ``passthrough``,
            ``flatten``, ``output``, ``meta`` or ``other``.
        label: what the op is, for messages (``add``, ``cat``, ``Linear fc1``...).
        module: the layer's qualified name (layers, module activations); for functional
            activations the module whose ``forward`` made the call.
        function: the functional activation's canonical name (``relu``), else None.
        inputs: indices of the nodes whose tensors this op reads (the data input first).
        users: indices of the nodes that read this op's output (metadata reads left out).
        shape: the output's shape on the example batch, if known.
    """

    index: int
    role: str
    label: str
    module: str | None = None
    function: str | None = None
    inputs: list[int] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a site's units: ``block`` input columns (or channels) per unit."""

    module: str
    kind: str
    block: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "kind": self.kind, "block": self.block}


@dataclass(frozen=True)
class UnitRoute:
    """Where one site's units come from and where they go.

    Attributes:
        producer: the Linear/Conv whose output rows (channels) are the units.
        producer_kind: ``linear`` or ``conv``.
        norms: BatchNorm layers between the producer and the activation (entry per unit).
        consumers: every Linear/Conv that reads the units (through pooling, dropout, flatten).
    """

    producer: str
    producer_kind: str
    norms: tuple[str, ...]
    consumers: tuple[Consumer, ...]


class Dataflow:
    """The traced forward as ``FlowNode``s, with the model whose layers they name.

    Args:
        model: the model (layers are looked up in it by name).
        nodes: the ops in execution order.
        source: ``fx`` or ``export``, how the graph was obtained.
    """

    def __init__(self, model: nn.Module, nodes: list[FlowNode], source: str) -> None:
        self.model = model
        self.nodes = nodes
        self.source = source
        self.layer_calls = Counter(node.module for node in nodes if node.role in ("linear", "conv", "batchnorm"))

    def site_node(self, site: SiteResult) -> FlowNode | None:
        """The activation node of a scanned site (its ``call_index``-th call), or None."""
        matches = [node for node in self.nodes if node.role == "activation" and node.module == site.module
                   and node.function == _canonical(site.function)]
        return matches[site.call_index] if site.call_index < len(matches) else None

    def route(self, site: SiteResult) -> UnitRoute | str:
        """The site's producer and consumers, or the reason they cannot be named exactly.

        Args:
            site: a scanned site (channel granularity).

        Returns:
            A ``UnitRoute``, or one line saying why the units cannot be traced to whole
            rows and columns of Linear/Conv layers.
        """
        node = self.site_node(site)
        if node is None:
            return f"not found in the {self.source} graph of the model"
        units = site.units
        if site.unit_dim is None:
            return "its output is one unit (no unit axis)"
        found = self._producer(node, units)
        if isinstance(found, str):
            return found
        producer, producer_kind, norms = found
        ndim = len(node.shape) if node.shape is not None else None
        unit_last = producer_kind == "linear" or (ndim is not None and site.unit_dim == ndim - 1)
        if ndim is not None and site.unit_dim not in (1, ndim - 1):
            return f"its unit axis {site.unit_dim} is neither the channel nor the feature axis"
        consumers = self._consumers(node, units, unit_last, producer_kind)
        if isinstance(consumers, str):
            return consumers
        return UnitRoute(producer, producer_kind, tuple(norms), tuple(consumers))

    def producer_of(self, site: SiteResult) -> tuple[str, tuple[str, ...]] | str:
        """The Linear/Conv feeding a site and the BatchNorms in between, or why there is none."""
        node = self.site_node(site)
        if node is None:
            return f"not found in the {self.source} graph of the model"
        found = self._producer(node, site.units)
        if isinstance(found, str):
            return found
        return found[0], tuple(found[2])

    # -- walking ---------------------------------------------------------------------------
    def _single_user(self, node: FlowNode, reader: FlowNode) -> str | None:
        others = [self.nodes[i].label for i in node.users if i != reader.index]
        if others:
            return f"the output of {node.label} is also read by {', '.join(sorted(set(others))[:3])}"
        return None

    def _layer(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def _producer(self, activation: FlowNode, units: int) -> tuple[str, str, list[str]] | str:
        if not activation.inputs:
            return "its input is not a traced tensor"
        reader, current = activation, self.nodes[activation.inputs[0]]
        norms: list[str] = []
        while True:
            problem = self._single_user(current, reader)
            if problem:
                return problem
            if current.role == "batchnorm":
                assert current.module is not None
                if self.layer_calls[current.module] > 1:
                    return f"{current.label} is called {self.layer_calls[current.module]} times per forward"
                if getattr(self._layer(current.module), "num_features", units) != units:
                    return f"{current.label} has a different width than the site ({units} units)"
                norms.append(current.module)
            elif current.role == "passthrough":
                pass
            elif current.role in ("linear", "conv"):
                break
            else:
                return f"its input comes from {current.label}, not from a Linear/Conv layer"
            if not current.inputs:
                return f"{current.label} has no traced input"
            reader, current = current, self.nodes[current.inputs[0]]
        assert current.module is not None
        layer = self._layer(current.module)
        if self.layer_calls[current.module] > 1:
            return f"{current.label} is called {self.layer_calls[current.module]} times per forward"
        if current.role == "conv" and getattr(layer, "groups", 1) != 1:
            return f"{current.label} is a grouped convolution (groups={layer.groups})"
        width = layer.out_features if current.role == "linear" else layer.out_channels
        if width != units:
            return f"{current.label} has {width} outputs, the site {units} units"
        return current.module, current.role, norms[::-1]

    def _consumers(self, activation: FlowNode, units: int, unit_last: bool,
                   producer_kind: str) -> list[Consumer] | str:
        consumers: list[Consumer] = []
        # (node, columns per unit, unit axis is the last axis, how the units got there)
        frontier: list[tuple[FlowNode, int, bool]] = [(activation, 1, unit_last)]
        seen: set[int] = set()
        while frontier:
            node, block, last = frontier.pop()
            if not node.users:
                return f"the output of {node.label} is not read by any traced op"
            for index in node.users:
                user = self.nodes[index]
                if index in seen and user.role not in ("linear", "conv"):
                    continue
                seen.add(index)
                if user.role in ("linear", "conv", "passthrough", "activation", "flatten", "batchnorm") \
                        and user.inputs and user.inputs[0] != node.index:
                    return f"its units reach {user.label} as a non-data input"
                if user.role in ("linear", "conv"):
                    found = self._consumer(user, units, block, last)
                    if isinstance(found, str):
                        return found
                    consumers.append(found)
                elif user.role == "passthrough" or (user.role == "activation" and user.module is not None
                                                    and self._zero_preserving_activation(user)):
                    frontier.append((user, block, last))
                elif user.role == "flatten":
                    shape = node.shape
                    if shape is None:
                        return f"{user.label} follows it; sizing the flattened columns needs the data's shapes"
                    if len(shape) == 2:
                        frontier.append((user, block, True))
                    elif last:
                        return f"{user.label} interleaves its units with another axis"
                    else:
                        frontier.append((user, block * math.prod(shape[2:]), True))
                elif user.role == "output":
                    return "its units reach the model's output"
                elif user.role == "batchnorm":
                    return f"its units feed {user.label}, which maps 0 to a non-zero value"
                else:
                    shared = " (a residual/skip connection)" if user.label in ("add", "add_", "iadd", "sub") \
                        else " (a concatenation)" if user.label in ("cat", "concat", "stack") else ""
                    return f"its units reach {user.label}{shared}"
        return consumers

    def _zero_preserving_activation(self, node: FlowNode) -> bool:
        """A following activation maps 0 to 0; one with a weight per channel (PReLU) cannot be resized."""
        if node.function is not None:
            return node.function != "prelu"
        assert node.module is not None
        module = self._layer(node.module)
        return not (isinstance(module, nn.PReLU) and module.num_parameters > 1)

    def _consumer(self, user: FlowNode, units: int, block: int, last: bool) -> Consumer | str:
        assert user.module is not None
        layer = self._layer(user.module)
        if self.layer_calls[user.module] > 1:
            return f"{user.label} is called {self.layer_calls[user.module]} times per forward"
        if user.role == "linear":
            if not last:
                return f"{user.label} reads the last axis, not the site's unit axis"
            if layer.in_features != units * block:
                return f"{user.label} takes {layer.in_features} inputs, not {units} units x {block}"
            return Consumer(user.module, "linear", block)
        if last and block == 1 and not isinstance(layer, nn.modules.conv._ConvNd):
            return f"{user.label} is not a Linear/Conv layer"
        if getattr(layer, "groups", 1) != 1:
            return f"{user.label} is a grouped convolution (groups={layer.groups})"
        if block != 1 or layer.in_channels != units:
            return f"{user.label} takes {layer.in_channels} channels, not the site's {units} units"
        return Consumer(user.module, "conv", 1)


def _canonical(function: str | None) -> str | None:
    return None if function is None else ATEN_ACTIVATIONS.get(function, function)


# -- building: torch.fx ------------------------------------------------------------------------

def build_dataflow(model: nn.Module, example: Sequence[Any] | None = None) -> Dataflow:
    """Trace ``model`` into a ``Dataflow``: ``torch.fx`` first, ``torch.export`` when fx fails.

    Args:
        model: the model (not changed; ``eval()`` state kept).
        example: one batch of positional inputs, for shapes (and needed by torch.export).

    Returns:
        The dataflow.

    Raises:
        RepairError: neither tracer could read the model's forward.
    """
    from .report import RepairError
    try:
        return _from_fx(model, example)
    except Exception as fx_error:
        if example is None:
            raise RepairError(f"torch.fx cannot trace {type(model).__name__}.forward ({_first_line(fx_error)})",
                              hint="pass data so that torch.export can be tried") from None
        try:
            return _from_export(model, example)
        except Exception as export_error:
            raise RepairError(f"cannot trace {type(model).__name__}.forward: torch.fx: {_first_line(fx_error)}; "
                              f"torch.export: {_first_line(export_error)}",
                              hint="repairs need the forward as a graph; simplify data-dependent control flow"
                              ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _fx_function_name(target: Any, node: Any) -> str | None:
    """The canonical activation name of a traced call, as functional capture names it."""
    entry = FUNCTIONS.get(target)
    if entry is None:
        return None
    if entry.function == "clamp":
        arguments = {name: default for name, default in entry.parameters}
        arguments.update(zip([name for name, _ in entry.parameters], node.args[1:]))
        arguments.update({k: v for k, v in node.kwargs.items() if k in arguments})
        return "clamp" if _is_relu_clamp(arguments) else None
    return entry.function


def _containing_module(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path)


def _module_role(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.conv._ConvNd) and not getattr(module, "transposed", False):
        return "conv"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if spec_for_module(module) is not None:
        return "activation"
    if isinstance(module, PASSTHROUGH_MODULES):
        return "passthrough"
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return "flatten"
    return "other"


def _fx_flatten(node: Any) -> str | None:
    """``flatten`` when a call flattens everything after the batch axis, else None (or a label)."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return "flatten" if (start, end) == (1, -1) else None
    if name in ("view", "reshape"):
        shape = node.args[1:]
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        # x.view(x.size(0), -1): the width follows the layers; x.view(-1, 512) hard-codes it.
        if len(shape) == 2 and shape[1] == -1 and not isinstance(shape[0], int):
            return "flatten"
    return None


def _from_fx(model: nn.Module, example: Sequence[Any] | None) -> Dataflow:
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    class _Tracer(torch.fx.Tracer):
        # Subclasses of nn.ReLU / nn.Linear / nn.Conv2d... defined in user code stay whole too,
        # so their calls name the module the scan named.
        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return _module_role(module) in ("linear", "conv", "batchnorm", "activation") or \
                super().is_leaf_module(module, qualified_name)

    graph = _Tracer().trace(model)
    graph_module = torch.fx.GraphModule(model, graph)
    if example is not None:
        was_training = [m.training for m in model.modules()]
        try:
            with torch.no_grad():
                ShapeProp(graph_module).propagate(*example)
        finally:
            for module, training in zip(model.modules(), was_training):
                module.training = training
    nodes: list[FlowNode] = []
    index_of: dict[Any, int] = {}
    for fx_node in graph.nodes:
        role, label, module, function = "other", str(fx_node.target), None, None
        if fx_node.op == "placeholder":
            role, label = "input", f"input {fx_node.name}"
        elif fx_node.op == "output":
            role, label = "output", "the model output"
        elif fx_node.op == "get_attr":
            role, label = "meta", f"attribute {fx_node.target}"
        elif fx_node.op == "call_module":
            layer = model.get_submodule(fx_node.target)
            role, module = _module_role(layer), str(fx_node.target)
            label = f"{type(layer).__name__} {fx_node.target}"
        else:
            target = fx_node.target
            name = target if fx_node.op == "call_method" else getattr(target, "__name__", str(target))
            callable_ = getattr(torch.Tensor, target, None) if fx_node.op == "call_method" else target
            function = _fx_function_name(callable_, fx_node)
            if function is not None:
                role, module, label = "activation", _containing_module(fx_node), f"{name}()"
            elif target is getattr or name in META_NAMES:
                role, label = "meta", name
            elif _fx_flatten(fx_node) == "flatten":
                role, label = "flatten", f"{name}()"
            elif name in PASSTHROUGH_NAMES:
                role, label = "passthrough", f"{name}()"
            elif target is operator.getitem:
                label = "getitem"
            else:
                label = {"iadd": "add", "add": "add", "mul": "mul", "cat": "cat"}.get(name, name)
                if name in ("view", "reshape", "flatten"):
                    label = f"{name}() to a shape that mixes units or hard-codes the width"
        shape = None
        meta = fx_node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            shape = tuple(int(s) for s in meta.shape)
        node = FlowNode(len(nodes), role, label, module, function, shape=shape)
        node.inputs = [index_of[arg] for arg in fx_node.all_input_nodes if arg in index_of
                       and nodes[index_of[arg]].role != "meta"]
        # The data input first: all_input_nodes follows argument order, so args[0] leads.
        index_of[fx_node] = node.index
        nodes.append(node)
    return Dataflow(model, _with_users(nodes), "fx")


# -- building: torch.export --------------------------------------------------------------------

def _aten_name(target: Any) -> str:
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(getattr(packet, "__name__", target)).split(".")[-1]
    return getattr(target, "__name__", str(target))


def _from_export(model: nn.Module, example: Sequence[Any]) -> Dataflow:
    program = torch.export.export(model, tuple(example))
    signature = program.graph_signature
    owners = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    nodes: list[FlowNode] = []
    index_of: dict[Any, int] = {}
    for ex_node in program.graph.nodes:
        role, label, module, function = "other", str(ex_node.target), None, None
        if ex_node.op == "placeholder":
            role, label = ("meta", f"parameter {owners[ex_node.name]}") if ex_node.name in owners \
                else ("input", f"input {ex_node.name}")
        elif ex_node.op == "output":
            role, label = "output", "the model output"
        elif ex_node.op == "call_function":
            name = _aten_name(ex_node.target)
            owned = [owners[arg.name] for arg in ex_node.args[1:] if isinstance(arg, torch.fx.Node)
                     and arg.name in owners]
            layer_name = owned[0].rpartition(".")[0] if owned else None
            layer = model.get_submodule(layer_name) if layer_name is not None else None
            if name in ("linear", "conv1d", "conv2d", "conv3d", "convolution") and layer is not None \
                    and _module_role(layer) in ("linear", "conv"):
                role, module, label = _module_role(layer), layer_name, f"{type(layer).__name__} {layer_name}"
            elif "batch_norm" in name and layer is not None and _module_role(layer) == "batchnorm":
                role, module, label = "batchnorm", layer_name, f"{type(layer).__name__} {layer_name}"
            elif name in ATEN_ACTIVATIONS:
                path = _containing_module(ex_node)
                owner = model.get_submodule(path) if path else model
                if path and spec_for_module(owner) is not None:
                    role, module, label = "activation", path, f"{type(owner).__name__} {path}"
                else:
                    role, module, function, label = "activation", path, ATEN_ACTIVATIONS[name], f"{name}()"
            elif name in ("flatten",) and tuple(ex_node.args[1:3]) in ((1,), (1, -1)):
                role, label = "flatten", "flatten()"
            elif name in PASSTHROUGH_NAMES:
                role, label = "passthrough", f"{name}()"
            elif ex_node.target is operator.getitem:
                source = nodes[index_of[ex_node.args[0]]]
                if ex_node.args[1] == 0 and source.role in ("batchnorm", "passthrough"):
                    role, label = "passthrough", "getitem"
                else:
                    label = "getitem"
            elif name in META_NAMES:
                role, label = "meta", name
            else:
                label = name
        shape = None
        value = ex_node.meta.get("val")
        if isinstance(value, torch.Tensor):
            shape = tuple(int(s) for s in value.shape)
        node = FlowNode(len(nodes), role, label, module, function, shape=shape)
        node.inputs = [index_of[arg] for arg in ex_node.all_input_nodes if arg in index_of
                       and nodes[index_of[arg]].role != "meta"]
        index_of[ex_node] = node.index
        nodes.append(node)
    # A BatchNorm's tuple output is read through getitem 0: the getitem is the BN's output.
    return Dataflow(model, _with_users(nodes), "export")


def _with_users(nodes: list[FlowNode]) -> list[FlowNode]:
    """Fill every node's ``users`` from the others' ``inputs`` (meta nodes have none)."""
    for node in nodes:
        if node.role == "meta":
            continue
        for source in node.inputs:
            nodes[source].users.append(node.index)
    return nodes


__all__ = ["Dataflow", "FlowNode", "UnitRoute", "Consumer", "build_dataflow"]
