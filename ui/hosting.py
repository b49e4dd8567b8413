"""Where the app runs and what that allows: local (any folder on this machine) or hosted (a Space or a shared
server: local paths confined to ./models, upload size limited, no server paths in messages)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from merging.errors import SourceError

APP_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS_DIR = APP_ROOT / "models"
HOSTED_MAX_UPLOAD = "20mb"
HOSTED_CACHE_SWEEP_S = 3600  # hosted: how often gradio's cache (uploads, files it serves) is swept
HOSTED_CACHE_AGE_S = 4 * 3600  # hosted: what the sweep removes, by age (a page session rarely lasts longer)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"`:,()]+/)+([^\s'\"`:,()]*)")


def running_on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def hosted_from_env() -> bool:
    """MERGELAB_HOSTED=1 or a Hugging Face Space (SPACE_ID set) switch hosted mode on."""
    flag = os.environ.get("MERGELAB_HOSTED", "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or running_on_space()


@dataclass(frozen=True)
class HostConfig:
    """How this server treats paths and uploads. One instance per launched page."""

    hosted: bool = False
    models_dir: Path = DEFAULT_MODELS_DIR
    max_upload: str | None = None
    gpu: bool = False

    @classmethod
    def detect(cls, hosted: bool | None = None, models_dir: Path | None = None) -> HostConfig:
        hosted = hosted_from_env() if hosted is None else hosted
        return cls(
            hosted=hosted,
            models_dir=Path(models_dir or DEFAULT_MODELS_DIR).resolve(),
            max_upload=HOSTED_MAX_UPLOAD if hosted else None,
            gpu=torch.cuda.is_available(),
        )

    @property
    def downloads_dir(self) -> Path:
        """Where the page's sessions write the files they offer for download (recipe, results, sweep, search): inside
        the app's models folder, so a hosted app writes nothing outside its own folders; one folder per session,
        bounded in number (ui.session.session_downloads)."""
        return self.models_dir / "downloads"

    @property
    def uploads_dir(self) -> Path:
        """Hosted, where gradio keeps the files users upload (and those it caches to serve): inside the models
        folder, not the system's temp folder (HostConfig.environment)."""
        return self.models_dir / "uploads"

    @property
    def hub_cache_dir(self) -> Path | None:
        """Where models named by a Hub id are downloaded: hosted, inside the models folder; otherwise
        huggingface_hub's own cache (None), which a local user shares with their other tools."""
        return self.models_dir / "hub-cache" if self.hosted else None

    @property
    def cache_sweep(self) -> tuple[int, int] | None:
        """gr.Blocks(delete_cache=): hosted, every HOSTED_CACHE_SWEEP_S gradio removes the files it keeps for this
        page (uploads in uploads_dir, files it serves) older than HOSTED_CACHE_AGE_S, and all of them when the
        server stops, so visitors' uploads do not fill a Space's disk. Local: None (kept, the user's machine)."""
        return (HOSTED_CACHE_SWEEP_S, HOSTED_CACHE_AGE_S) if self.hosted else None

    def environment(self) -> dict[str, str]:
        """What the server sets in its environment before the page is built: hosted, gradio's upload folder (read
        from GRADIO_TEMP_DIR when the components and the server are created) inside the models folder."""
        return {"GRADIO_TEMP_DIR": str(self.uploads_dir)} if self.hosted else {}

    def resolve_local(self, ref: str) -> Path:
        """A local model folder the user typed. Hosted: relative to ./models and never outside it."""
        text = ref.strip()
        if not self.hosted:
            return Path(text).expanduser().resolve()
        candidate = (self.models_dir / text.lstrip("/")).resolve()
        if not candidate.is_relative_to(self.models_dir):
            raise SourceError(
                f"{text!r} is outside the app's models folder. On this hosted app, give a folder name inside "
                "models/ (for example merged/<name>), a zoo model, or a Hub id."
            )
        return candidate

    def public_message(self, message: str) -> str:
        """The text a user sees. Hosted: server paths are cut down to their last part."""
        if not self.hosted:
            return message
        for root, shown in self._known_roots():
            message = message.replace(str(root), shown)
        return _ABSOLUTE_PATH.sub(lambda m: f"…/{m.group(1)}", message)

    def _known_roots(self) -> list[tuple[Path, str]]:
        roots = [(self.models_dir, "models"), (APP_ROOT, "."), (Path(sys.prefix), "<python>"),
                 (Path(tempfile.gettempdir()), "<tmp>"), (Path.home(), "~")]
        # Longest first so a nested root wins over its parent.
        return sorted(roots, key=lambda r: len(str(r[0])), reverse=True)
