"""Catalog presets (assets/catalog.yaml) and a quick, cached check of whether the Hugging Face Hub is reachable, so a
preset that needs the Hub says so at once instead of failing minutes later."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from merging.errors import SourceError
from merging.sources import hub_reachable as probe_hub

APP_ROOT = Path(__file__).resolve().parents[1]
CATALOG_PATH = APP_ROOT / "assets" / "catalog.yaml"
HUB_CHECK_TIMEOUT_S = 1.5
HUB_CHECK_TTL_S = 300.0
# The probe's connect timeout does not cover name resolution, which can hang far longer where no resolver answers:
# the answer is "unreachable" once this much more has passed, and the probe finishes on its own.
HUB_CHECK_GRACE_S = 0.5


@dataclass(frozen=True)
class Preset:
    name: str
    source: str  # "zoo" or "hub"
    models: tuple[str, ...]
    family: str | None = None  # zoo family
    kind: str = "lm"
    base: str | None = None  # Hub id (hub presets); zoo presets use the family's base
    method: str = "task_arithmetic"
    parameters: dict[str, Any] = field(default_factory=dict)
    about: str = ""
    prompts: tuple[str, ...] = ()  # chat prompts the preset's starting merge answers well (the page suggests them)
    tasks: str | None = None  # its task set (JSONL), relative to the app's folder; zoo presets use the family's

    @property
    def needs_hub(self) -> bool:
        return self.source == "hub"

    @property
    def tasks_path(self) -> Path | None:
        """The preset's own task set, or None (zoo presets: the family's)."""
        return APP_ROOT / self.tasks if self.tasks else None


def load_catalog(path: Path = CATALOG_PATH) -> list[Preset]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    presets = []
    for entry in data.get("presets", []):
        presets.append(Preset(
            name=entry["name"], source=entry["source"], models=tuple(entry.get("models", ())),
            family=entry.get("family"), kind=entry.get("kind", "lm"), base=entry.get("base"),
            method=entry.get("method", "task_arithmetic"), parameters=dict(entry.get("parameters") or {}),
            about=entry.get("about", ""), prompts=tuple(str(p) for p in entry.get("prompts") or ()),
            tasks=_tasks_entry(entry),
        ))
    return presets


def _tasks_entry(entry: dict) -> str | None:
    """A preset's `tasks`: a JSONL file inside the app's folder (a catalog never points elsewhere)."""
    tasks = entry.get("tasks")
    if tasks is None:
        return None
    path = (APP_ROOT / str(tasks)).resolve()
    if not path.is_relative_to(APP_ROOT) or path.suffix != ".jsonl":
        raise SourceError(f"Preset {entry.get('name')!r}: tasks must be a .jsonl file inside the app's folder, "
                          f"not {tasks!r}.")
    return str(tasks)


def get_preset(name: str, presets: list[Preset] | None = None) -> Preset:
    presets = load_catalog() if presets is None else presets
    for preset in presets:
        if preset.name == name:
            return preset
    raise SourceError(f"Unknown preset {name!r}: choose one of {', '.join(p.name for p in presets)}.")


class _HubCheck:
    """Remembers the answer for a few minutes: the check runs on the request path and must stay cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answer: tuple[float, bool] | None = None

    def reachable(self, *, timeout_s: float = HUB_CHECK_TIMEOUT_S, ttl_s: float = HUB_CHECK_TTL_S) -> bool:
        with self._lock:
            if self._answer and time.monotonic() - self._answer[0] < ttl_s:
                return self._answer[1]
        answer = _probe_within(timeout_s)
        with self._lock:
            self._answer = (time.monotonic(), answer)
        return answer

    def forget(self) -> None:
        with self._lock:
            self._answer = None


def _probe_within(timeout_s: float) -> bool:
    """probe_hub(timeout_s), answered False when it has not finished within timeout_s + HUB_CHECK_GRACE_S (a name
    lookup that hangs): the page says at once that the Hub is out of reach instead of waiting on the resolver."""
    answer: list[bool] = []
    probe = threading.Thread(target=lambda: answer.append(probe_hub(timeout_s)), name="hub-check", daemon=True)
    probe.start()
    probe.join(timeout_s + HUB_CHECK_GRACE_S)
    return bool(answer and answer[0])


HUB = _HubCheck()


def hub_reachable() -> bool:
    return HUB.reachable()


def require_hub(what: str) -> None:
    """Fail at once, with what to do instead, when `what` needs the Hub and it is out of reach."""
    if not hub_reachable():
        raise SourceError(
            f"{what} needs the Hugging Face Hub, which this server cannot reach right now. Use a zoo preset, or "
            "download the models where there is network and give their local folders."
        )
