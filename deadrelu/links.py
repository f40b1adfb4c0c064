"""Producer links: which layer produced an activation site's input (a leaf: imports nothing of deadrelu).

The capture makes them, the result stores them, the judge's weight rules read them; all
three import this module, none of them another for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: how a site's input relates to the layer named in its ``InputLink``
LINK_OUTPUT, LINK_ENCLOSING, LINK_AFTER_OP = "output", "enclosing", "after-op"


@dataclass(frozen=True)
class InputLink:
    """Which layer produced an activation site's input, as the capture saw it.

    Attributes:
        layer: the layer's qualified module name (None when no Linear/Conv/Norm/Embedding
            ran before the site).
        how: ``"output"`` — the site's input *is* that layer's output tensor, untouched;
            ``"enclosing"`` — the activation is a child of that norm layer and applies to
            its normalised output (timm's ``BatchNormAct2d``); ``"after-op"`` — something
            else (a residual add, a concatenation, a reshape) came after ``layer``, the last
            layer that ran, so that layer alone does not decide the site's input.
    """

    layer: str | None
    how: str

    @property
    def direct(self) -> bool:
        """Whether ``layer``'s parameters decide the site's input (weight rules may blame it)."""
        return self.layer is not None and self.how in (LINK_OUTPUT, LINK_ENCLOSING)

    def to_dict(self) -> dict[str, Any]:
        """The link as JSON-ready data (a site's ``producer`` field)."""
        return {"layer": self.layer, "how": self.how}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InputLink | None:
        """The link stored by ``to_dict``; None for a missing or malformed entry."""
        if not isinstance(data, dict) or "how" not in data:
            return None
        return cls(layer=data.get("layer"), how=str(data["how"]))
