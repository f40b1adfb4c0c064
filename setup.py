"""Builds deadrelu's fused reduction kernel when the package is installed.

All metadata lives in pyproject.toml; this file only adds the optional C extension
``deadrelu._fused`` (``deadrelu/_fused.c``, which includes ``deadrelu/fused_kernel.c``).
``optional=True``: where no C compiler works, the install still succeeds, without the
module, and scans use the eager torch reduction (the report's ``fused_note`` says why).
Both ``pip install .`` and ``pip install -e .`` build it (the editable install puts it
next to the sources).

The flags are portable (``deadrelu/_kernel_flags.py``): no ``-march=native``, because
the result may be a wheel. The module uses the limited API, so the wheel is ``abi3``.
"""

from __future__ import annotations

import runpy
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
FLAGS = runpy.run_path(str(HERE / "deadrelu" / "_kernel_flags.py"))
#: A free-threaded CPython has no limited API: build for that interpreter only.
LIMITED = not sysconfig.get_config_var("Py_GIL_DISABLED")


class BuildKernel(build_ext):
    """build_ext that adds the kernel's flags for GCC/Clang (MSVC has no POSIX threads:
    the build fails there and, being optional, leaves the eager reduction)."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":
            for extension in self.extensions:
                extension.extra_compile_args = [*extension.extra_compile_args, *FLAGS["COMPILE_ARGS"]]
                extension.extra_link_args = [*extension.extra_link_args, *FLAGS["LINK_ARGS"]]
                extension.libraries = [*extension.libraries, *FLAGS["LIBRARIES"]]
        super().build_extensions()


setup(
    ext_modules=[Extension(
        "deadrelu._fused",
        sources=["deadrelu/_fused.c"],
        depends=["deadrelu/fused_kernel.c"],
        define_macros=[("Py_LIMITED_API", "0x030A0000")] if LIMITED else [],
        py_limited_api=LIMITED,
        optional=True,
    )],
    cmdclass={"build_ext": BuildKernel},
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if LIMITED else {},
)
