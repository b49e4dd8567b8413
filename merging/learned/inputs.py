"""Reading a learned merge's unlabeled inputs from a task-set JSONL file (the CLI's --prompts, the page's upload)."""

from __future__ import annotations

from pathlib import Path

from merging.errors import TaskSetError
from merging.jsonl import read_jsonl


def read_inputs(path: str | Path, experts: list[str], per_task: int, *, display: str | None = None
                ) -> dict[str, list[str]]:
    """The first `per_task` prompts (or texts) of each expert in a task-set JSONL file. Messages name the file as
    `display` (default: its path), so an app can show an upload's own name instead of its server-side copy."""
    path = Path(path)
    shown = display or str(path)
    if not path.is_file():
        raise TaskSetError(f"prompts file {shown} does not exist: pass a task-set JSONL file to --prompts")
    inputs: dict[str, list[str]] = {e: [] for e in experts}
    # The same bounds as a task file's (size, lines, line length, nesting): an upload to /learn is no bigger.
    for number, row in read_jsonl(path, shown, "prompts files"):
        text = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise TaskSetError(f"{shown}:{number} has no `prompt` or `text` string: every line needs one")
        owner = row.get("expert")
        if owner in inputs and len(inputs[owner]) < per_task:
            inputs[owner].append(text)
    short = {e: len(v) for e, v in inputs.items() if len(v) < per_task}
    if short:
        raise TaskSetError(
            f"{shown} has fewer than {per_task} examples for {short} (counted by the `expert` field): lower "
            "--examples-per-task or check that the expert names given to --expert match the file"
        )
    return inputs
