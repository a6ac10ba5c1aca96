"""Reading user files with bounded resources (docs/reliability.md promise 7).

Rules, shared by every reader of recipes, search spaces, task specs and data, and model configs:

- Only regular files are read. A FIFO, device (``/dev/zero``), socket or directory is refused
  with a :class:`ConfigError` naming the path, before a byte is read; the file is opened
  non-blocking and checked with ``fstat`` on the open descriptor, so opening a FIFO never
  waits for a writer and the check cannot be raced.
- ``st_size`` is only a shortcut: a regular file over the cap is refused at once, and the read
  itself takes at most ``cap + 1`` bytes, so a file that is larger than it claims is refused
  too and never fills memory.
- JSON is parsed with bounded nesting (:data:`MAX_DEPTH` levels of arrays and objects) and
  bounded number literals (:data:`MAX_NUMBER_DIGITS` characters): deep nesting would otherwise
  be a ``RecursionError`` and a huge integer a ``ValueError`` (or quadratic time) from Python's
  int-string conversion. Every violation is a one-line error naming the source and the limit.

This module imports nothing of evomerge but :mod:`evomerge.errors`, so every layer may use it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from evomerge.errors import ConfigError, EvomergeError

MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 1000
REGULAR_HINT = "give a regular file (not a FIFO, device, socket or directory)"

_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _nonblocking(path: str, flags: int) -> int:
    """``open`` opener: a FIFO opens at once instead of waiting for a writer."""
    return os.open(path, flags | _O_NONBLOCK)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def not_regular(path: Path | str, what: str, mode: int) -> ConfigError:
    """The error for a path that is not a regular file."""
    kind = _kind(mode)
    desc = kind if kind == "not a regular file" else f"{kind}, not a regular file"
    return ConfigError(f"{path}: {what} is {desc}", hint=REGULAR_HINT)


def open_regular(
    path: Path | str, *, what: str = "file", missing_hint: str = "check the path",
    open_fn: Callable[..., Any] = open,
) -> tuple[BinaryIO, int]:
    """Open ``path`` for binary reading if it is a regular file; return the file and its size.

    Never blocks (FIFOs are opened non-blocking and refused). ``open_fn`` is the ``open`` to call
    (callers pass their module's, so tests can watch it). Raises :class:`ConfigError` for a
    missing, unreadable or non-regular path.
    """
    try:
        fh = open_fn(path, "rb", opener=_nonblocking)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found", hint=missing_hint) from None
    except IsADirectoryError:
        raise not_regular(path, what, stat.S_IFDIR) from None
    except OSError as err:  # permission denied, a socket (ENXIO), a loop of links ...
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror or err})",
                          hint="check the path and its permissions") from None
    try:
        fd = fh.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(path, what, st.st_mode)
        if _O_NONBLOCK:  # back to ordinary reads: only the open had to be non-blocking
            os.set_blocking(fd, True)
    except BaseException:
        fh.close()
        raise
    return fh, st.st_size


def read_regular(
    path: Path | str, *, cap: int, what: str = "file", missing_hint: str = "check the path",
    too_large: type[EvomergeError] = ConfigError, limit_hint: str = "use a smaller file",
    open_fn: Callable[..., Any] = open,
) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes (reads at most ``cap + 1``).

    A larger file raises ``too_large`` naming the path and the limit; see :func:`open_regular`
    for the other errors.
    """
    fh, size = open_regular(path, what=what, missing_hint=missing_hint, open_fn=open_fn)
    with fh:
        if size > cap:  # a regular file's size is a safe early refusal; the read below is the cap
            raise too_large(f"{path}: {what} is larger than the {cap}-byte limit", hint=limit_hint)
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise too_large(f"{path}: {what} is larger than the {cap}-byte limit", hint=limit_hint)
    return data


class _NumberTooLong(ValueError):
    def __init__(self, digits: int) -> None:
        super().__init__(f"a number of {digits} characters exceeds the {MAX_NUMBER_DIGITS}-character limit")


def _digits(literal: str) -> int:
    return len(literal) - literal.startswith(("-", "+"))


def _parse_int(literal: str) -> int:
    if _digits(literal) > MAX_NUMBER_DIGITS:
        raise _NumberTooLong(_digits(literal))
    return int(literal)


def _parse_float(literal: str) -> float:
    if _digits(literal) > MAX_NUMBER_DIGITS:
        raise _NumberTooLong(_digits(literal))
    return float(literal)


def too_deep(value: Any, max_depth: int = MAX_DEPTH) -> bool:
    """Whether lists/dicts nest more than ``max_depth`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def loads_json(
    raw: str | bytes, *, source: str, what: str | None = None, error: type[EvomergeError] = ConfigError,
    hint: str = "fix the JSON", object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse JSON text with bounded nesting and number literals.

    Invalid UTF-8 or JSON, nesting deeper than ``max_depth`` and a number literal longer than
    :data:`MAX_NUMBER_DIGITS` raise ``error`` (``"{source}: invalid JSON in {what} (...)"`` or
    naming the limit). Errors raised by ``object_pairs_hook`` pass through unchanged.
    """
    in_what = f" in {what}" if what else ""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, object_pairs_hook=object_pairs_hook, parse_int=_parse_int, parse_float=_parse_float)
    except _NumberTooLong as err:
        raise error(f"{source}: {err}{in_what}", hint=hint) from None
    except RecursionError:
        raise error(f"{source}: JSON{in_what} nests deeper than the {max_depth}-level limit", hint=hint) from None
    except UnicodeDecodeError as err:
        raise error(f"{source}: invalid JSON{in_what} (not UTF-8 at byte {err.start})", hint=hint) from None
    except json.JSONDecodeError as err:
        raise error(f"{source}: invalid JSON{in_what} ({err})", hint=hint) from None
    except ValueError as err:  # e.g. int-string conversion limits of other number forms
        raise error(f"{source}: invalid JSON{in_what} ({err})", hint=hint) from None
    if too_deep(value, max_depth):
        raise error(f"{source}: JSON{in_what} nests deeper than the {max_depth}-level limit", hint=hint)
    return value
