"""A name → builder table shared by the loss, optimizer and schedule registries."""
from __future__ import annotations

import difflib
from typing import Callable, Iterator, TypeVar

T = TypeVar("T", bound=Callable)


class Registry:
    """Components register themselves by name on import; an unknown name fails with the choices."""

    def __init__(self, flag: str):
        self.flag = flag
        self._entries: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.flag} {name!r} is already registered")
            self._entries[name] = fn
            return fn
        return wrap

    def get(self, name: str) -> Callable:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {self.flag} {name!r}{hint}; choose one of {sorted(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
