"""The component registry.

Every building block (path, coupling, distance, objective, network, generator,
data, teacher, metric, trainer) registers itself under a *kind* and a *name*
with :func:`register`. Registration also makes the class gin-configurable
under that name, so a recipe can say ``Trainer.path = @RectifiedFlow()`` and
``RectifiedFlow.t_min = 1e-3``.

A user's own component needs nothing more than the decorator in an imported
module (gin ``import my_module`` in a recipe, or ``realuid run --import
my_module``)::

    from realuid.components import register
    from realuid.paths import AffinePath, PathCoefficients

    @register("path")
    class QuadraticFlow(AffinePath):
        '''x_t = (1 - t^2) x0 + t^2 x1.'''
        def coefficients(self, t):
            return PathCoefficients(a=1 - t**2, da=-2 * t, b=t**2, db=2 * t)
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass

import gin

KINDS = ("path", "schedule", "coupling", "distance", "objective", "network", "generator", "data",
         "teacher", "metric", "trainer", "loop")


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    cls: type

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"

    def parameters(self) -> list[tuple[str, str]]:
        """(name, default) of each constructor argument; REQUIRED where there is none."""
        params = []
        for p in inspect.signature(self.cls.__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            default = "REQUIRED" if p.default is p.empty else repr(p.default)
            params.append((p.name, default))
        return params


_COMPONENTS: dict[str, Component] = {}


def register(kind: str, name: str | None = None):
    """Class decorator: register ``cls`` as a component of ``kind`` and make it gin-configurable.

    The gin name is ``name`` (default: the class name), so bindings read
    ``Name.param = value``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")

    def decorate(cls: type) -> type:
        key = name or cls.__name__
        known = _COMPONENTS.get(key)
        if known is not None:
            if (known.cls.__module__, known.cls.__qualname__) == (cls.__module__, cls.__qualname__):
                return known.cls  # the same module imported twice (e.g. by path and by name)
            raise ValueError(f"component name {key!r} is taken by {known.cls.__module__}."
                             f"{known.cls.__qualname__}; register {cls.__qualname__} under another name")
        configurable = gin.configurable(key)(cls)
        _COMPONENTS[key] = Component(kind, key, configurable)
        return configurable

    return decorate


def components(kind: str | None = None) -> list[Component]:
    """Registered components, sorted by kind then name; only ``kind`` if given."""
    load_builtin_components()
    found = [c for c in _COMPONENTS.values() if kind is None or c.kind == kind]
    return sorted(found, key=lambda c: (KINDS.index(c.kind), c.name.lower()))


def get(name: str) -> Component:
    """The component called ``name``; a :class:`~realuid.errors.UserError` with suggestions if none."""
    from realuid.errors import UserError

    load_builtin_components()
    if name in _COMPONENTS:
        return _COMPONENTS[name]
    raise UserError(f"no component is called {name!r}", "component name", suggest(name))


def suggest(name: str) -> str:
    """'did you mean ...' and the names of the closest match's kind."""
    names = list(_COMPONENTS)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    close += [n for n in names if n.lower() == name.lower() and n not in close]
    if close:
        kind = _COMPONENTS[close[0]].kind
        same_kind = ", ".join(c.name for c in components(kind))
        return f"did you mean {' or '.join(repr(c) for c in close)}? Components of kind {kind!r}: {same_kind}"
    return "run `realuid list-components` to see every registered name"


_LOADED = False


def load_builtin_components() -> None:
    """Import every module of the package once, so that all built-in components register."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import realuid

    for info in pkgutil.walk_packages(realuid.__path__, "realuid."):
        if not info.name.startswith(("realuid.cli", "realuid.__main__")):
            importlib.import_module(info.name)
