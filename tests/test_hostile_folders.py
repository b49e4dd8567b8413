"""Broken and hostile model folders (issue 18), each through the app as a visitor meets it: /preflight, /merge and
/chat (and /merge_to_folder where the folder is the problem). Every fault gives a clear message naming what to fix:
no traceback, no hang, no remote code run, no finished-looking merge of a file that lies."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError

from tests.conftest import api_client
from tests.factory import make_family
from tests.serving import close_app, launch_local

SETTINGS = {"method": "task_arithmetic", "weights": [0.5, 0.5], "params": {}, "seed": 0}


# --- hostile folders: each function breaks a copy of a good folder in one way ---------------------------------------

def _weights(folder: Path) -> Path:
    return min(folder.glob("*.safetensors"))


def _header(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def _write(file: Path, header: dict, data: bytes) -> None:
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    file.write_bytes(struct.pack("<Q", len(body)) + body + data)


def _tensors(header: dict) -> list[str]:
    return [k for k in header if k != "__metadata__"]


def offsets_past_end(folder: Path) -> None:
    header, data = _header(_weights(folder))
    entry = header[_tensors(header)[0]]
    length = entry["data_offsets"][1] - entry["data_offsets"][0]
    entry["data_offsets"] = [len(data) + 8, len(data) + 8 + length]
    _write(_weights(folder), header, data)


def huge_header_length(folder: Path) -> None:
    file = _weights(folder)
    file.write_bytes(struct.pack("<Q", 2**62) + file.read_bytes()[8:])


def dtype_mismatch(folder: Path) -> None:
    header, data = _header(_weights(folder))
    header[next(k for k in _tensors(header) if header[k]["dtype"] == "F32")]["dtype"] = "F16"
    _write(_weights(folder), header, data)


def shape_mismatch(folder: Path) -> None:
    header, data = _header(_weights(folder))
    entry = header[next(k for k in _tensors(header) if len(header[k]["shape"]) == 2)]
    entry["shape"] = [entry["shape"][0] * 4, entry["shape"][1]]
    _write(_weights(folder), header, data)


def index_names_missing_shard(folder: Path) -> None:
    file = _weights(folder)
    names = _tensors(_header(file)[0])
    weight_map = {k: ("model-00002-of-00002.safetensors" if i % 2 else file.name) for i, k in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def pickle_only(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(_weights(folder)), folder / "pytorch_model.bin")
    for file in folder.glob("*.safetensors*"):
        file.unlink()


def remote_code(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                          "AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "config.json").write_text(json.dumps(config))
    marker = folder.parent / "remote-code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")


def tokenizer_missing(folder: Path) -> None:
    for file in folder.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            file.unlink()


def tokenizer_malformed(folder: Path) -> None:
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"')


def tokenizer_wrong_shape(folder: Path) -> None:
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"}}')


# --- the app ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root, make_family(root / "good"), make_family(root / "wide", vocab_size=128)


@pytest.fixture(scope="module")
def url(zoo):
    from app import create_app
    from ui.hosting import HostConfig

    demo = create_app(HostConfig.detect(hosted=False, models_dir=zoo[0] / "models"))
    url = launch_local(demo)
    yield url
    close_app(demo)


def _broken(zoo, fault, role: str) -> tuple[Path, Path]:
    """(base, expert0) with a fresh copy of `role`'s folder broken by `fault`."""
    root, good, _ = zoo
    source = good.base if role == "base" else good.experts[0]
    copy = root / f"{fault.__name__}-{role}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    fault(copy)
    return (copy, good.experts[0]) if role == "base" else (good.base, copy)


def _call(client, *args, api_name: str) -> tuple[bool, str]:
    """(answered, text): the answer, or the error's message; never a generic failure."""
    try:
        return True, str(client.predict(*args, api_name=api_name))
    except AppError as error:
        message = str(error)
        assert "Something went wrong" not in message and "Traceback" not in message, message
        return False, message


def _preflight(url: str, base: Path, expert: Path, other: Path) -> tuple[object, bool, str]:
    client = api_client(url)
    ok, text = _call(client, "Local folders", None, [], str(base), f"{expert}\n{other}", None, api_name="/preflight")
    return client, ok, text


