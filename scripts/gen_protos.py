#!/usr/bin/env python
"""Regenerate mtserve_api/v1/ from protos/ (same as `python -m mtserve_api.gen_protos`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtserve_api.gen_protos import main

main(sys.argv[1:])
