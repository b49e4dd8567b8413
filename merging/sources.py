"""Model sources: a local Hugging Face folder or a Hub id, read lazily one tensor at a time.

Names, shapes, dtypes and byte offsets come from the safetensors headers (a few KB per shard); `get(name)` reads one
tensor with a positioned read (os.pread) straight into a fresh tensor. The OS page cache does the caching, as it
would for a memory map, but nothing stays mapped into this process: its resident memory is only the tensors in
flight, however large the model (a memory map would count every page touched so far). Pickle checkpoints (`*.bin`)
are refused unless the caller opts in, and then load with `torch.load(weights_only=True, mmap=True)`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
import struct
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from merging.dtypes import SAFETENSORS_DTYPES
from merging.errors import SourceError

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Files a merge needs from a Hub repository besides the weights: config, tokenizer, chat template, generation config.
HUB_SIDE_FILES = ["*.json", "*.model", "*.jinja", "*.txt", "*.tiktoken"]
HUB_CONNECT_TIMEOUT_S = 3.0

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# A strict Hub repository id, for callers that must never touch local paths (a hosted app): `owner/name` (or a
# legacy canonical `name` such as gpt2), each part letters, digits, "-", "_" or "." between letters or digits, no
# "--" or "..", as the Hub itself requires.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_STRICT_HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")
HUB_OWNER_MAX_CHARS = 96  # the Hub's limits on user/organisation and repository names
HUB_NAME_MAX_CHARS = 96
# A revision after "@" (`owner/name@revision`, as mergekit writes it): a branch, a tag, a commit id or a PR ref
# (refs/pr/1). huggingface_hub writes a branch or tag into its cache's paths (refs/<revision>), so only plain names
# pass: "/"-separated parts of letters, digits, "-", "_" and "." starting and ending with a letter or digit, no "..".
_REVISION = re.compile(rf"^{_HUB_PART}(?:/{_HUB_PART})*$")
REVISION_MAX_CHARS = 255


class ModelSource:
    """One model's tensors, read lazily. Use as a context manager (or call `close()`) to release file handles."""

    def __init__(self, path: Path, ref: str, *, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        self.ref = ref
        self.config: dict[str, Any] = _read_config(self.path, ref)
        self._files: dict[str, Path] = {}  # tensor name -> file holding it
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._offsets: dict[str, int] = {}  # tensor name -> absolute byte offset of its data in its file
        self._handles: dict[Path, Any] = {}  # file -> open fd (safetensors) or loaded state dict (pickle)
        self._lock = threading.Lock()
        self.is_pickle = False
        safetensors_files = _safetensors_files(self.path)
        if safetensors_files:
            for file in safetensors_files:
                for name, (shape, dtype, offset) in _read_header_entries(file).items():
                    self._files[name] = file
                    self._meta[name] = (shape, dtype)
                    self._offsets[name] = offset
        else:
            self._open_pickle(allow_pickle)

    # --- the ModelSource contract -------------------------------------------------------------------------------
    def tensor_names(self) -> list[str]:
        return list(self._meta)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[self._known(name)][0]

    def dtype(self, name: str) -> torch.dtype:
        return self._meta[self._known(name)][1]

    def nbytes(self, name: str) -> int:
        shape, dtype = self._meta[self._known(name)]
        return math.prod(shape) * dtype.itemsize

    def total_bytes(self) -> int:
        return sum(self.nbytes(n) for n in self._meta)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from its shard into new memory (thread-safe)."""
        file = self._files[self._known(name)]
        with self._lock:
            handle = self._handles.get(file)
            if handle is None:
                handle = self._open_file(file)
                self._handles[file] = handle
        if self.is_pickle:
            return handle[name]
        shape, dtype = self._meta[name]
        tensor = torch.empty(shape, dtype=dtype)
        buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        done, offset = 0, self._offsets[name]
        while done < len(buffer):  # pread may return fewer bytes than asked
            got = os.preadv(handle, [buffer[done:]], offset + done)
            if got <= 0:
                raise SourceError(f"{file} ended early while reading {name!r} of {self.ref!r}; the file is truncated.")
            done += got
        return tensor

    @property
    def num_layers(self) -> int:
        for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
            value = self.config.get(key) or _text_config(self.config).get(key)
            if isinstance(value, int) and value > 0:
                return value
        indices = [int(m.group(1)) for n in self._meta if (m := _LAYER_INDEX.search(n))]
        return max(indices) + 1 if indices else 0

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            return archs[0]
        return str(self.config.get("model_type", "unknown"))

    @property
    def vocab_size(self) -> int | None:
        value = self.config.get("vocab_size") or _text_config(self.config).get("vocab_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def close(self) -> None:
        with self._lock:
            if not self.is_pickle:
                for fd in self._handles.values():
                    os.close(fd)
            self._handles.clear()

    def __enter__(self) -> ModelSource:  # noqa: PYI034 (subclasses are used through the base type)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelSource({self.ref!r}, {len(self._meta)} tensors)"

    # --- internals --------------------------------------------------------------------------------------------
    def _known(self, name: str) -> str:
        if name not in self._meta:
            raise SourceError(f"Model {self.ref!r} has no tensor named {name!r}.")
        return name

    def _open_file(self, file: Path) -> Any:
        if self.is_pickle:
            try:
                return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise SourceError(f"Could not read {file} of {self.ref!r} as weights-only pickle: {exc}") from exc
        return os.open(file, os.O_RDONLY)

    def _open_pickle(self, allow_pickle: bool) -> None:
        files = _pickle_files(self.path)
        if not files:
            raise SourceError(
                f"Model {self.ref!r} at {self.path} has no weights: expected *.safetensors files "
                f"(optionally with {SAFETENSORS_INDEX}) next to config.json."
            )
        if not allow_pickle:
            raise SourceError(
                f"Model {self.ref!r} has only pickle weights ({', '.join(f.name for f in files)}). Pickle files can "
                "run code when loaded: convert them to safetensors, or opt in with allow_pickle=True "
                "(they are then loaded with torch.load(weights_only=True))."
            )
        self.is_pickle = True
        for file in files:
            state = self._open_file(file)
            self._handles[file] = state
            for name, tensor in state.items():
                if isinstance(tensor, torch.Tensor):
                    self._files[name] = file
                    self._meta[name] = (tuple(tensor.shape), tensor.dtype)


def open_model(ref: str | os.PathLike, *, allow_pickle: bool = False, cache_dir: str | None = None,
               hub_only: bool = False) -> ModelSource:
    """A local folder in Hugging Face format, or a Hub id (downloaded once, safetensors only unless allow_pickle).
    `hub_only=True` never looks at local paths: `ref` must be a strict Hub id (`owner/name`, see
    `validate_hub_id`), so a caller that must not reach the server's files (a hosted app) can hand it user text."""
    ref_str = str(ref)
    if hub_only:
        repo_id = validate_hub_id(ref_str)
        return ModelSource(download_from_hub(repo_id, allow_pickle=allow_pickle, cache_dir=cache_dir), repo_id,
                           allow_pickle=allow_pickle)
    local = Path(ref_str).expanduser()
    if _path_exists(local, ref_str):
        if not local.is_dir():
            raise SourceError(f"{ref_str!r} is a file; give the model's folder (the one holding config.json).")
        return ModelSource(local, ref_str, allow_pickle=allow_pickle)
    if not looks_like_hub_id(ref_str):
        raise SourceError(f"Model folder {ref_str!r} does not exist. Check the path (relative paths start at the "
                          f"current directory, {os.getcwd()}).")
    folder = download_from_hub(ref_str, allow_pickle=allow_pickle, cache_dir=cache_dir)
    return ModelSource(folder, ref_str, allow_pickle=allow_pickle)


def looks_like_hub_id(ref: str) -> bool:
    """`owner/name` or `owner/name@revision` in form (the revision is checked by split_revision)."""
    repo_id = ref.partition("@")[0]
    return bool(_HUB_ID.match(repo_id)) and not repo_id.startswith((".", "~"))


def split_revision(ref: str) -> tuple[str, str | None]:
    """(repository id, revision) of `owner/name@revision`; (ref, None) without "@". A revision that could be a
    path trick (`..`, a leading "/", a backslash, spaces) raises SourceError saying what a revision looks like."""
    repo_id, at, revision = ref.partition("@")
    if not at:
        return ref, None
    if not (_REVISION.fullmatch(revision) and ".." not in revision and len(revision) <= REVISION_MAX_CHARS):
        shown = revision if len(revision) <= 60 else revision[:59] + "…"
        raise SourceError(f"Revision {shown!r} of {repo_id[:80]!r} is not a branch, tag or commit id: write "
                          "owner/name@revision with a name such as main, v1.0, refs/pr/1 or a 40-character commit "
                          "id.")
    return repo_id, revision


def validate_hub_id(ref: str) -> str:
    """`ref` as a Hub repository id `owner/name` (or a legacy `name`), optionally `@revision` (see split_revision),
    or SourceError saying what a Hub id looks like. Paths never pass: no leading "/" or "~", no "..", no
    backslashes, at most one "/" before the revision, the Hub's length limits; and a caller with hub_only never looks
    the id up on the local disk anyway."""
    repo_id, revision = split_revision(ref.strip())
    owner, _, name = repo_id.partition("/")
    valid = (bool(_STRICT_HUB_ID.fullmatch(repo_id)) and ".." not in repo_id and "--" not in repo_id
             and len(owner) <= HUB_OWNER_MAX_CHARS and len(name) <= HUB_NAME_MAX_CHARS
             and not name.endswith(".git"))
    if not valid:
        shown = repo_id if len(repo_id) <= 80 else repo_id[:79] + "…"
        raise SourceError(f"{shown!r} is not a Hugging Face Hub id: give it as owner/name (letters, digits, '-', "
                          f"'_' and '.', e.g. openai-community/gpt2), not a path.")
    return repo_id if revision is None else f"{repo_id}@{revision}"


MAX_REF_CHARS = 1024  # a folder path or Hub id as typed; the file system's own limit is 4096 bytes
MAX_NAME_BYTES = 255  # one folder name (most file systems)


def check_ref_text(ref: str, field: str = "Model") -> str:
    """`ref` (a folder or Hub id as a user typed it) stripped, or SourceError naming `field` when no file system
    could take it: a NUL or other control character, a name over MAX_NAME_BYTES, a path over MAX_REF_CHARS. The
    message shows at most the first 40 characters, never the whole input."""
    text = ref.strip() if isinstance(ref, str) else ref
    if not isinstance(text, str):
        raise SourceError(f"{field} must be text (a folder or a Hub id), not {type(ref).__name__}.")
    shown = text if len(text) <= 40 else text[:40] + "…"
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        what = "a NUL byte" if bad == "\0" else f"a control character ({ord(bad):#04x})"
        raise SourceError(f"{field} {shown!r} holds {what}: type the folder or Hub id again.")
    if len(text) > MAX_REF_CHARS:
        raise SourceError(f"{field} {shown!r} is {len(text)} characters long; a folder path or Hub id may have at "
                          f"most {MAX_REF_CHARS}.")
    longest = max((len(part.encode("utf-8")) for part in re.split(r"[\\/]", text)), default=0)
    if longest > MAX_NAME_BYTES:
        raise SourceError(f"{field} {shown!r} has a name of {longest} bytes; folder names may have at most "
                          f"{MAX_NAME_BYTES}.")
    return text


def _path_exists(path: Path, ref: str) -> bool:
    """Path.exists(), with names the file system refuses (too long, NUL bytes) reported as what to fix."""
    try:
        return path.exists()
    except ValueError:  # an embedded NUL byte
        raise SourceError(f"Model {ref[:80]!r} is not a usable path or Hub id (it holds a NUL byte).") from None
    except OSError as exc:
        shown = ref if len(ref) <= 80 else ref[:79] + "…"
        reason = ("a file or folder name in it is too long for the file system (most allow 255 bytes per name)"
                  if exc.errno == errno.ENAMETOOLONG else exc.strerror or str(exc))
        raise SourceError(f"Model {shown!r} cannot be used as a path: {reason}. Give the model's folder or a Hub "
                          "id.") from None


def download_from_hub(ref: str, *, allow_pickle: bool = False, cache_dir: str | None = None) -> Path:
    """Snapshot the files a merge needs of `owner/name` or `owner/name@revision` (a branch, tag or commit: some
    repositories have safetensors only at a revision other than main). Offline (no route to the Hub, or
    HF_HUB_OFFLINE=1) only the local cache is used, and a model missing from it fails at once with a SourceError
    naming the id."""
    from huggingface_hub import snapshot_download  # deferred: huggingface_hub (~0.6 s), only Hub ids need it

    repo_id, revision = split_revision(ref)

    patterns = ["*.safetensors", "*.safetensors.index.json", *HUB_SIDE_FILES]
    if allow_pickle:
        patterns += ["*.bin", "*.bin.index.json"]
    offline = not hub_reachable()
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir,
                                   local_files_only=offline)
    except Exception as exc:
        if offline:
            raise SourceError(
                f"Cannot fetch {ref!r}: this machine cannot reach the Hugging Face Hub and the model is not in "
                "the local cache, nor is it a local folder. Give a local folder path, or download the model where "
                "there is network and copy it here."
            ) from exc
        raise SourceError(f"Could not download {ref!r} from the Hugging Face Hub: {exc}. Check the id, and "
                          "for a gated or private model log in (hf auth login).") from exc
    folder = Path(folder)
    if not allow_pickle and not any(folder.glob("*.safetensors")) and _hub_has_pickle_weights(repo_id, revision):
        raise SourceError(f"{ref!r} on the Hub has only pickle weights (*.bin). Pickle files can run code when "
                          "loaded: choose a repository with safetensors (another revision may have them: "
                          "owner/name@revision), or opt in with allow_pickle (--allow-pickle); they are then loaded "
                          "with torch.load(weights_only=True).")
    return folder


