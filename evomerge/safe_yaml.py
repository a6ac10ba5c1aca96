"""Strict, safe YAML loading for recipes, search spaces and task specs.

Promise 5 and 7 of docs/reliability.md: nothing in a YAML file is executed, and its size is capped.
On top of ``yaml.SafeLoader`` (no python/* tags) this loader refuses anchors and aliases
(so no alias bomb), duplicate keys, non-string keys, files that are not UTF-8, nesting deeper
than :data:`~evomerge.textfile.MAX_DEPTH` levels of mappings and lists (else a RecursionError)
and number literals longer than :data:`~evomerge.textfile.MAX_NUMBER_DIGITS` characters (else
Python's int-string conversion limit, or quadratic time); files are read only if regular (no
FIFO or device) and at most the cap is read (see :mod:`evomerge.textfile`). Every error names
the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import ConfigError
from evomerge.textfile import MAX_DEPTH, MAX_NUMBER_DIGITS, read_regular

MAX_YAML_BYTES = 1 * 2**20


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, with unique string keys, bounded nesting and number literals."""

    _depth = 0  # mappings and sequences open around the node being composed

    def compose_node(self, parent, index):  # type: ignore[override]
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return self._compose_checked(parent, index)
        if self._depth >= MAX_DEPTH:
            raise yaml.MarkedYAMLError(
                problem=f"nested deeper than the {MAX_DEPTH}-level limit for mappings and lists",
                problem_mark=self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            return self._compose_checked(parent, index)
        finally:
            self._depth -= 1

    def _compose_checked(self, parent, index):  # type: ignore[no-untyped-def]
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

    def _check_number(self, node) -> None:  # type: ignore[no-untyped-def]
        if isinstance(node.value, str) and len(node.value) > MAX_NUMBER_DIGITS:
            raise yaml.MarkedYAMLError(
                problem=f"a number of {len(node.value)} characters exceeds the {MAX_NUMBER_DIGITS}-character limit",
                problem_mark=node.start_mark,
            )

    def construct_yaml_int(self, node):  # type: ignore[override]
        self._check_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):  # type: ignore[override]
        self._check_number(node)
        return super().construct_yaml_float(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)


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
    """Read and strictly parse a YAML file: a regular file only, at most ``max_bytes`` read."""
    p = Path(path)
    raw = read_regular(p, cap=max_bytes, what="YAML file", limit_hint="split the file or remove generated content")
    return loads_yaml(raw, source=str(p), max_bytes=max_bytes)
