"""Provider modules, one per external service, and the built-in registry."""

from __future__ import annotations

from .chitai_gorod import ChitaiGorodProvider
from .registry import Registry
from .webkassa import WebkassaProvider

#: Every built-in provider. Add a module, then add its class here.
BUILTIN = Registry([ChitaiGorodProvider, WebkassaProvider])

__all__ = ["BUILTIN", "Registry"]
