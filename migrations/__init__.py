"""Alembic migrations for tokenfleet's tables (run with ``tokenfleet migrate``)."""
