"""Merge operators by name (mergekit's method names)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from evomerge.errors import ConfigError
from evomerge.merge import ops

OPS: Mapping[str, ops.MergeOp] = MappingProxyType({
    op.spec.name: op
    for op in (
        ops.Linear(),
        ops.TaskArithmetic(),
        ops.Ties(),
        ops.DareTies(),
        ops.DareLinear(),
        ops.Breadcrumbs(),
        ops.BreadcrumbsTies(),
        ops.Della(),
        ops.DellaLinear(),
        ops.Sce(),
        ops.Slerp(),
        ops.NuSlerp(),
        ops.MultiSlerp(),
        ops.ModelStock(),
        ops.Passthrough(),
    )
})


MERGEKIT_ONLY = frozenset({"arcee_fusion", "karcher", "nearswap", "ram", "ramplus_tl"})
"""mergekit 0.1.5's methods that evomerge does not build."""


def get_op(name: str) -> ops.MergeOp:
    """The op called ``name``; a ConfigError lists the known names otherwise (and says so when
    ``name`` is one of mergekit's methods that evomerge does not build)."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        if name in MERGEKIT_ONLY:
            raise ConfigError(f"unknown merge method {name!r}: a mergekit method that evomerge does not build",
                              hint=f"merge it with mergekit, or use one of: {', '.join(sorted(OPS))}") from None
        raise ConfigError(
            f"unknown merge method {name!r}", hint=f"use one of: {', '.join(sorted(OPS))}"
        ) from None


def list_ops() -> list[str]:
    """The registered op names, sorted."""
    return sorted(OPS)
