"""Values as standard JSON: JSON has no NaN or infinity, so every non-finite float becomes null
(the CLI's ``--json`` documents and the dashboard's API answers alike)."""

from __future__ import annotations

import math
from typing import Any


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, so that
    ``json.dumps(..., allow_nan=False)`` gives standard JSON that every parser reads."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value
