"""Registries found, not kept by hand: every module of a package is imported and the
subclasses of a base that name themselves (a class attribute) are collected, so adding a
backbone or a detector is adding its module."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, Type, TypeVar

T = TypeVar("T")


def named_subclasses(package: str, base: Type[T], attr: str = "name") -> Dict[str, Type[T]]:
    """``{value of attr: class}`` for every subclass of ``base`` (at any depth) that sets
    ``attr`` itself, after importing every module of ``package``; a name given twice raises."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")
    found: Dict[str, Type[T]] = {}

    def walk(cls: type) -> None:
        for sub in cls.__subclasses__():
            if attr in vars(sub):
                name = vars(sub)[attr]
                if name in found and found[name] is not sub:
                    raise TypeError(f"{attr}={name!r} is claimed by {found[name]} and {sub}")
                found[name] = sub
            walk(sub)

    walk(base)
    return dict(sorted(found.items()))
