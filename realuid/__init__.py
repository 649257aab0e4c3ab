"""realuid: one-step distillation of matching models by (Real) Universal Inverse Distillation.

Importing ``realuid`` (or any submodule) imports only what that module uses:
built-in components register when a recipe is parsed or the components are
listed (:func:`realuid.components.load_builtin_components`).

``realuid.load_generator(DIR)`` and ``realuid.load_teacher(DIR)`` load a
folder written by ``realuid export`` (:mod:`realuid.models.export`, imported
on first use).
"""

__version__ = "0.1.0"

_LAZY = {"load_generator": "realuid.models.export", "load_teacher": "realuid.models.export"}


def __getattr__(name: str):
    """``realuid.load_generator`` / ``realuid.load_teacher`` (:mod:`realuid.models.export`), imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'realuid' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
