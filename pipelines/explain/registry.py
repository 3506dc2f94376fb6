"""Explanation methods by registry name.

A method is one file under ``pipelines/explain/methods/`` holding an ``Explainer`` subclass
decorated with ``@register``; every file there is imported when ``pipelines.explain`` is, so a
new method needs no edit anywhere else. A user plugin calls ``register`` on its own class.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.errors import UserError
from pipelines.explain.base import Display, Explainer

EXPLAINERS: dict[str, Explainer] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: add one instance of ``cls`` to ``EXPLAINERS`` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__} needs a class attribute name = '<registry name>'")
    if not isinstance(getattr(cls, "needs", None), frozenset):
        raise ValueError(f"{cls.__qualname__} needs a class attribute needs = frozenset(...)")
    if not isinstance(getattr(cls, "display", None), Display):
        raise ValueError(f"{cls.__qualname__} needs a class attribute display = Display.<kind>")
    if not isinstance(getattr(cls, "title", None), str):
        raise ValueError(f"{cls.__qualname__} needs a class attribute title = '<display name>'")
    registered = EXPLAINERS.get(name)
    if registered is not None and type(registered) is not cls:
        raise ValueError(
            f"explanation method {name!r} is already registered by "
            f"{type(registered).__module__}.{type(registered).__qualname__}; pick another name"
        )
    EXPLAINERS[name] = cls()
    return cls


def explainers(names: Sequence[str]) -> list[Explainer]:
    """The registered methods called ``names``, in that order; a user error names the choices."""
    unknown = [name for name in names if name not in EXPLAINERS]
    if unknown:
        raise UserError(
            f"unknown explanation method {unknown[0]!r}; choose from {', '.join(EXPLAINERS)}"
        )
    return [EXPLAINERS[name] for name in names]
