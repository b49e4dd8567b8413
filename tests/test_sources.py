"""Model sources: local folders (sharded or not), pickle opt-in, and Hub ids without network."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merging.errors import SourceError
from merging.sources import open_model, read_safetensors_header
from tests.factory import make_family


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    plain = make_family(root / "plain", n_experts=1, dtype=torch.bfloat16, seed=3)
    sharded = make_family(root / "sharded", n_experts=1, dtype=torch.bfloat16, seed=3, shard="20KB")
    return plain, sharded


def test_unsharded_folder_reads_names_shapes_dtypes_and_values(families):
    plain, _ = families
    reference = load_file(plain.base / "model.safetensors")
    with open_model(plain.base) as source:
        assert sorted(source.tensor_names()) == sorted(reference)
        for name, tensor in reference.items():
            assert source.shape(name) == tuple(tensor.shape)
            assert source.dtype(name) == torch.bfloat16
            assert torch.equal(source.get(name), tensor)
        assert source.num_layers == 2
        assert source.architecture == "MistralForCausalLM"
        assert source.vocab_size == 96
        assert source.total_bytes() == sum(t.numel() * 2 for t in reference.values())


def test_sharded_folder_with_index_matches_the_unsharded_one(families):
    plain, sharded = families
    assert (sharded.base / "model.safetensors.index.json").is_file()
    assert len(list(sharded.base.glob("*.safetensors"))) > 2
    with open_model(plain.base) as one, open_model(sharded.base) as many:
        assert sorted(one.tensor_names()) == sorted(many.tensor_names())
        for name in one.tensor_names():
            assert torch.equal(one.get(name), many.get(name)), name


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_model(tmp_path / "no" / "such" / "model")


def test_folder_without_config_or_weights_is_explained(tmp_path, families):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no config.json"):
        open_model(empty)
    shutil.copy(families[0].base / "config.json", empty / "config.json")
    with pytest.raises(SourceError, match="no weights"):
        open_model(empty)
    with pytest.raises(SourceError, match="is a file"):
        open_model(empty / "config.json")


def test_index_naming_a_missing_shard_is_explained(tmp_path, families):
    broken = tmp_path / "broken"
    shutil.copytree(families[1].base, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    missing = min(set(index["weight_map"].values()))
    (broken / missing).unlink()
    with pytest.raises(SourceError, match=missing):
        open_model(broken)


def test_corrupt_safetensors_header_is_a_source_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SourceError, match="not a readable safetensors"):
        read_safetensors_header(bad)


def _pickle_only_model(tmp_path: Path, base: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(base / "config.json", folder / "config.json")
    state = load_file(base / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    return folder, state


def test_pickle_weights_are_refused_without_opt_in(tmp_path, families):
    folder, _ = _pickle_only_model(tmp_path, families[0].base)
    with pytest.raises(SourceError, match="allow_pickle"):
        open_model(folder)


def test_pickle_weights_load_with_opt_in(tmp_path, families):
    folder, state = _pickle_only_model(tmp_path, families[0].base)
    with open_model(folder, allow_pickle=True) as source:
        assert source.is_pickle
        assert sorted(source.tensor_names()) == sorted(state)
        for name, tensor in state.items():
            assert source.dtype(name) == tensor.dtype
            assert torch.equal(source.get(name), tensor)


def test_pickle_with_arbitrary_objects_is_rejected_even_with_opt_in(tmp_path, families):
    folder, state = _pickle_only_model(tmp_path, families[0].base)
    torch.save({"weights": state, "hook": print}, folder / "pytorch_model.bin")  # not weights-only loadable
    with pytest.raises(SourceError, match="weights-only"):
        open_model(folder, allow_pickle=True)


def test_hub_id_offline_fails_fast_naming_the_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    started = time.perf_counter()
    with pytest.raises(SourceError, match="mergelab-test/not-a-real-model"):
        open_model("mergelab-test/not-a-real-model", cache_dir=str(tmp_path / "hub-cache"))
    assert time.perf_counter() - started < 60  # no network retries (each would wait far longer); loaded-machine slack


def test_truncated_shard_fails_with_a_source_error(tmp_path, families):
    broken = tmp_path / "truncated"
    shutil.copytree(families[0].base, broken)
    shard = broken / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-64])  # header intact, the last tensor's bytes cut short
    with pytest.raises(SourceError, match="truncated"):  # found from the header, before any tensor is read
        open_model(broken)
