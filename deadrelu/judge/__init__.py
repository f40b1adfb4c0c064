"""Judge: turn statistics into verdicts, gate outcomes and suggestions."""

from .gate import GateOutcome, GateViolation, check_gate
from .verdicts import SiteVerdict, judge_site

__all__ = ["GateOutcome", "GateViolation", "check_gate", "SiteVerdict", "judge_site"]
