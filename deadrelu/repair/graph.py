"""Who produces and who consumes each activation site's units, read from a traced graph.

``tracing.build_dataflow`` turns a model's forward (``torch.fx``, else ``torch.export``)
into a small ``Dataflow``: one ``FlowNode`` per op with its role (``linear``, ``conv``,
``batchnorm``, ``activation``, ``passthrough``, ``flatten``, ``output``, ``other``), its
data inputs and users, and its output shape. A gated MLP's product ``act(gate) * up`` is
an ``activation`` node of its own (``swiglu``...), as the capture names it.

``route(site)`` then answers the one question every repair asks: which Linear/Conv
row produces this site's units (through which BatchNorms), and which Linear/Conv
columns consume them, or why that cannot be said exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..kinds import FUNCTION_KINDS, GATED_KINDS
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
#: Function names the capture gives the product ``act(gate) * up`` of a gated MLP (``mlp:swiglu#0``).
GATED_FUNCTIONS = frozenset({*(kind.lower() for kind in GATED_KINDS.values()), "glu"})
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
        kind: an activation's kind (``ReLU``, ``SiLU``, ``SwiGLU``...).
        scope: the module whose ``forward`` ran the op (``""``: the root), for functions.
    """

    index: int
    role: str
    label: str
    module: str | None = None
    function: str | None = None
    inputs: list[int] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    kind: str | None = None
    scope: str = ""


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
        partners: for a gated MLP's product ``act(gate(x)) * up(x)``, the ``up`` Linear: its
            row i multiplies unit i, so it goes (or is renewed) with the producer's row i.
    """

    producer: str
    producer_kind: str
    norms: tuple[str, ...]
    consumers: tuple[Consumer, ...]
    partners: tuple[str, ...] = ()

    def producers(self) -> tuple[str, ...]:
        """Every layer whose output rows are the units: the producer, then the partners."""
        return (self.producer, *self.partners)

    def layers(self) -> tuple[str, ...]:
        """Every layer the route touches."""
        return (*self.producers(), *self.norms, *(consumer.module for consumer in self.consumers))


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
        partners: tuple[str, ...] = ()
        if node.function in GATED_FUNCTIONS:
            gated = self._gated(node, units)
            if isinstance(gated, str):
                return gated
            found, partners = gated
        else:
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
        return UnitRoute(producer, producer_kind, tuple(norms), tuple(consumers), partners)

    def producer_of(self, site: SiteResult) -> tuple[str, tuple[str, ...], tuple[str, ...]] | str:
        """The Linear/Conv feeding a site, the BatchNorms in between and a gated product's ``up``
        Linear (``partners``), or why there is none."""
        node = self.site_node(site)
        if node is None:
            return f"not found in the {self.source} graph of the model"
        partners: tuple[str, ...] = ()
        if node.function in GATED_FUNCTIONS:
            gated = self._gated(node, site.units)
            if isinstance(gated, str):
                return gated
            found, partners = gated
        else:
            found = self._producer(node, site.units)
        if isinstance(found, str):
            return found
        return found[0], tuple(found[2]), partners

    def _gated(self, product: FlowNode, units: int
               ) -> tuple[tuple[str, str, list[str]] | str, tuple[str, ...]] | str:
        """A gated product's gate (through its activation) and its ``up`` Linear, or why not exact.

        Unit i of ``act(gate(x)) * up(x)`` reads only row i of ``gate`` and row i of ``up``;
        both rows and column i of the consumer go together, and nothing else may read them.
        """
        activation, other = (self.nodes[i] for i in product.inputs[:2])
        for factor in (activation, other):
            problem = self._single_user(factor, product)
            if problem:
                return problem
        if other.role != "linear":
            return f"its second factor comes from {other.label}, not from a Linear layer"
        assert other.module is not None
        up = self._layer(other.module)
        if self.layer_calls[other.module] > 1:
            return f"{other.label} is called {self.layer_calls[other.module]} times per forward"
        if up.out_features != units:
            return f"{other.label} has {up.out_features} outputs, the site {units} units"
        found = self._producer(activation, units)
        if not isinstance(found, str) and found[1] != "linear":
            return f"its gate {found[0]} is a convolution; gated products are pruned for Linear layers"
        return found, (other.module,)

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
                elif user.function in GATED_FUNCTIONS:
                    # Unit i is also row i of the product's up projection: only the product site
                    # removes (or renews) gate, up and down together.
                    return f"its units gate the product {self._site_name(user)}; that site takes gate, up and " \
                           "down together"
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

    def _site_name(self, node: FlowNode) -> str:
        """The scan's name of an activation node: its module, or ``module:function#k`` for a call."""
        if node.function is None:
            return node.module or "?"
        calls = [n.index for n in self.nodes if n.role == "activation" and n.module == node.module
                 and n.function == node.function]
        return f"{node.module or '<root>'}:{node.function}#{calls.index(node.index)}"

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


__all__ = ["Dataflow", "FlowNode", "UnitRoute", "Consumer", "GATED_FUNCTIONS", "PASSTHROUGH_MODULES",
           "PASSTHROUGH_NAMES", "META_NAMES", "ATEN_ACTIVATIONS"]
