"""tokenfleet: keep other services' API tokens, keys and sessions fresh."""

from __future__ import annotations

__version__ = "0.1.0"
