"""Explanation methods from the user's own Python files (``--plugins DIR`` on the command line).

A plugin is a ``.py`` file holding an ``Explainer`` subclass decorated with ``@register`` (both
from ``pipelines.explain``), exactly like the built-in methods under ``methods/``. User Python is
only ever loaded here, from a folder named on the command line: never from anything uploaded
through the page.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from pipelines import report
from pipelines.errors import UserError
from pipelines.explain.registry import EXPLAINERS

# Module names plugins are imported under: ``layerscope_plugin_<stem>_<hash of the path>``, so
# two folders may both hold an ``lrp.py`` and neither shadows an installed module of that name.
MODULE_PREFIX = "layerscope_plugin_"
# A registry name is also a CLI value (``--method``, ``--explain``), part of PNG file names and
# the store's ``explanation`` method parameter, so it keeps to the characters all three accept.
METHOD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# Plugin file -> the names it registered: a file loaded again in the same process (a second
# command run in-process) is not imported again, whose classes would clash with its own.
_LOADED: dict[Path, list[str]] = {}


def load_plugins(directory: Path | str) -> list[str]:
    """Import every ``*.py`` file in ``directory`` (not its sub-folders), in name order, and
    return the registry names the files added, in the order they were registered.

    Any problem (no such folder, a syntax error, an exception while importing, a name already
    registered, a class missing one of ``name``, ``title``, ``needs``, ``display`` or
    ``explain``) is a ``UserError`` naming the file and the fix; the failing file's methods are
    left out of the registry.
    """
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        problem = "is a file" if folder.exists() else "does not exist"
        raise UserError(
            f"plugin folder {folder} {problem}; pass --plugins a folder of .py files, each "
            "registering an explanation method"
        )
    files = sorted(path for path in folder.glob("*.py") if path.is_file())
    if not files:
        report.warn(f"no .py files in plugin folder {folder}; no explanation methods were added")
    added: list[str] = []
    for path in files:
        added.extend(load_plugin_file(path))
    return added


def load_plugin_file(path: Path) -> list[str]:
    """Import one plugin file under a unique module name; its newly registered names."""
    path = path.resolve()
    fix = f"fix {path.name}, or move it out of {path.parent}"
    before = set(EXPLAINERS)
    module_name = plugin_module_name(path)
    loaded = _LOADED.get(path)
    if loaded is not None and all(
        name in EXPLAINERS and type(EXPLAINERS[name]).__module__ == module_name for name in loaded
    ):
        return list(loaded)
    try:
        module = import_file(module_name, path)
    except SyntaxError as exc:
        forget(module_name, before)
        raise UserError(
            f"plugin {path} has a syntax error on line {exc.lineno}: {exc.msg}; {fix}"
        ) from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - anything a user file raises
        forget(module_name, before)
        raise UserError(
            f"plugin {path} failed to load ({type(exc).__name__}: {exc}); {fix}"
        ) from None
    added = [name for name in EXPLAINERS if name not in before]
    for name in added:
        problem = method_problem(name)
        if problem:
            forget(module_name, before)
            raise UserError(f"plugin {path}: {problem}; {fix}")
    if not added:
        report.warn(
            f"plugin {path} registered no explanation method; decorate its Explainer subclass "
            "with @register (from pipelines.explain import register)"
        )
    del module  # kept alive by sys.modules, where dataclasses and pickling look it up
    _LOADED[path] = added
    return added


def plugin_module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    return f"{MODULE_PREFIX}{stem}_{digest}"


def import_file(module_name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def method_problem(name: str) -> str | None:
    """What is wrong with the registered method ``name`` beyond what ``register`` checks."""
    explainer = EXPLAINERS[name]
    kind = type(explainer).__qualname__
    if not METHOD_NAME.fullmatch(name):
        return (
            f"{kind}.name = {name!r} is not a usable method name; use letters, digits, '_', "
            "'.' and '-' only (it is a --method value and part of file names)"
        )
    if not isinstance(getattr(type(explainer), "slow", None), bool):
        return f"{kind}.slow must be True or False"
    return None


def forget(module_name: str, before: set[str]) -> None:
    """Undo a failed plugin file: its module and whatever it registered."""
    sys.modules.pop(module_name, None)
    for name in [name for name in EXPLAINERS if name not in before]:
        del EXPLAINERS[name]
