"""Recipes: parsing gin files and bindings, with errors that say what, where and how to fix."""

from __future__ import annotations

import importlib
import logging
import re
import sys
import tokenize
from collections.abc import Sequence
from pathlib import Path

import gin

from realuid.errors import UserError
from realuid.components import get, load_builtin_components, suggest

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


def absolute_imports(modules: Sequence[str]) -> list[str]:
    """``--import`` values as a run folder records them: a .py file as its absolute path, a module name as given.

    ``realuid run --resume`` may start in another folder than the run did; an
    absolute path still finds the file there (a relative one would not).
    """
    return [str(Path(name).resolve()) if name.endswith(".py") else name for name in modules]


def _where(message: str) -> str:
    lines = message.splitlines()
    return " ".join(line.strip() for line in lines[1:3]) or "the recipe"


_TOKEN = re.compile(r"Failed to parse token '([^']*)'")
_IN_CALL = re.compile(r"In call to configurable '([\w./]+)'")
_UNSET_MACRO = re.compile(r"In call to configurable 'macro' .* in scope '([\w./]+)'")


def translate_gin_error(err: Exception, where: str | None = None) -> UserError:
    """Turn a gin parse/bind error into a :class:`UserError` (``where`` overrides the place gin names)."""
    message = str(err)
    where = where or _where(message)
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
    if (m := _TOKEN.search(message)) is not None:
        return UserError(f"cannot read the value {m.group(1)!r}", where,
                         "values are Python literals: numbers, 'quoted strings', [lists], (tuples), True, False, "
                         "None, or references such as @RealUID(); NaN and Inf are not accepted")
    if isinstance(err, OSError):
        return UserError(f"a file the recipe includes cannot be opened ({message.splitlines()[0]})", where,
                         "include paths are relative to the current folder or to the recipe's folder; run "
                         "realuid from the repository root or fix the include line")
    if isinstance(err, tokenize.TokenError):
        return UserError("malformed recipe or binding: it ends inside an open bracket or string", where,
                         "close every bracket and quote, e.g. --bind 'GaussianMixture.weights = [1.0, 2.0]'")
    if isinstance(err, SyntaxError):
        first = message.splitlines()[0] if message.strip() else type(err).__name__
        return UserError(f"malformed recipe or binding ({first})", where,
                         "write bindings as 'Name.param = value', e.g. --bind 'RealUID.alpha = 0.9'; close every "
                         "bracket and quote")
    return UserError(message.splitlines()[0], where, "check the recipe and bindings against `realuid show NAME`")


def _parse(parse, where: str | None) -> None:
    """Run a gin parse, its errors translated; gin's own log lines (``Path not found``) silenced."""
    logging.disable(logging.ERROR)
    try:
        parse()
    except UserError:
        raise
    except (ValueError, SyntaxError, TypeError, ImportError, OSError, tokenize.TokenError) as err:
        if where is None and isinstance(err, SyntaxError) and getattr(err, "filename", None):
            where = f"{err.filename}, line {err.lineno}"
        raise translate_gin_error(err, where) from None
    finally:
        logging.disable(logging.NOTSET)


def parse_recipe(recipe: Path | str | None, bindings: Sequence[str] = (), config_text: str | None = None) -> None:
    """Clear gin and load a recipe file (or saved config text) and extra bindings, one by one.

    Each ``--bind`` is parsed on its own, so an error names the binding at fault.
    ``include`` lines are looked up from the current folder, then from the
    recipe's folder and its parent (so ``include 'gin/base/...'`` works from
    anywhere for a recipe in ``gin/``).
    """
    load_builtin_components()
    for b in bindings:
        if not _BINDING.match(b) and not b.strip().startswith(("import ", "include ")):
            raise UserError(f"the binding {b!r} is malformed", "--bind",
                            "write it as 'Name.param = value', e.g. --bind 'RealUID.alpha = 0.9'")
    gin.clear_config()
    if config_text is not None:
        _parse(lambda: gin.parse_config(config_text), "the run folder's config.gin")
    if recipe is not None:
        path = Path(recipe)
        if not path.exists():
            raise UserError(f"recipe {str(recipe)!r} does not exist", "RECIPE argument",
                            "give the path of a .gin file, e.g. gin/realuid_fm_gmm.gin (see the gin/ folder)")
        if not path.is_file():
            raise UserError(f"recipe {str(recipe)!r} is a folder, not a .gin file", "RECIPE argument",
                            "give the path of a .gin file, e.g. gin/realuid_fm_gmm.gin")
        prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)  # gin has no public API to remove one
        saved = list(prefixes) if isinstance(prefixes, list) else None
        for folder in (path.resolve().parent, path.resolve().parent.parent):
            if saved is None or str(folder) not in saved:
                gin.add_config_file_search_path(str(folder))
        try:
            _parse(lambda: gin.parse_config_file(str(path)), None)
        finally:
            if saved is not None:
                prefixes[:] = saved
    for b in bindings:
        _parse(lambda b=b: gin.parse_config(b), f"--bind {b!r}")


def call_configured(fn, **kwargs):
    """Call a gin configurable, translating errors raised while gin builds its arguments.

    Besides gin's own errors (unknown names, a REQUIRED parameter left unset), a
    ``TypeError``/``ValueError``/``RuntimeError`` raised while a component is
    being constructed (a value of the wrong type that the component did not
    check itself) becomes a :class:`UserError` naming that component; ``--debug``
    shows the traceback.
    """
    try:
        return fn(**kwargs)
    except UserError:
        raise
    except (ValueError, TypeError, RuntimeError) as err:
        message = str(err)
        if _UNKNOWN.search(message) or _UNKNOWN_PARAM.search(message):
            raise translate_gin_error(err) from None
        if (m := _UNSET_MACRO.search(message)) is not None:
            name = m.group(1)
            raise UserError(f"the recipe uses the macro %{name}, which no binding sets", "recipe",
                            f"bind it with --bind \"{name} = VALUE\" (the recipe's header comment says what it "
                            "expects, e.g. the run folder of a first stage)") from None
        if isinstance(err, TypeError) and ("REQUIRED" in message or "missing" in message):
            raise UserError(f"the recipe leaves a required parameter unset ({message.splitlines()[0]})",
                            "recipe", "bind it in the recipe or with --bind") from None
        if (m := _IN_CALL.search(message)) is not None:
            name = m.group(1).split("/")[-1]
            raise UserError(f"{name} cannot be built from its bindings ({type(err).__name__}: "
                            f"{message.splitlines()[0][:300]})", f"the bindings of {name}",
                            f"check the values bound to {name}.* (types and ranges, see `realuid show {name}`); "
                            "--debug shows the traceback") from None
        raise
