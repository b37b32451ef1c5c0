"""One small registry: a name -> builder dict with ``register`` and a ``get`` that suggests.

Every pluggable kind (encoders, objectives, tasks, protocols, dataset layouts) has one flat
registry instance, so names are listed, swept by tests and looked up with the same error.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from avssl.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str], n: int = 3) -> str:
    """``" (did you mean: a, b?)"`` for the closest choices to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:  # substring matches catch e.g. "vivit" -> all vivit_* names
        close = [c for c in choices if name and name.lower() in c.lower()][:n]
    return f" (did you mean: {', '.join(close)}?)" if close else ""


class Registry(Generic[T]):
    """A named collection of builders of one kind (e.g. ``Registry("encoder")``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register()`` uses the function's ``__name__``."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            names = self.names()
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, names)}; "
                f"known {self.kind}s: {', '.join(names)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
