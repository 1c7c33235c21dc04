"""tune-dist tests: the tiny model and launch helpers are plain modules next to the tests."""

from __future__ import annotations

import sys
from pathlib import Path

# Uniquely named helper modules (dist_launch, dist_tiny_transformer, dist_worker) live here; the
# tests never import tune.models.
sys.path.insert(0, str(Path(__file__).parent))
