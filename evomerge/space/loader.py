"""Strict, safe YAML loading for recipes, search spaces and task specs.

Promise 5 and 7 of RELIABILITY.md: nothing in a YAML file is executed, and its size is capped.
On top of ``yaml.SafeLoader`` (no python/* tags) this loader refuses anchors and aliases
(so no alias bomb), duplicate keys, non-string keys and files that are not UTF-8, and every
error names the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import ConfigError

MAX_YAML_BYTES = 1 * 2**20


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases and with unique string keys."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem="anchors and aliases (*name) are not allowed", problem_mark=event.start_mark
            )
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise yaml.MarkedYAMLError(
                problem=f"anchor &{anchor} is not allowed; write the value out", problem_mark=event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.MarkedYAMLError(
                    problem=f"keys must be strings, got {key!r}", problem_mark=key_node.start_mark
                )
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def loads_yaml(text: str | bytes, *, source: str = "<string>", max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse one YAML document strictly; raise :class:`ConfigError` naming ``source`` and the line."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise ConfigError(
            f"{source}: {len(raw)} bytes is larger than the {max_bytes}-byte limit for YAML files",
            hint="split the file or remove generated content; configs are meant to be short",
        )
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {err.start})", hint="save the file as UTF-8"
        ) from None
    try:
        return yaml.load(decoded, Loader=_StrictLoader)  # noqa: S506,TID251 - strict safe loader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        context = ""
        if err.context and err.context_mark and err.problem:
            context = f" ({err.context} started on line {err.context_mark.line + 1})"
        raise ConfigError(
            f"{source}: {where}: {err.problem or err.context}{context}",
            hint="fix the YAML at that line (only plain mappings, lists and scalars are allowed)",
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}", hint="fix the YAML syntax") from None


def load_yaml(path: str | Path, *, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Read and strictly parse a YAML file (size-capped before reading)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found", hint="check the path") from None
    if size > max_bytes:
        raise ConfigError(
            f"{p}: {size} bytes is larger than the {max_bytes}-byte limit for YAML files",
            hint="split the file or remove generated content",
        )
    return loads_yaml(p.read_bytes(), source=str(p), max_bytes=max_bytes)
