"""Bounded reading of the JSONL files users hand in (task sets, a learned merge's unlabeled prompts): one set of
limits for every upload path, each checked before the work it would cause. The file's size first (never read whole
when too big), then each line's as it is read; a line nested too deeply is refused, never a RecursionError."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from merging.errors import TaskSetError

MAX_FILE_BYTES = 16_000_000
MAX_LINES = 100_000
MAX_LINE_BYTES = 64_000  # ~16K tokens of English: more than the context of the models a class merges
MAX_JSON_DEPTH = 32  # a task line is one flat object; a few levels for lists of stop strings and the like


def size_text(count: int) -> str:
    """'19.0 MB' or '64 KB'."""
    return f"{count / 1e6:.1f} MB" if count >= 1_000_000 else f"{count / 1e3:.0f} KB"


def check_file_size(path: Path, shown: str, what: str = "task files") -> None:
    """Refuse a file over MAX_FILE_BYTES before any of it is read."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TaskSetError(f"{shown} is {size_text(size)}; {what} may be at most {size_text(MAX_FILE_BYTES)}: keep "
                           "fewer examples (a few hundred per task are plenty), or split the file.")


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply lists and objects nest in `value` (0 for a number or string), counted up to `limit` + 1."""
    depth, level = 0, [value]
    while depth <= limit:
        containers = [v for v in level if isinstance(v, list | dict)]
        if not containers:
            return depth
        depth += 1
        level = [c for v in containers for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def decode_line(raw: bytes, shown: str, number: int) -> Any:
    """The JSON value of one line (None for a blank line); errors name the file and line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TaskSetError(f"{shown} is not UTF-8 text (line {number}): save the file as UTF-8.") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise TaskSetError(f"{shown}:{number}: not valid JSON ({error.msg} at column {error.colno}).") from None
    except RecursionError:
        value = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise TaskSetError(f"{shown}:{number}: JSON nested more than {MAX_JSON_DEPTH} levels deep: one flat object "
                           "a line.")
    return value


def read_jsonl(path: str | Path, shown: str | None = None, what: str = "task files") -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) of each non-blank line, within MAX_FILE_BYTES, MAX_LINES and MAX_LINE_BYTES."""
    file = Path(path)
    shown = shown or file.name
    check_file_size(file, shown, what)
    with file.open("rb") as handle:
        for number in range(1, MAX_LINES + 2):
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if number > MAX_LINES:
                raise TaskSetError(f"{shown}:{number}: the file has more than {MAX_LINES} lines, the most {what} "
                                   "may have: keep fewer examples, or split the file.")
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise TaskSetError(f"{shown}:{number}: the line is longer than {size_text(MAX_LINE_BYTES)}, the most "
                                   "one example may take: shorten its prompt or text (a model reads only its "
                                   "context's worth anyway).")
            value = decode_line(raw, shown, number)
            if value is not None:
                yield number, value
