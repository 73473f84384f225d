"""One registration mechanism for defenses, attacks, recognisers, attribute models and experiments
(timm-style): ``@REG.register("name")`` then ``REG.create("name", **kw)``.

A registry knows the package its entries live in and imports every module of it on first use
(:meth:`Registry.load`): a new defense or attack is one file, with no list to edit, and a module that
fails to import is an error naming it (nothing is skipped silently).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from faceveil.errors import FaceveilError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str | None = None, skip: tuple[str, ...] = ()) -> None:
        """``package``: where entries register themselves (every non-private module of it is imported on
        first use, except the ``skip`` ones: support modules that are not plugins)."""
        self.kind, self.package, self.skip = kind, package, skip
        self._items: dict[str, Callable[..., T]] = {}
        self._loaded = package is None
        self._loading = False

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name] is not fn:
                raise FaceveilError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            return fn

        return deco

    def load(self) -> None:
        """Import every module of the package once (entries register themselves on import)."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            pkg = importlib.import_module(self.package)  # type: ignore[arg-type]
            for m in pkgutil.iter_modules(pkg.__path__):
                if not m.name.startswith("_") and m.name not in self.skip:
                    importlib.import_module(f"{self.package}.{m.name}")
            self._loaded = True
        finally:
            self._loading = False

    def get(self, name: str) -> Callable[..., T]:
        self.load()
        try:
            return self._items[name]
        except KeyError:
            raise FaceveilError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items))}"
            ) from None

    def create(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._items