def _hub_has_pickle_weights(repo_id: str, revision: str | None = None) -> bool:
    from huggingface_hub import HfApi  # deferred: huggingface_hub (~0.6 s), only Hub ids need it

    try:
        return any(f.endswith(".bin") for f in HfApi().list_repo_files(repo_id, revision=revision))
    except Exception:  # noqa: BLE001 - only used to word the error better
        return False


def read_safetensors_header(file: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Tensor name -> (shape, dtype) from a safetensors header, without touching the data."""
    return {name: (shape, dtype) for name, (shape, dtype, _) in _read_header_entries(file).items()}


# Largest safetensors header read (the format's own limit is 100 MB); a bigger length field means a corrupt file.
MAX_HEADER_BYTES = 100_000_000


def _read_header_entries(file: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype, int]]:
    """Tensor name -> (shape, dtype, absolute data offset), checking that each entry's byte span fits its shape and
    lies inside the file (a truncated download fails here, in the pre-flight check, not half-way through a merge)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"its header length field says {length} bytes but the file has {size}")
            header = json.loads(fh.read(length))
    except (OSError, struct.error, ValueError, RecursionError) as exc:
        raise SourceError(f"{file} is not a readable safetensors file ({_short(exc)}); the download may be "
                          "incomplete: download or save the model again.") from exc
    if not isinstance(header, dict):
        raise SourceError(f"{file} is not a safetensors file: its header is a JSON {type(header).__name__}, not an "
                          "object of tensors. Save or download the model again.")
    out = {}
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape, dtype, start, end = _header_entry(file, name, info)
        if end - start != math.prod(shape) * dtype.itemsize:
            raise SourceError(f"{file}: tensor {name!r} has {end - start} bytes for shape {shape}; the file is "
                              "corrupt.")
        data_end = max(data_end, end)
        out[name] = (shape, dtype, 8 + length + start)
    if 8 + length + data_end > size:
        raise SourceError(f"{file} is truncated: its header places tensor data up to byte {8 + length + data_end} "
                          f"but the file has {size} bytes. Download or copy the model again.")
    return out


