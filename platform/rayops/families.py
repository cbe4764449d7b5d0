"""The model families rayops knows, by name: its own (``mlp``, ``xgboost``, imported when
first asked for) and those a plugin registers with :func:`register_family` (a module named
in ``model.plugins`` is imported wherever the config is validated and in every replica, so
its registration runs there too). See :class:`rayops.models.family.Family` for what a family
is; this registry sits on the lowest floor so that the config can check names against it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from rayops.errors import ConfigError

# A registered family is a rayops.models.family.Family; this floor only holds them (the
# interface lives with the models, which sit above the config that checks names here).
Family = Any

_FAMILIES: dict[str, Family] = {}
# rayops' own, imported when first asked for (xgboost is an optional dependency).
_BUILT_IN = {
    "mlp": "rayops.models.mlp",
    "xgboost": "rayops.models.xgboost",
    "bpr": "rayops.models.recommend",
    "sasrec": "rayops.models.recommend",
}
# The tasks each of rayops' own families learns, known without importing it.
BUILT_IN_TASKS = {
    "mlp": ("classification", "regression", "forecasting"),
    "xgboost": ("classification", "regression", "forecasting"),
    "bpr": ("recommendation",),
    "sasrec": ("recommendation",),
}


def register_family(family: Family) -> Family:
    """Make ``family`` known by its name (another family under a known name is refused)."""
    known = _FAMILIES.get(family.name)
    if known is not None and type(known) is not type(family):
        raise ValueError(
            f"model family {family.name!r} is registered already ({type(known).__name__})"
        )
    _FAMILIES[family.name] = family
    return family


def family_names() -> list[str]:
    return sorted({*_BUILT_IN, *_FAMILIES})


def tasks_of(name: str) -> tuple[str, ...] | None:
    """The tasks family ``name`` learns, without importing rayops' own; None for a family
    that is neither built in nor registered."""
    family = _FAMILIES.get(name)
    return tuple(family.tasks) if family is not None else BUILT_IN_TASKS.get(name)


def registered(name: str) -> Family | None:
    """The family called ``name`` if it is imported already (nothing is imported)."""
    return _FAMILIES.get(name)


def family_named(name: str) -> Family:
    """The family called ``name``: rayops' own, or one a plugin registered."""
    if name not in _FAMILIES and name in _BUILT_IN:
        importlib.import_module(_BUILT_IN[name])
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown model family {name!r} (known: "
            f"{', '.join(family_names())}); a plugin's family is known once "
            "its module is imported (model.plugins)"
        ) from None


def import_plugins(modules: Sequence[str]) -> None:
    """Import the modules that register plugin families (``model.plugins``)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"model.plugins: cannot import {module!r} ({exc})") from None
