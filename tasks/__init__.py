"""Celery entry point: ``celery -A tasks worker|beat|call …``.

Tasks by name: ``tokenfleet.rotate``, ``tokenfleet.check``, ``tokenfleet.sweep``.
"""

from __future__ import annotations

from . import rotation
from .app import app

__all__ = ["app", "rotation"]
