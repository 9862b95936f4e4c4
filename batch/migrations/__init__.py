"""Alembic migrations of the batch results store, run by the store itself
(`upgrade head`, see batch/store.py). Packaged with the code."""
