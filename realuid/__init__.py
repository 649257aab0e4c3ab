"""realuid: one-step distillation of matching models by (Real) Universal Inverse Distillation."""

__version__ = "0.1.0"

from realuid.registry import components, get, load_builtin_components, register  # noqa: E402

load_builtin_components()

__all__ = ["components", "get", "register", "load_builtin_components", "__version__"]
