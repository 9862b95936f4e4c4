"""Alembic environment for the batch results store (see mtserve.db). The
version table is `batch_alembic_version`, so the results may live in the
registry's database."""

from batch.schema import VERSION_TABLE, metadata
from mtserve.db import run_alembic_env

run_alembic_env(metadata, VERSION_TABLE)
