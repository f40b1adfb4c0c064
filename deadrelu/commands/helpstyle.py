"""How every command's ``--help`` reads: a metavar on every option, and an Examples section.

typer prints an option without a metavar as its Python type (``<bool>``, ``<str>``,
``<list[Path]>``); here a flag shows nothing after its name and a valued option a word
that says what to give (SPEC, FILE, N), as ``scan`` declares them. A metavar declared
on the option wins; the table below names the rest once, so a new option gets a sensible
word from its type. Each command's Examples section (click's epilog) is written here too,
beside the others, so they read alike.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

#: metavars by option name, for options declared without one
METAVARS = {
    "--arch": "SPEC", "--model": "SPEC", "--data": "SPEC", "--arch-kwargs": "JSON", "--import": "FILE",
    "--weights": "FILE", "--key": "NAME", "--input-key": "NAME", "--layers": "GLOB", "--exclude": "GLOB",
    "--device": "DEVICE", "--batch-size": "N", "--limit": "N", "--atol": "X", "--swap-activation": "KIND[:SLOPE]",
    "--out": "PATH", "--state-dict": "FILE", "--json": "FILE", "--html": "FILE", "--png-dir": "DIR",
}
#: metavars by value type, for the options the table above does not name
TYPE_METAVARS = {"int": "N", "float": "X", "str": "TEXT", "path": "PATH"}
#: click's own type names (typer before 0.29 has no ``bare_type``; its params carry a click type)
CLICK_TYPE_NAMES = {"integer": "int", "float": "float", "text": "str", "path": "path"}


def _type_name(param: Any) -> str:
    """The option's value type as typer 0.29 names it (``int``, ``str``, ``list[Path]``), or from the
    click type older typer versions give it."""
    if hasattr(param, "bare_type"):
        return str(param.bare_type()).lower()
    name = str(getattr(getattr(param, "type", None), "name", "")).lower()
    return CLICK_TYPE_NAMES.get(name, name)


def _no_type(ctx: Any) -> None:
    return None


def _fill_metavar(param: Any) -> None:
    """Give an option declared without a metavar one (flags: none shown at all); an argument's
    metavar (MODEL, PART.json...) says what to give, so its Python type is not shown beside it."""
    if isinstance(param, TyperArgument):
        if param.metavar is not None:
            param.display_type_rich = _no_type  # type: ignore[method-assign]  # hides <path>, <list[Path]>
        return
    if not isinstance(param, TyperOption) or param.metavar is not None:
        return
    if param.is_flag:
        param.metavar = ""
        return
    named = next((METAVARS[opt] for opt in param.opts if opt in METAVARS), None)
    if named is None:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is not None and descriptor.is_choice:
            return  # choices show themselves: <dead|dormant>
        type_name = "path" if descriptor is not None and descriptor.is_path else _type_name(param)
        named = TYPE_METAVARS.get(type_name.removeprefix("list[").removesuffix("]"), "VALUE")
    param.metavar = named


EXAMPLES: dict[str, str] = {
    "scan": """[bold]Examples[/]

  deadrelu scan model.pt data.npy --arch net.py:build
  deadrelu scan model.pt2 data.npz --key images --html report.html
  deadrelu scan ./hf-folder prompts.jsonl --max-dead-ratio 0.05 --junit deadrelu.xml
  deadrelu scan --model net.py:build --weights w.safetensors data.npy --verbose""",
    "report": """[bold]Examples[/]

  deadrelu report result.json
  deadrelu report result.json --html report.html --verbose""",
    "version": """[bold]Examples[/]

  deadrelu version
  deadrelu --version""",
    "prune": """[bold]Examples[/]

  deadrelu prune model.pt data.npy --arch net.py:build --out pruned.pt2
  deadrelu prune model.pt data.npy --arch net.py:build --state-dict pruned.pt --json changes.json""",
    "fix": """[bold]Examples[/]

  deadrelu fix model.pt data.npy --arch net.py:build --recycle dead --out fixed.pt
  deadrelu fix model.pt data.npy --arch net.py:build --swap-activation leaky_relu:0.01 --out fixed.pt""",
    "merge": """[bold]Examples[/]

  deadrelu merge part-0.json part-1.json --json whole.json
  deadrelu merge parts/*.json --max-dead-ratio 0.05""",
    "trend": """[bold]Examples[/]

  deadrelu trend ckpt/step_*.pt data.npy --arch net.py:build --html trend.html
  deadrelu trend monitor.jsonl""",
    "diff": """[bold]Examples[/]

  deadrelu diff base.json new.json
  deadrelu diff base.json new.json --max-new-dead 0 --junit diff.xml""",
}


class HelpCommand(TyperCommand):
    """A command whose ``--help`` shows a metavar on every option and its Examples section."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.epilog:
            self.epilog = EXAMPLES.get(self.name or "")

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            _fill_metavar(param)
        return params


class HelpGroup(TyperGroup):
    """The top-level group: its own options (``--version``, ``--help``, completion) without ``<bool>``."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            _fill_metavar(param)
        return params


class App(typer.Typer):
    """``typer.Typer`` whose commands are ``HelpCommand`` unless they name another class."""

    def command(self, name: str | None = None, *, cls: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().command(name, cls=cls or HelpCommand, **kwargs)


__all__ = ["App", "HelpCommand", "HelpGroup", "METAVARS", "EXAMPLES"]
