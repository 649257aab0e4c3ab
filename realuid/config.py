"""Recipes: parsing gin files and bindings, with errors that say what, where and how to fix."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import gin

from realuid.errors import UserError
from realuid.registry import get, load_builtin_components, suggest

_UNKNOWN = re.compile(r"No configurable matching (?:reference )?'@?([\w./]+?)(?:\(\))?'")
_UNKNOWN_PARAM = re.compile(r"Configurable '([\w./]+)' doesn't have a parameter named '(\w+)'")
_BINDING = re.compile(r"^\s*[\w./]+\s*=\s*\S.*$", re.S)


def import_modules(modules: Sequence[str]) -> None:
    """Import user modules (dotted names or .py files) so that their components register."""
    for name in modules:
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                if not path.is_file():
                    raise ModuleNotFoundError(f"no file {path}")
                sys.path.insert(0, str(path.parent))
                name = path.stem
            else:
                sys.path.insert(0, str(Path.cwd()))
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            raise UserError(f"cannot import {name!r} ({err})", "--import",
                            "give a module importable from the current folder, or a path to a .py file") from None


def _where(message: str) -> str:
    lines = message.splitlines()
    return " ".join(line.strip() for line in lines[1:3]) or "the recipe"


def translate_gin_error(err: Exception) -> UserError:
    """Turn a gin parse/bind error into a :class:`UserError`."""
    message = str(err)
    where = _where(message)
    if (m := _UNKNOWN.search(message)) is not None:
        name = m.group(1).split("/")[-1]
        return UserError(f"no component or configurable is called {name!r}", where, suggest(name))
    if (m := _UNKNOWN_PARAM.search(message)) is not None:
        name, param = m.group(1).split("/")[-1], m.group(2)
        try:
            params = ", ".join(p for p, _ in get(name).parameters())
        except UserError:
            params = "see `realuid show NAME`"
        return UserError(f"{name} has no parameter {param!r}", where, f"{name} takes: {params}")
    if isinstance(err, SyntaxError):
        return UserError(f"malformed recipe or binding ({message.splitlines()[0]})", where,
                         "write bindings as 'Name.param = value', e.g. --bind 'RealUID.alpha = 0.9'")
    return UserError(message.splitlines()[0], where, "check the recipe and bindings against `realuid show NAME`")


def parse_recipe(recipe: Path | str | None, bindings: Sequence[str] = (), config_text: str | None = None) -> None:
    """Clear gin and load a recipe file (or saved config text) and extra bindings."""
    load_builtin_components()
    for b in bindings:
        if not _BINDING.match(b) and not b.strip().startswith(("import ", "include ")):
            raise UserError(f"the binding {b!r} is malformed", "--bind",
                            "write it as 'Name.param = value', e.g. --bind 'RealUID.alpha = 0.9'")
    gin.clear_config()
    try:
        if config_text is not None:
            gin.parse_config(config_text)
        if recipe is not None:
            path = Path(recipe)
            if not path.is_file():
                raise UserError(f"recipe {str(recipe)!r} does not exist", "RECIPE argument",
                                "give the path of a .gin file, e.g. gin/realuid_fm_gmm.gin (see the gin/ folder)")
            gin.parse_config_file(str(path))
        gin.parse_config(list(bindings))
    except UserError:
        raise
    except (ValueError, SyntaxError, TypeError, ImportError) as err:
        raise translate_gin_error(err) from None


def call_configured(fn, **kwargs):
    """Call a gin configurable, translating errors raised while gin builds its arguments."""
    try:
        return fn(**kwargs)
    except UserError:
        raise
    except ValueError as err:
        if _UNKNOWN.search(str(err)) or _UNKNOWN_PARAM.search(str(err)):
            raise translate_gin_error(err) from None
        raise
    except TypeError as err:
        if "REQUIRED" in str(err) or "missing" in str(err):
            raise UserError(f"the recipe leaves a required parameter unset ({str(err).splitlines()[0]})",
                            "recipe", "bind it in the recipe or with --bind") from None
        raise
