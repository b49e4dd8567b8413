"""Merging on the real default family (SmolLM2-135M + LoRA experts, tests/conftest.py `smollm2_family`): the live
merge the app chats with equals the engine's folder merge tensor for tensor, and the chat model follows every
re-merge (live, then a folder merge, then live again). One module-scoped session keeps the 135M reads to one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from merging.engine import merge_to_folder
from merging.settings import MergeSettings
from ui import models_panel
from ui.hosting import HostConfig
from ui.session import new_session
from ui.workspace import (
    build_recipe_for_engine,
    merge_live,
    merged_chat_model,
)
from ui.workspace import (
    merge_to_folder as app_merge_to_folder,
)

EXPERTS = ["math", "japanese"]


@pytest.fixture(scope="module")
def session_and_config(smollm2_family, tmp_path_factory):
    config = HostConfig.detect(hosted=False, models_dir=tmp_path_factory.mktemp("models"))
    session = new_session()
    models_panel.check_models(session, config, models_panel.ModelsChoice("Zoo", "smollm2", EXPERTS, "", ""))
    assert session.live is not None, "the memory plan must allow live merging of a 135M family on this machine"
    return session, config


def chat_state(session) -> dict[str, torch.Tensor]:
    return merged_chat_model(session).model.state_dict()


def assert_same_tensors(folder_tensors: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> None:
    for name, expected in folder_tensors.items():
        got = model_state[name]
        assert torch.equal(got.to(expected.dtype), expected), f"{name} differs from the folder merge"


def test_live_merge_equals_the_engine_folder_tensor_for_tensor(session_and_config, tmp_path):
    session, _config = session_and_config
    settings = MergeSettings("ties", [0.7, 0.7], {"density": 0.5})
    merge_live(session, settings)
    out = tmp_path / "ties"
    merge_to_folder(build_recipe_for_engine(session, settings), out)
    folder = load_file(str(out / "model.safetensors"))
    assert folder["model.layers.20.mlp.down_proj.weight"].dtype == torch.float32  # float32 sources, float32 out
    assert_same_tensors(folder, chat_state(session))


def test_chat_follows_every_re_merge(session_and_config):
    session, config = session_and_config
    probe = "model.layers.25.self_attn.q_proj.weight"  # a tensor both experts' LoRA changed

    first = MergeSettings("task_arithmetic", [1.0, 1.0])
    merge_live(session, first)
    after_first = chat_state(session)[probe].clone()

    second = MergeSettings("task_arithmetic", [0.3, 0.3])
    folder = app_merge_to_folder(session, config, second, name="follow")
    on_disk = load_file(str(folder / "model.safetensors"))
    assert not torch.equal(on_disk[probe], after_first), "the two merges must differ for this test to mean anything"
    assert_same_tensors({probe: on_disk[probe]}, chat_state(session))

    merge_live(session, first)
    assert torch.equal(chat_state(session)[probe], after_first)
