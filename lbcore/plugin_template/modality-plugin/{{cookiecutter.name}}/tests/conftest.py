"""Lets ``pytest`` find the plugin package in a source checkout before ``pip install -e .``; harmless after."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
