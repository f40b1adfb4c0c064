/* deadrelu._fused: the fused reduction kernel (fused_kernel.c) as an extension module of
   the package, compiled by setup.py when the package is installed, so the kernel is loaded
   from the package's own folder by Python's import system and never from a cache.

   The module holds integers and no functions: `update`, the address of
   deadrelu_fused_update_call, and `abi`, the DEADRELU_FUSED_ABI it was built with;
   `activation`, the address of deadrelu_fused_activation_call, and `activation_abi`;
   `use_team`, the address of deadrelu_fused_use_team (threads from torch's OpenMP pool).
   deadrelu.fused calls the kernel through ctypes (which releases the GIL for the call);
   the kernel itself uses no Python API. setup.py builds it against the limited API
   (abi3: one build serves every CPython >= 3.10) except on a free-threaded CPython. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fused_kernel.c"

static int exec_module(PyObject *module) {
    PyObject *address = PyLong_FromVoidPtr((void *)&deadrelu_fused_update_call);
    if (address == NULL) return -1;
    const int failed = PyModule_AddObjectRef(module, "update", address);
    Py_DECREF(address);
    if (failed) return -1;
    address = PyLong_FromVoidPtr((void *)&deadrelu_fused_activation_call);
    if (address == NULL) return -1;
    const int missing = PyModule_AddObjectRef(module, "activation", address);
    Py_DECREF(address);
    if (missing) return -1;
    address = PyLong_FromVoidPtr((void *)&deadrelu_fused_use_team);
    if (address == NULL) return -1;
    const int no_team = PyModule_AddObjectRef(module, "use_team", address);
    Py_DECREF(address);
    if (no_team) return -1;
    if (PyModule_AddIntConstant(module, "activation_abi", DEADRELU_ACTIVATION_ABI)) return -1;
    return PyModule_AddIntConstant(module, "abi", DEADRELU_FUSED_ABI);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)exec_module},
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef definition = {
    PyModuleDef_HEAD_INIT, "_fused",
    "deadrelu's fused reduction kernel: its address (update) and argument version (abi).",
    0, NULL, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fused(void) { return PyModuleDef_Init(&definition); }
