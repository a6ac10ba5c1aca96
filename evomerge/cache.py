"""evomerge's cache directory, where artifacts built once per machine are kept between processes.

A leaf of the package (standard library only), so that anything may use it: the C++ merge kernel's
builds (``merge/native.py``), the PS merges of PS+DFS searches (``space/dataflow.py``) and the
model zoos (``zoo.py``, ``zoo_scaled.py``) all live under :func:`cache_root`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """evomerge's cache directory: ``$XDG_CACHE_HOME/evomerge`` (default ``~/.cache/evomerge``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "evomerge"
