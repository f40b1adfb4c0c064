"""How the fused kernel is compiled: read by ``setup.py`` (install time) and by
``deadrelu.fused`` (the opt-in run-time build), so both build the same code.

Constants only, no imports: ``setup.py`` runs this file before the package is importable.

Portable on purpose: an installed package may be a wheel run on another CPU, so no
``-march=native``. The kernel picks its vector width at load time instead (GCC
``target_clones`` in ``fused_kernel.c``). ``-fassociative-math`` (with the two flags it
needs) lets the compiler vectorise the sums (it reorders float64 additions of float32
values; counts stay exact); IEEE comparisons are kept, so NaN is never active.
"""

#: Compiler flags for GCC and Clang (``unix`` compilers in setuptools' terms).
COMPILE_ARGS = ("-std=c11", "-O3", "-g0", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math",
                "-fno-signed-zeros", "-pthread")
#: Linker flags (the kernel splits rows over POSIX threads).
LINK_ARGS = ("-pthread",)
#: Libraries to link.
LIBRARIES = ("m",)
