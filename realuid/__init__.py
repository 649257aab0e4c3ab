"""realuid: one-step distillation of matching models by (Real) Universal Inverse Distillation.

Importing ``realuid`` (or any submodule) imports only what that module uses:
built-in components register when a recipe is parsed or the components are
listed (:func:`realuid.components.load_builtin_components`).
"""

__version__ = "0.1.0"
