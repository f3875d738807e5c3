"""Terminal output that shows user content exactly.

Prompts, topic names, file names and persona text may contain `[bold]`, `:x:` or escape-like
text; rich would read those as markup or emoji. So user text goes out through plain `echo`, and
tables go through `show_table`: a rich table (cells taken literally) on a wide terminal, and a
plain aligned layout when the output is piped or narrower than PLAIN_BELOW columns.
"""
from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

PLAIN_BELOW = 80  # terminal columns under which tables are printed plain

out = Console(emoji=False, highlight=False)
err = Console(stderr=True, emoji=False, highlight=False)


def echo(text: str = "", error: bool = False) -> None:
    """User text, byte for byte (no markup, no emoji codes, no highlighting)."""
    click.echo(text, err=error)


def _cell(value) -> str:
    return value.plain if isinstance(value, Text) else str(value)


def plain_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    headers = [_cell(c.header) for c in table.columns]
    cells = [[_cell(v) for v in c._cells] for c in table.columns]
    rows = [list(r) for r in zip(*cells)] if cells else []
    return headers, rows


def plain_table(table: Table) -> str:
    """The table as aligned plain text: title, header, rows; nothing cut, columns two spaces apart."""
    headers, rows = plain_rows(table)
    show_header = table.show_header and any(headers)
    body = ([headers] if show_header else []) + rows
    widths = [max((len(line[i]) for line in body), default=0) for i in range(len(headers))]
    lines = [_cell(table.title)] if table.title else []
    for n, line in enumerate(body):
        lines.append("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
        if n == 0 and show_header:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def show_table(table: Table, console: Console | None = None) -> None:
    console = console or out
    if not console.is_terminal or console.width < PLAIN_BELOW:
        click.echo(plain_table(table), err=console.stderr)
        return
    for column in table.columns:  # literal cells: user text is never read as markup
        column._cells = [Text(v) if isinstance(v, str) else v for v in column._cells]
        if isinstance(column.header, str):
            column.header = Text(column.header)
    if isinstance(table.title, str):
        table.title = Text(table.title)
    console.print(table)
