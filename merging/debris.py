"""What killed merges leave behind, cleaned when the app (re)starts. The engine builds a folder as a hidden sibling
`.NAME.incomplete-<pid>` and renames it into place; replacing a folder first moves the old one aside as
`.NAME.old-<pid>`. A process killed (SIGKILL, power loss) mid-way leaves these hidden folders, never a visible
half-written model; at the next start, those of dead processes are removed, and an old folder whose replacement
never arrived is put back under its name (the previous finished model, not a gap)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_DEBRIS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>incomplete|old)-(?P<pid>\d+)$")
MAX_DEPTH = 3  # models/merged/<session>/<name>: debris sits at most this deep under the models folder


def process_alive(pid: int) -> bool:
    """True when a process with this id exists (ours included)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_debris(root: Path, max_depth: int = MAX_DEPTH) -> list[str]:
    """Remove killed merges' hidden folders under `root` (running processes' are kept) and restore an old folder
    whose replacement never arrived. Returns one line per action, for the log."""
    actions: list[str] = []
    if not root.is_dir():
        return actions
    for folder in _candidates(root, max_depth):
        match = _DEBRIS.match(folder.name)
        if match is None or process_alive(int(match["pid"])):
            continue
        target = folder.parent / match["name"]
        if match["kind"] == "old" and not target.exists() and (folder / "config.json").is_file():
            folder.rename(target)
            actions.append(f"restored {target} (its replacement was never finished)")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            actions.append(f"removed {folder}")
    return actions


def _candidates(root: Path, max_depth: int) -> list[Path]:
    """Hidden folders under `root`, at most `max_depth` levels down (symlinks not followed)."""
    found, level = [], [root]
    for _ in range(max_depth):
        children = []
        for parent in level:
            try:
                entries = [p for p in parent.iterdir() if p.is_dir() and not p.is_symlink()]
            except OSError:
                continue
            found += [p for p in entries if p.name.startswith(".")]
            children += [p for p in entries if not p.name.startswith(".")]
        level = children
    return found
