"""An explicit registry of provider classes, looked up by name."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator

from tokenfleet.errors import InvalidConfig, UnknownProvider

from .base import AnyProvider


class Registry:
    """Maps provider names to classes. Unknown names raise :class:`UnknownProvider`."""

    def __init__(self, providers: Iterable[type[AnyProvider]] = ()) -> None:
        self._providers: dict[str, type[AnyProvider]] = {}
        for provider in providers:
            self.register(provider)

    def register(self, provider: type[AnyProvider]) -> type[AnyProvider]:
        name = getattr(provider, "name", None)
        if not isinstance(name, str) or not name:
            raise InvalidConfig(f"provider class {provider.__qualname__} has no name")
        existing = self._providers.get(name)
        if existing is not None and existing is not provider:
            raise InvalidConfig(f"two providers are named {name!r}")
        self._providers[name] = provider
        return provider

    def get(self, name: object) -> type[AnyProvider]:
        if not isinstance(name, str):
            raise UnknownProvider(f"provider must be a string, got {type(name).__name__}")
        try:
            return self._providers[name]
        except KeyError:
            known = ", ".join(sorted(self._providers)) or "none"
            raise UnknownProvider(f"unknown provider {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __iter__(self) -> Iterator[type[AnyProvider]]:
        return iter(sorted(self._providers.values(), key=lambda p: p.name))

    def names(self) -> list[str]:
        return sorted(self._providers)

    def with_extra(self, paths: Iterable[str]) -> Registry:
        """Return a copy with extra providers loaded from ``module:Class`` import paths."""
        extra = Registry(self)
        for path in paths:
            module_name, _, attr = path.partition(":")
            if not module_name or not attr:
                raise InvalidConfig(f"extra provider {path!r} must look like 'module:Class'")
            try:
                cls = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise InvalidConfig(f"cannot import extra provider {path!r}: {exc}") from None
            extra.register(cls)
        return extra
