"""Training-framework callbacks around ``deadrelu.Monitor``.

Import the one you use (``deadrelu.integrations.lightning``, ``deadrelu.integrations.transformers``);
``import deadrelu`` never imports a framework, and a missing one is one line naming the extra to install.
"""

from __future__ import annotations


def missing_extra(framework: str, extra: str, module: str) -> ModuleNotFoundError:
    """The one-line error for a framework that is not installed."""
    error = ModuleNotFoundError(f"deadrelu.integrations.{module} needs {framework}, which is not installed: "
                                f"pip install 'deadrelu[{extra}]'")
    error.name = module
    return error
