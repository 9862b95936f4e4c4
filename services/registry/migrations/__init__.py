"""Alembic migrations of the registry schema, run by the registry at start
(`upgrade head`, see services/registry/store.py). Packaged with the code."""
