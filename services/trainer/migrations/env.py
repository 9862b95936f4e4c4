"""Alembic environment for the trainer's job records (see mtserve.db). The
version table is `trainer_alembic_version`, so the jobs may live in the
registry's or the batch results' database."""

from mtserve.db import run_alembic_env
from services.trainer.schema import VERSION_TABLE, metadata

run_alembic_env(metadata, VERSION_TABLE)
