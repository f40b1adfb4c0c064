"""State dicts: finding one inside a checkpoint, and loading it strictly into a module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from ..errors import first_line as _first_line

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params",
                   "model_state", "ema_state_dict", "state_dict_ema", "model_ema", "ema")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Last name parts that model weights have and data tensors do not.
_PARAMETER_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked", "in_proj_weight",
                       "in_proj_bias", "pos_embed", "cls_token", "scale", "gamma", "beta")


def _is_tensor_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def find_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str] | None:
    """The state_dict inside a loaded object: itself, or a checkpoint entry."""
    if _is_tensor_mapping(obj):
        return dict(obj), "state_dict"
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_tensor_mapping(obj.get(key)):
                return dict(obj[key]), "checkpoint"
    return None


#: checkpoint keys under which training loops save the optimizer's state_dict (Lightning: a list)
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_state", "optim", "opt", "optimizer_states")


def find_optimizer_state(obj: Any) -> dict[str, Any] | None:
    """The optimizer ``state_dict()`` a training checkpoint holds next to the model (None: none)."""
    if not isinstance(obj, Mapping):
        return None
    for key in OPTIMIZER_KEYS:
        value = obj.get(key)
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        if isinstance(value, Mapping) and "param_groups" in value and "state" in value:
            return dict(value)
    return None


def looks_like_data(state: Mapping[str, torch.Tensor]) -> bool:
    """Tensors under names no module parameter has (``x``, ``inputs``): data, not weights."""
    return not any(key.rsplit(".", 1)[-1].endswith(_PARAMETER_SUFFIXES) for key in state)


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    stripped: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a state_dict strictly, naming the first mismatched keys on failure."""
    state, stripped = strip_prefixes(state)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s) e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s) e.g. {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} wrongly shaped e.g. {'; '.join(wrong[:3])}")
    if problems:
        raise ModelLoadError(f"{source}: weights do not fit the architecture: {'; '.join(problems)}",
                             hint="check --arch and --arch-kwargs against the code that saved the file")
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:  # dtype or custom load hooks
        raise ModelLoadError(f"{source}: loading the weights failed: {_first_line(exc)}",
                             hint="check --arch and --arch-kwargs against the code that saved the file") from None
    return [f"stripped the {p!r} prefix from every key" for p in stripped]


__all__ = ["OPTIMIZER_KEYS", "STATE_DICT_KEYS", "WRAPPER_PREFIXES", "find_optimizer_state", "find_state_dict",
           "load_state_into", "looks_like_data", "strip_prefixes"]
