"""The Typer application and consoles shared by the command modules, and the output rules every
command keeps:

- ``--json``: stdout carries exactly one JSON document (strict JSON: NaN and inf become null),
  and nothing else; logs go to stderr, also what libraries (vLLM, transformers, Ray) write to
  file descriptor 1 while the command works (:func:`logs_to_stderr`, :func:`print_json`).
- Tables keep every column name whole at any terminal width: long values wrap first, then long
  names give way to short labels explained in a legend below the table (:func:`print_table`).
- Times are ISO 8601 with the UTC offset in JSON, local ``YYYY-MM-DD HH:MM`` in tables
  (:func:`local_time`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from evomerge.strict_json import strict_json

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evolutionary merge-recipe search.")
zoo_app = typer.Typer(no_args_is_help=True, help="The built-in tiny model zoo (offline).")
db_app = typer.Typer(no_args_is_help=True, help="The SQL archive's schema.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(db_app, name="db")
console = Console()
err_console = Console(stderr=True)


# ---------------------------------------------------------------------- --json output
def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or no stream at all
            pass


@contextmanager
def logs_to_stderr(enabled: bool = True) -> Iterator[None]:
    """While the block runs, file descriptor 1 is a copy of 2: whatever is written to stdout
    (print, logging handlers bound to sys.stdout, C code, child processes started meanwhile,
    which keep the redirection) lands on stderr. stdout is restored when the block ends."""
    _flush()
    try:
        saved = os.dup(1) if enabled else -1
    except OSError:  # no stdout at all (closed): nothing to protect
        saved = -1
    if saved < 0:
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        _flush()
        os.dup2(saved, 1)
        os.close(saved)


def seal_stdout() -> None:
    """After a command's JSON document: point file descriptor 1 at stderr for the rest of the
    process, so nothing that runs at exit (engine shutdown logs, atexit hooks) follows it."""
    _flush()
    try:
        os.dup2(2, 1)
    except OSError:
        pass


def print_json(doc: Any, *, indent: int | None = 1) -> None:
    """Write ``doc`` to stdout as one standard JSON document (with a final newline)."""
    sys.stdout.write(json.dumps(strict_json(doc), indent=indent, allow_nan=False) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------- times
def local_time(iso: str | None) -> str:
    """An ISO 8601 time (as in the JSON) in this machine's time zone, to the minute
    (``2026-12-04 23:14``); ``-`` for None."""
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Col:
    """A table column. ``numeric``: right-aligned, never wrapped. ``wrap``: long values may
    wrap onto more lines in a narrow terminal. ``short``: the label used instead of the name when
    even wrapped values do not fit (then a legend below the table gives the name)."""

    name: str
    numeric: bool = False
    wrap: bool = False
    short: str | None = None


GAP = 2  # spaces between columns
WRAP_MIN = 8  # a wrapping column keeps at least this many characters (or its name's width)


def _layout(cols: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> tuple[list[str], list[int]] | None:
    """(headers, column widths) that fit ``width``, or None. Headers are never cut: each
    column is at least as wide as its header; wrapping columns give up width, widest first."""
    values = [max((cell_len(r[j]) for r in rows), default=0) for j in range(len(cols))]
    room = width - GAP * (len(cols) - 1)
    for use_short in (False, True):
        heads = [c.short if use_short and c.short else c.name for c in cols]
        widths = [max(cell_len(h), v) for h, v in zip(heads, values, strict=True)]
        floor = [max(cell_len(h), min(v, WRAP_MIN)) if c.wrap else w
                 for h, v, c, w in zip(heads, values, cols, widths, strict=True)]
        excess = sum(widths) - room
        while excess > 0:  # shave the widest column that still has width to give (only wrapping ones do)
            give = [j for j in range(len(cols)) if widths[j] > floor[j]]
            if not give:
                break
            j = max(give, key=lambda i: widths[i])
            widths[j] -= 1
            excess -= 1
        if excess <= 0:
            return heads, widths
    return None


def print_table(cols: Sequence[Col], rows: Sequence[Sequence[str]], *, title: str | None = None,
                out: Console | None = None) -> None:
    """A table whose column names stay whole at the console's width (COLUMNS for a pipe).

    In order, until it fits: values at their full width; long values of wrapping columns
    wrapped; columns with a short label shown under it, with a legend line "short = name"
    below the table. Only a terminal too narrow even for that is left to rich."""
    out = out or console
    layout = _layout(cols, rows, out.width)
    heads = layout[0] if layout else [c.short or c.name for c in cols]
    # SIMPLE_HEAD without edges: one divider character plus GAP - 1 of padding between columns
    # names, values and title are data (paths, run names), never rich markup: Text, not str
    table = Table(title=Text(title) if title else None, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, GAP - 1, 0, 0), title_justify="left")
    for j, (c, h) in enumerate(zip(cols, heads, strict=True)):
        table.add_column(Text(h), justify="right" if c.numeric else "left", no_wrap=not c.wrap, overflow="fold",
                         width=layout[1][j] if layout else None, min_width=cell_len(h))
    for r in rows:
        table.add_row(*(Text(v) for v in r))
    out.print(table, highlight=False)
    legend = [f"{h} = {c.name}" for c, h in zip(cols, heads, strict=True) if h != c.name]
    if legend:
        out.print("columns: " + ", ".join(legend), highlight=False, markup=False)
