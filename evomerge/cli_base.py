"""The Typer application and consoles shared by the command modules."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evolutionary merge-recipe search.")
zoo_app = typer.Typer(no_args_is_help=True, help="The built-in tiny model zoo (offline).")
db_app = typer.Typer(no_args_is_help=True, help="The SQL archive's schema.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(db_app, name="db")
console = Console()
err_console = Console(stderr=True)
