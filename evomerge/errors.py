"""Errors users see. Each names the problem and, through ``hint``, the fix.

Every error derives from :class:`EvomergeError`; the CLI prints ``str(err)`` (message plus
hint) and exits with a non-zero status instead of a traceback.
"""

from __future__ import annotations


class EvomergeError(Exception):
    """Base class. ``hint`` tells the user how to fix the problem."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  fix: {hint}")


class ConfigError(EvomergeError):
    """A recipe, search space, task spec or CLI argument is invalid."""


class UnsafeArtifactError(EvomergeError):
    """An input would need code execution (pickle) or escapes its root (path traversal)."""


class CorruptArtifactError(EvomergeError):
    """A model file is malformed: bad header, wrong sizes, overlapping offsets, hash mismatch."""


class ShapeMismatchError(EvomergeError):
    """Source models are not compatible: architecture, tensor names, shapes or dtypes differ."""


class MergeError(EvomergeError):
    """A merge could not produce finite weights (for example NaN in a source)."""


class ExportError(EvomergeError):
    """Writing a model directory failed (disk full, target exists); nothing partial is left."""


class EvalTimeout(EvomergeError):
    """An evaluation ran past its deadline."""


class LeaseHeldError(EvomergeError):
    """Another driver holds the run's lease."""


class StaleLeaseError(EvomergeError):
    """This driver's lease was taken over; its writes are refused."""


class SchemaError(EvomergeError):
    """The archive's schema is older than (or unknown to) this version of evomerge."""


class SearchInterrupted(EvomergeError):
    """A search in this process (``run_search``) was stopped by a signal before its budget; its
    archive was temporary, so ``result`` holds the records so far and there is nothing to resume."""

    def __init__(self, message: str, *, result: object, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result
