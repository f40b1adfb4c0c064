"""Fix suggestions: the rules engine lives in ``deadrelu.judge.rules``; this module keeps the
old import path (``from deadrelu.judge.suggestions import suggest``) working."""

from __future__ import annotations

from .rules import *  # noqa: F401,F403
from .rules import __all__  # noqa: F401