def _header_entry(file: Path, name: str, info: Any) -> tuple[tuple[int, ...], torch.dtype, int, int]:
    """(shape, dtype, start, end) of one header entry, or SourceError naming the file and the tensor."""
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    shape = info.get("shape") if isinstance(info, dict) else None
    if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise SourceError(f"{file}: the header entry of tensor {_short(name)!r} is malformed (it needs dtype, a "
                          "shape of sizes and two data offsets); the file is corrupt: save or download it again.")
    dtype = SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
        raise SourceError(f"{file}: tensor {_short(name)!r} has dtype {_short(info.get('dtype'))}, which MergeLab "
                          "cannot merge.")
    return tuple(shape), dtype, offsets[0], offsets[1]


def _short(value: Any, limit: int = 200) -> str:
    """A value or message cut for an error message (a corrupt file can hold megabytes of it)."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """A multimodal config's `text_config` (ignored when it is not an object)."""
    sub = config.get("text_config")
    return sub if isinstance(sub, dict) else {}


def _read_config(path: Path, ref: str) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SourceError(f"{ref!r} ({path}) is not a Hugging Face model folder: it has no config.json.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise SourceError(f"{config_file} is not valid JSON ({_short(exc)}); save or download the model again."
                          ) from exc
    if not isinstance(config, dict):
        raise SourceError(f"{config_file} holds a JSON {type(config).__name__}, not an object: it must be the "
                          "model's configuration as transformers saves it ({\"architectures\": [...], ...}).")
    return config


