"""Hub ids may name a revision, `owner/name@revision` (as mergekit writes it): some repositories ship safetensors only
at a revision other than main. The revision is parsed and checked (no path tricks: huggingface_hub writes branch and
tag names into its cache's paths) and reaches huggingface_hub; tested on a folder-backed offline cache laid out as
huggingface_hub lays it out (models--owner--name/refs, snapshots/<commit>)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from merging import sources
from merging.errors import SourceError
from merging.sources import open_model, split_revision, validate_hub_id
from tests.factory import make_family

COMMIT = "3a30826" + "0" * 33  # a commit id's form (40 hex digits); not WizardMath's real one
MAIN = "b" * 40


@pytest.mark.parametrize("ref, parsed", [
    ("owner/name", ("owner/name", None)),
    (f"owner/name@{COMMIT}", ("owner/name", COMMIT)),
    ("owner/name@main", ("owner/name", "main")),
    ("owner/name@v1.1", ("owner/name", "v1.1")),
    ("owner/name@refs/pr/12", ("owner/name", "refs/pr/12")),
])
def test_a_revision_is_split_off(ref, parsed):
    assert split_revision(ref) == parsed


@pytest.mark.parametrize("revision", ["", "../x", "..", "a/../b", "/etc", "main/", "a//b", "a\\b", "ma in", ".hidden",
                                      "a..b", "x@y", "~x", "a" * 256, "ma\nin", "main\n"])
def test_a_revision_that_could_be_a_path_trick_is_refused(revision):
    with pytest.raises(SourceError, match="is not a branch, tag or commit id"):
        split_revision(f"owner/name@{revision}")
    if revision.strip() == revision:  # validate_hub_id strips what the user typed first
        with pytest.raises(SourceError):
            validate_hub_id(f"owner/name@{revision}")


def test_validate_hub_id_keeps_a_valid_revision_and_still_refuses_paths():
    ref = f"WizardLMTeam/WizardMath-7B-V1.1@{COMMIT}"
    assert validate_hub_id(ref) == ref
    with pytest.raises(SourceError, match="not a Hugging Face Hub id"):
        validate_hub_id(f"../owner/name@{COMMIT}")
    with pytest.raises(SourceError, match="not a Hugging Face Hub id"):
        validate_hub_id("/etc/passwd@main")
    with pytest.raises(SourceError, match="not a Hugging Face Hub id"):
        validate_hub_id("owner/name\n@main")  # "$" would match before the newline


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """A huggingface_hub cache holding owner/name at two commits: main (refs/main) and COMMIT (also tag v2), with
    different weights, and no route to the Hub."""
    family = make_family(tmp_path / "made", n_experts=1, layers=1)
    repo = tmp_path / "cache" / "models--owner--name"
    for commit, folder in ((MAIN, family.base), (COMMIT, family.experts[0])):
        shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v2").write_text(COMMIT)
    monkeypatch.setattr(sources, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(tmp_path / "cache"), family


def test_a_revision_reaches_huggingface_hub(offline_cache):
    cache, _family = offline_cache
    snapshots = Path(cache, "models--owner--name", "snapshots")
    assert sources.download_from_hub("owner/name", cache_dir=cache) == snapshots / MAIN
    assert sources.download_from_hub(f"owner/name@{COMMIT}", cache_dir=cache) == snapshots / COMMIT
    assert sources.download_from_hub("owner/name@v2", cache_dir=cache) == snapshots / COMMIT
    with pytest.raises(SourceError, match="Cannot fetch 'owner/name@nope'"):
        sources.download_from_hub("owner/name@nope", cache_dir=cache)


def test_open_model_reads_the_named_revision(offline_cache):
    cache, family = offline_cache
    with open_model(f"owner/name@{COMMIT}", cache_dir=cache, hub_only=True) as at_commit, \
            open_model("owner/name", cache_dir=cache) as at_main, open_model(family.experts[0]) as expert:
        name = at_commit.tensor_names()[0]
        assert at_commit.ref == f"owner/name@{COMMIT}"
        assert torch.equal(at_commit.get(name), expert.get(name))
        assert not torch.equal(at_main.get(name), at_commit.get(name))
