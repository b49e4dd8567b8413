"""Cancel stops the work, not just the answer: /cancel_merge sets the session's flag, and a long loop inside a method
(karcher's fixed-point iterations) sees it through merging.cancel, both for in-memory merges and folder merges.
The flags here count how often they are read, so the tests show where the work stopped without timing anything."""

from __future__ import annotations

import threading

import pytest
import torch

from merging.cancel import cancel_requested, cancellable, check_cancelled
from merging.errors import MergeCancelled
from merging.methods import get_method
from ui import merge_panel, models_panel
from ui.hosting import HostConfig
from ui.session import new_session

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LM = models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", "")


class CancelAfter(threading.Event):
    """An Event that sets itself on its `after`-th read: a Cancel pressed while the merge is under way."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.reads = after, 0

    def is_set(self) -> bool:
        self.reads += 1
        if self.reads >= self.after:
            self.set()
        return super().is_set()


def slow_karcher_settings() -> dict:
    """karcher at its most iterations and finest tolerance the recipe allows: long per tensor."""
    method = get_method("karcher")
    max_iter = method.param("max_iter").high or 1000
    tol = max(method.param("tol").low or 0.0, 1e-12)
    return {"method": "karcher", "weights": [], "params": {"max_iter": max_iter, "tol": tol}, "seed": 0}


def test_check_cancelled_reads_the_innermost_flag_of_its_own_thread():
    check_cancelled()  # no cancellable block: nothing to cancel
    stop = threading.Event()
    with cancellable(stop):
        check_cancelled()
        stop.set()
        with pytest.raises(MergeCancelled):
            check_cancelled()
        with cancellable(lambda: False):  # nesting: the inner flag wins, the outer comes back after
            assert not cancel_requested()
        assert cancel_requested()
        seen: list[bool] = []
        other = threading.Thread(target=lambda: seen.append(cancel_requested()))
        other.start()
        other.join()
        assert seen == [False]  # another thread (another user's merge) is not cancelled
    assert not cancel_requested()


def test_karcher_observes_cancellation_inside_its_iterations():
    torch.manual_seed(0)
    tensors = [torch.randn(64, 64) for _ in range(3)]
    karcher = get_method("karcher")
    reads = CancelAfter(after=2)
    with cancellable(reads), pytest.raises(MergeCancelled):
        karcher.fn(None, tensors, [{}, {}, {}], {"max_iter": 1000, "tol": 1e-12}, None)
    assert reads.reads == 2  # it stopped at the first check after the flag was set, not after 1000 iterations


@pytest.fixture
def config(tmp_path) -> HostConfig:
    return HostConfig.detect(hosted=False, models_dir=tmp_path / "models")


def test_cancel_stops_a_live_karcher_merge_and_keeps_the_previous_merge(config):
    session = new_session()
    assert "ready to merge" in models_panel.check_models(session, config, LM)
    assert session.live is not None
    merge_panel.run_merge(session, config, {"method": "ties", "weights": [0.5, 0.5], "params": {"density": 0.5}})
    previous = session.merge
    weights = {k: v.clone() for k, v in session.chat_model.model.state_dict().items()}
    session.cancel = CancelAfter(after=3)  # what /cancel_merge sets, pressed during the merge
    with pytest.raises(MergeCancelled):
        merge_panel.run_merge(session, config, slow_karcher_settings())
    assert session.cancel.reads == 3  # stopped inside the first tensor's iterations
    assert session.merge is previous  # the cancelled merge did not become the current one
    now = session.chat_model.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in weights.items())  # and left no half-merged weights in use


def test_cancel_stops_a_karcher_folder_merge_within_its_first_tensor(config):
    session = new_session()
    assert "ready to merge" in models_panel.check_models(session, config, LM)
    session.cancel = CancelAfter(after=3)  # read once by the engine before tensor 0, then inside karcher
    finished: list[float] = []
    with pytest.raises(MergeCancelled):
        merge_panel.run_merge_to_folder(session, config, slow_karcher_settings(), "cancelled",
                                        progress=lambda fraction, desc: finished.append(fraction))
    assert finished == []  # no tensor was finished: the cancel landed inside the first one
    out = session.merged_folder(config.models_dir, "cancelled")
    assert not out.exists() and not list(out.parent.glob(".cancelled*"))  # nothing left behind


def test_engine_cancel_flag_reaches_inside_karcher(tmp_path):
    """Any engine caller (CLI, Export, sweeps) gets it: merge_to_folder(cancel=...) alone, no UI around it."""
    from merging.engine import merge_to_folder
    from tests.factory import make_family

    family = make_family(tmp_path / "f", n_experts=2)
    settings = slow_karcher_settings()["params"]
    recipe = (f"merge_method: karcher\nmodels:\n  - model: {family.experts[0]}\n  - model: {family.experts[1]}\n"
              f"parameters: {{max_iter: {settings['max_iter']}, tol: {settings['tol']}}}\n")
    flag = CancelAfter(after=3)  # read once before tensor 0, then inside karcher's iterations
    finished: list[int] = []
    with pytest.raises(MergeCancelled):
        merge_to_folder(recipe, tmp_path / "out", cancel=flag, progress=lambda p: finished.append(p.tensor_index))
    assert finished == [] and flag.reads == 3
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