UNREADABLE = [(offsets_past_end, "is truncated: its header places tensor data up to byte"),
              (huge_header_length, "header length field says 4611686018427387904 bytes"),
              (dtype_mismatch, "has 12288 bytes for shape (96, 32); the file is corrupt"),
              (shape_mismatch, "the file is corrupt"),
              (index_names_missing_shard, "lists shards that are missing: model-00002-of-00002.safetensors"),
              (pickle_only, "has only pickle weights (pytorch_model.bin)")]


@pytest.mark.parametrize(("fault", "expected"), UNREADABLE, ids=[f.__name__ for f, _ in UNREADABLE])
def test_unreadable_expert_is_refused_at_preflight_merge_and_chat(url, zoo, fault, expected):
    base, expert = _broken(zoo, fault, "expert")
    client, ok, text = _preflight(url, base, expert, zoo[1].experts[1])
    assert not ok and expected in text, text
    for args, api in (((SETTINGS,), "/merge"), ((SETTINGS, "out"), "/merge_to_folder"),
                      (("1+1=", [], [], "base", 4, 0.0, 1.0, "none"), "/chat")):
        ok, text = _call(client, *args, api_name=api)
        assert not ok and (expected in text or "Merge the models first" in text), (api, text)  # chat: nothing merged
    assert not any((zoo[0] / "models").rglob("model.safetensors")), "a merge of a lying file was written"


def test_pickle_is_never_unpickled_without_opt_in(url, zoo, monkeypatch):
    import torch

    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    base, expert = _broken(zoo, pickle_only, "expert")
    _client, ok, text = _preflight(url, base, expert, zoo[1].experts[1])
    assert not ok and "Pickle files can run code" in text, text
    assert all(k.get("weights_only") is True for k in calls), calls  # no torch.load without weights_only, ever


def test_remote_code_is_never_run_and_is_said(url, zoo):
    base, expert = _broken(zoo, remote_code, "base")
    client, ok, text = _preflight(url, base, expert, zoo[1].experts[1])
    assert ok and "auto_map in config.json). MergeLab never runs it" in text, text
    for args, api in (((SETTINGS,), "/merge"), (("1+1=", [], [], "base", 4, 0.0, 1.0, "none"), "/chat"),
                      ((SETTINGS, "remote"), "/merge_to_folder"), (("1+1=", [], [], "base", 4, 0.0, 1.0, "none"),
                                                                   "/chat")):
        ok, text = _call(client, *args, api_name=api)
        assert ok, (api, text)
    assert not (base.parent / "remote-code-ran").exists(), "the folder's own Python ran"


TOKENIZERS = [(tokenizer_missing, "has no tokenizer files"), (tokenizer_malformed, "not valid JSON"),
              (tokenizer_wrong_shape, None)]


@pytest.mark.parametrize(("fault", "warning"), TOKENIZERS, ids=[f.__name__ for f, _ in TOKENIZERS])
def test_broken_tokenizer_is_said_at_preflight_and_chat(url, zoo, fault, warning):
    base, expert = _broken(zoo, fault, "base")
    client, ok, text = _preflight(url, base, expert, zoo[1].experts[1])
    assert ok, text  # the tensors can be merged
    if warning is not None:
        assert warning in text and "Chat and Evaluate cannot use the merge" in text, text
    ok, text = _call(client, SETTINGS, "tok", api_name="/merge_to_folder")
    ok, text = _call(client, "1+1=", [], [], "base", 4, 0.0, 1.0, "none", api_name="/chat")
    assert not ok and "has no usable tokenizer" in text and "copy the tokenizer files" in text, text
    assert len(text) < 400, text


def test_expert_with_another_vocabulary_is_a_preflight_problem_and_merge_refuses(url, zoo):
    _root, good, wide = zoo
    client, ok, text = _preflight(url, good.base, wide.experts[0], good.experts[1])
    assert ok and "1 problem to fix" in text and "Vocabulary sizes differ" in text, text
    for args, api in (((SETTINGS,), "/merge"), ((SETTINGS, "vocab"), "/merge_to_folder")):
        ok, text = _call(client, *args, api_name=api)
        assert not ok and "Vocabulary sizes differ" in text and "tokenizer_source" in text, (api, text)
