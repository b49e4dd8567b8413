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
    probe = "model.layers.25.self_attn.q_proj.weight"  # a tensor the math expert's LoRA changed (layers 10-29)

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


@pytest.mark.usefixtures("one_torch_thread")  # 135M decoding on 2 busy cores: 2 threads wait on each other (2-10x slower)
def test_the_default_preset_merge_answers_kanji_arithmetic_that_no_source_answers(session_and_config, smollm2_family):
    """The page's promise (assets/catalog.yaml): through /chat, the preset's starting merge answers its suggested
    composite prompts (`十七+四=` -> `17+4=21`), read as the family's task files read them, while the base and each
    expert beside it do not; its japanese prompt is answered by the merge too."""
    from evaluation.answers import expected_answer, extract
    from evaluation.tasks import load_tasks
    from ui import chat_panel
    from ui.catalog import load_catalog
    from ui.models_panel import preset_settings

    session, config = session_and_config
    preset = load_catalog()[0]
    merge_live(session, preset_settings(preset, len(preset.models)))
    tasks = load_tasks(smollm2_family.root / "validation.jsonl")
    truth = {e.input: (task, e.answer) for task in tasks.tasks.values() for e in task.examples}
    composite = [p for p in preset.prompts if p in truth and truth[p][0].name == "japanese_math"]
    assert composite, "the preset suggests no composite prompt from the validation split"

    def reply(prompt: str, beside: str) -> tuple[str, str]:
        """The merge's and the source's replies through /chat (greedy, as the page starts; 16 new tokens, as the
        task files allow)."""
        *_, (merged, compare) = chat_panel.chat(session, config, prompt, [], [], beside,
                                                chat_panel.GenerationSettings(max_new_tokens=16))
        return (chat_panel.untagged(merged)[-1]["content"],
                chat_panel.untagged(compare)[-1]["content"] if compare else "")

    def right(prompt: str, text: str) -> bool:
        task, answer = truth[prompt]
        return extract(text, task.answer_type) == expected_answer(answer, task.answer_type)

    for prompt in [p for p in preset.prompts if p in truth and p not in composite]:
        merged, _ = reply(prompt, chat_panel.NO_COMPARISON)
        assert right(prompt, merged), (prompt, merged)
    for prompt in composite:
        for beside in chat_panel.compare_choices(session)[1:]:  # the base and each expert
            merged, source = reply(prompt, beside)
            assert right(prompt, merged) and not right(prompt, source), (prompt, merged, beside, source)
