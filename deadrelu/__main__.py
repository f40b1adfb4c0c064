"""``python -m deadrelu``: the CLI, also as ``torchrun --nproc-per-node N -m deadrelu scan ...``."""

from __future__ import annotations

from .cli import main

main()
