"""What the CLI shows: records as a table or JSON lines, one-line messages, live progress.

A person at a terminal gets colour, cut keys and progress bars (rich, loaded only then); a
pipe gets plain text with whole keys and nothing that moves, for the next program. Records
arrive here as the JSON the registry stores, so the light commands load no pydantic.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from farm import progress

if TYPE_CHECKING:
    from rich.console import Console

Row = dict[str, Any]  # a record as stored (plus its build's "progress"), or an unknown key
_COLORS = {"valid": "green", "failed": "red", "invalid": "red"}
_PAGE = 1000  # rows per table at a terminal: columns sized per page, memory bounded
KEY_SHOWN = 16  # characters of a key a terminal shows; any unique prefix works as a key
LEASE_LEFT = "lease_left_s"  # a building row's lease, read for a person (never in --json)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


@cache
def _out() -> Console:
    from rich.console import Console

    return Console()


@cache
def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


_said = False  # whether this command has said anything on stderr yet


def said_anything() -> bool:
    return _said


def error(sentence: str) -> None:
    """One sentence on stderr, on one line however long (never folded)."""
    global _said
    _said = True
    if stderr_is_terminal():
        _err().print(f"[red]error:[/] {_escape(sentence)}")
    else:
        sys.stderr.write(f"error: {sentence}\n")


def say(sentence: str, *, warning: bool = False) -> None:
    global _said
    _said = True
    if stderr_is_terminal():
        text = _escape(sentence)
        _err().print(f"[yellow]{text}[/]" if warning else text)
    else:
        sys.stderr.write(f"{sentence}\n")


def line(text: str) -> None:
    """A line of data on stdout (a path, a key), whole."""
    sys.stdout.write(f"{text}\n")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def unknown_row(key: str) -> Row:
    return {"key": key, "kind": None, "status": "unknown", "dest": None}


def json_row(row: Row) -> str:
    shown = {k: v for k, v in row.items() if not (k == "error" and v is None)}
    return json.dumps(shown)


def detail(row: Row) -> str:
    if row.get("outcome"):  # what a command did to the record ("would forget")
        return str(row["outcome"])
    if row["status"] == "unknown":
        return "no such key"
    if row.get("error"):
        return str(row["error"])
    if row["status"] == "building":
        return building(row)
    size = row.get("size_bytes")
    return f"{size:,} B" if size is not None else ""


def building(row: Row, now: float | None = None) -> str:
    """How far a build is, who builds it, how old its last report is, and whether that
    builder is gone (no lease): a person must not watch a dead build's last figures."""
    figures = row.get("progress") or {}
    now = time.time() if now is None else now
    parts = [told] if (told := progress.describe(figures)) else []
    if worker := row.get("worker") or figures.get("worker"):
        parts.append(f"by {worker}")
    reported = figures.get("updated_at") or figures.get("started_at")
    if reported:
        parts.append(f"last report {_age(now - reported)} ago")
    lease = row.get(LEASE_LEFT)
    if lease is not None and lease <= 0:
        gone = "stale: its builder is gone (no lease)" if reported else "no builder holds it"
        parts.append(f"{gone}; a live worker requeues it (`farm worker` if none runs)")
    elif not reported and lease is not None:
        parts.append("no report lately (its lease is held: it is alive)")
    return ", ".join(parts)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def print_rows(rows: Iterable[Row], *, as_json: bool) -> None:
    """JSON lines, a table at a terminal, or tab-separated whole fields down a pipe; rows are
    written as they come, so a listing of any size streams in constant memory."""
    if as_json:
        sys.stdout.writelines(json_row(r) + "\n" for r in rows)
        return
    if not stdout_is_terminal():
        for r in rows:
            fields = (r["key"], r["kind"] or "-", r["status"], r["dest"] or "-", detail(r))
            sys.stdout.write("\t".join(fields) + "\n")
        return
    from rich.table import Table

    pages = iter(rows)
    first = True
    while page := list(itertools.islice(pages, _PAGE)):
        table = Table("key", "kind", "status", box=None, pad_edge=False, show_header=first)
        table.add_column("dest", overflow="fold")
        table.add_column("detail", overflow="fold")
        for r in page:
            color = _COLORS.get(r["status"], "yellow")
            table.add_row(
                _escape(r["key"][:KEY_SHOWN]),
                r["kind"] or "-",
                f"[{color}]{r['status']}[/]",
                _escape(r["dest"] or "-"),
                _escape(detail(r)),
            )
        _out().print(table, soft_wrap=True)
        first = False


@contextmanager
def counter(label: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A live count of items done (of ``total`` when known) on a terminal's stderr; nothing
    when stderr is not a terminal. Yields ``update(done)``."""
    if not stderr_is_terminal():
        yield lambda _done: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_err(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)


BuildShow = Callable[[str, dict | None, str | None], None]
OnPoll = Callable[[int, int], None]


@contextmanager
def build_status(dest: str) -> Iterator[BuildShow | None]:
    """One live line for a build at a terminal: its status and its builder's progress, or
    what it waits for. Yields ``update(status, figures, note)``; None when stderr is not a
    terminal."""
    if not stderr_is_terminal():
        yield None
        return
    with _err().status(f"{dest}: queued") as shown:

        def update(status: str, figures: dict | None, note: str | None = None) -> None:
            told = progress.describe(figures) if status == "building" else ""
            told = ", ".join(t for t in (told, note) if t)
            shown.update(f"{_escape(dest)}: {status}" + (f", {_escape(told)}" if told else ""))

        yield update
