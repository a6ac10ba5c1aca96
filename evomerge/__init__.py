"""evomerge: evolutionary search for model-merge recipes.

Sources that share an architecture (a base and fine-tuned experts) are merged by
recipes (see :mod:`evomerge.recipe`); merge math lives in :mod:`evomerge.merge`.
"""

from __future__ import annotations

__version__ = "0.1.0"