def _indexed_files(path: Path, index_name: str) -> list[Path] | None:
    index = path / index_name
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise SourceError(f"{index} is not valid JSON ({_short(exc)}); download it again, or delete it if the "
                          "model has a single weights file.") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) and f and Path(f).name == f and f not in (".", "..") for f in weight_map.values()):
        raise SourceError(f"{index} is not a weights index: it needs a \"weight_map\" object mapping each tensor "
                          "to a file name in the same folder. Download it again.")
    files = sorted({path / f for f in weight_map.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SourceError(f"{path} lists shards that are missing: {', '.join(missing)}. Download them again.")
    return files


def _safetensors_files(path: Path) -> list[Path]:
    indexed = _indexed_files(path, SAFETENSORS_INDEX)
    return indexed if indexed is not None else sorted(path.glob("*.safetensors"))


def _pickle_files(path: Path) -> list[Path]:
    indexed = _indexed_files(path, PICKLE_INDEX)
    return indexed if indexed is not None else sorted(path.glob("*.bin"))


def hub_reachable(timeout_s: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub answers: False when offline mode is requested or no TCP connection to its
    endpoint opens within `timeout_s` (so a machine without network fails fast instead of hanging in a download)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    from huggingface_hub import constants  # deferred: huggingface_hub (~0.6 s), only Hub ids need it

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
