"""Alembic environment for the registry (see mtserve.db)."""

from mtserve.db import run_alembic_env
from services.registry.schema import metadata

run_alembic_env(metadata)
