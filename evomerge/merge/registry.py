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


def get_op(name: str) -> ops.MergeOp:
    """The op called ``name``; a ConfigError lists the known names otherwise."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown merge method {name!r}", hint=f"use one of: {', '.join(sorted(OPS))}"
        ) from None


def list_ops() -> list[str]:
    """The registered op names, sorted."""
    return sorted(OPS)
