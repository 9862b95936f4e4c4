#!/usr/bin/env python
"""Regenerate mtserve/v1/ from protos/ (same as `python -m services.gen_protos`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.gen_protos import main  # noqa: E402

main(sys.argv[1:])
