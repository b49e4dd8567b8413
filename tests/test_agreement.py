"""evaluation.agreement: agreement with experts, accuracy, heads for classifiers, architecture checks."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import evaluation.agreement as agreement_module
import evaluation.scoring as scoring_module
from evaluation.agreement import Evaluator, accuracy, agreement_share
from evaluation.answer_cache import AnswerCache
from evaluation.scoring import DEFAULT_MAX_NEW_TOKENS, TOKEN_MARGIN, Predictions, TaskOutputs, token_limit
from evaluation.tasks import tasks_from_records
from inference import generate_batch, load_model
from inference.loading import LoadedModel
from merging.errors import CompatibilityError, TaskSetError
from tests.factory import make_family, tiny_tokenizer

PROMPTS = ["1+2=", "abc", "3+4=", "hello", "9-1=", "xyz"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("agreement")
    family = make_family(root / "mistral", n_experts=2, scale=0.2)
    other = make_family(root / "llama", arch="llama", n_experts=1)
    experts = {"first": load_model(family.experts[0]), "second": load_model(family.experts[1])}
    return family, experts, load_model(other.experts[0]), load_model(family.base)


def _lm_tasks(experts: dict[str, LoadedModel]):
    """Text tasks whose answers are what expert "first" says on the first half of the prompts, and wrong after."""
    first = experts["first"]
    said = generate_batch(first.model, first.tokenizer, PROMPTS, 8)
    records = []
    for i, (prompt, text) in enumerate(zip(PROMPTS, said)):
        answer = text.splitlines()[0].strip() if i < 3 else "never said"
        records.append({"task": "one", "prompt": prompt, "answer": answer, "expert": "first",
                        "answer_type": "text", "max_new_tokens": 8})
        records.append({"task": "mix", "prompt": prompt, "answer": answer, "expert": None,
                        "answer_type": "text", "max_new_tokens": 8})
    return tasks_from_records(records)


def test_an_expert_agrees_with_itself_and_accuracy_uses_known_answers(lm):
    _, experts, _, _ = lm
    evaluator = Evaluator(_lm_tasks(experts), experts)
    result = evaluator.score(experts["first"])
    one = result.scores["one"]
    assert one.agreement == 1.0 and one.agreement_by_source["first"] == 1.0
    assert one.accuracy == pytest.approx(0.5) and one.expert_accuracy == pytest.approx(0.5)
    assert one.normalized_accuracy == pytest.approx(1.0)
    assert one.agreement_by_source["second"] < 1.0  # a different expert answers differently
    mix = result.scores["mix"]
    assert mix.agreement is None  # a composite task has no owner
    assert mix.expert_accuracy == max(mix.accuracy_by_source.values())
    assert result.mean("one.accuracy") == pytest.approx(0.5)
    assert set(result.to_dict()) == {"summary", "tasks", "answers", "outputs"}


def test_scoring_a_state_dict_matches_scoring_the_model_and_reuses_everything(lm, monkeypatch):
    _, experts, _, _ = lm
    calls = []
    real = agreement_module.generate_tasks
    monkeypatch.setattr(agreement_module, "generate_tasks", lambda *a, **k: calls.append(1) or real(*a, **k))
    evaluator = Evaluator(_lm_tasks(experts), experts)
    first = evaluator.score_state(experts["second"].model.state_dict())
    assert len(calls) == 2 + 1  # each expert once (all its tasks in one call), then the merged weights
    copy_before = evaluator._scoring_copies["__lm__"]
    second = evaluator.score_state(experts["first"].model.state_dict())
    assert len(calls) == 3 + 1  # the experts are not run again
    assert evaluator._scoring_copies["__lm__"] is copy_before  # the same instance, new weights
    assert second.scores["one"].agreement == 1.0
    assert first.answers == evaluator.score(experts["second"]).answers


def test_expert_of_another_architecture_is_a_clear_error(lm):
    _, experts, llama, _ = lm
    tasks = _lm_tasks(experts)
    with pytest.raises(CompatibilityError, match="Expert 'other' has model_type='llama'"):
        Evaluator(tasks, {**experts, "other": llama})
    evaluator = Evaluator(tasks, experts)
    with pytest.raises(CompatibilityError, match="same architecture"):
        evaluator.score(llama)


def test_merged_weights_of_the_wrong_shape_are_refused(lm):
    _, experts, _, _ = lm
    evaluator = Evaluator(_lm_tasks(experts), experts)
    state = dict(experts["first"].model.state_dict())
    state["model.embed_tokens.weight"] = torch.zeros(3, 3)
    with pytest.raises(CompatibilityError, match="model.embed_tokens.weight"):
        evaluator.score_state(state)


def test_a_task_whose_expert_is_missing_names_it(lm):
    _, experts, _, _ = lm
    tasks = tasks_from_records([{"task": "t", "prompt": "1+1=", "expert": "nobody"}])
    with pytest.raises(TaskSetError, match="'nobody'"):
        Evaluator(tasks, experts)


def test_without_experts_only_accuracy_is_scored(lm):
    _, _, _, base = lm
    tasks = tasks_from_records([{"task": "t", "prompt": "1+1=", "answer": "2", "expert": "math"}])
    score = Evaluator(tasks, {}).score(base).scores["t"]
    assert score.agreement is None and score.accuracy in (0.0, 1.0)


def test_token_limit_comes_from_the_task_or_its_longest_answer():
    tokenizer = tiny_tokenizer()  # one token per character
    tasks = tasks_from_records([
        {"task": "short", "prompt": "1+1=", "answer": "2", "expert": "math"},
        {"task": "short", "prompt": "9+9=", "answer": "答え: 18", "expert": "math"},
        {"task": "own", "prompt": "x", "answer": "1", "max_new_tokens": 7, "expert": "math"},
        {"task": "unknown", "prompt": "x", "expert": "math"},
    ])
    assert token_limit(tasks.tasks["short"], tokenizer) == len("答え: 18") + 1 + TOKEN_MARGIN  # + eos
    assert token_limit(tasks.tasks["own"], tokenizer) == 7
    assert token_limit(tasks.tasks["unknown"], tokenizer) == DEFAULT_MAX_NEW_TOKENS


def test_an_equation_tasks_limit_holds_the_restated_prompt_and_its_answer():
    tokenizer = tiny_tokenizer()  # one token per character
    tasks = tasks_from_records([{"task": "e", "prompt": "百+百=", "answer": "答え: 200", "answer_type": "equation"},
                                {"task": "e", "prompt": "1+1=", "answer": 2}])
    assert token_limit(tasks.tasks["e"], tokenizer) == len("百+百=200") + 1 + TOKEN_MARGIN


EQUATION_PROMPTS = ["十四+五=", "二十-二=", "三+四="]


def _equation_scores(lm, answer_type: str, monkeypatch):
    """Scores of the base (as the merge) on EQUATION_PROMPTS through Evaluator.score, with generation replaced by
    fixed replies: expert "first" restates and computes (once rambling on: "20-2=18=12"), the merge chats about the
    right numbers without an "=", expert "second" says nothing."""
    _, experts, _, base = lm
    replies = {id(experts["first"].model): ["14+5=19", "20-2=18=12", "3+4=7"],
               id(experts["second"].model): ["", "", ""],
               id(base.model): ["The number 19 is a special number", "二十-二 is 18", "3+4 gives 7"]}
    by_prompt = {key: dict(zip(EQUATION_PROMPTS, texts)) for key, texts in replies.items()}
    monkeypatch.setattr(scoring_module, "generate_batch",
                        lambda model, tokenizer, prompts, *a, **k: [by_prompt[id(model)][p] for p in prompts])
    records = [{"task": "sums", "prompt": p, "answer": a, "expert": "first", "answer_type": answer_type}
               for p, a in zip(EQUATION_PROMPTS, ["答え: 19", "18", 7])]
    evaluator = Evaluator(tasks_from_records(records), experts, answer_cache=AnswerCache())
    return evaluator.score(base).scores["sums"]


def test_an_equation_task_file_is_scored_by_the_first_equals_rule(lm, monkeypatch):
    """The same replies scored as declared: under "equation" the merge's chatty replies give no answer (0 %) and
    the expert's "20-2=18=12" is right; under "number" the chatty replies count (100 %) and 12 is read there.
    Agreement reads the expert's and the merge's answers by the same rule, and no answer never agrees."""
    equation = _equation_scores(lm, "equation", monkeypatch)
    assert (equation.accuracy, equation.expert_accuracy, equation.agreement) == (0.0, 1.0, 0.0)
    number = _equation_scores(lm, "number", monkeypatch)
    assert number.accuracy == 1.0 and number.expert_accuracy == pytest.approx(2 / 3)
    assert number.agreement == pytest.approx(2 / 3)  # 19 and 7 agree; the expert's 12 is not the merge's 18
    assert "second" not in equation.agreement_by_source  # an expert that answered nothing: nothing to agree with


def test_no_answer_never_counts_as_agreement():
    # expert: "7", none, "3", "5"; the merge: "7", none, none, "4": one agreement of the three the expert answered
    assert agreement_share(["7", None, None, "4"], ["7", None, "3", "5"]) == pytest.approx(1 / 3)
    assert agreement_share([None, None], [None, None]) is None  # the expert answered nothing: nothing to agree with
    assert agreement_share([None, "1"], ["2", "1"]) == 0.5


def test_a_task_score_never_counts_silence_as_agreement(lm):
    """The scoring path (Evaluator._task_score): expert "first" answers two of four prompts; a merge that answers
    nothing agrees 0 %, not the 50 % that "no answer" == "no answer" would give; accuracy is scored apart."""
    _, experts, _, _ = lm
    records = [{"task": "n", "prompt": p, "answer": a, "expert": "first"}
               for p, a in zip(PROMPTS[:4], ["3", "7", "7", "8"])]
    tasks = tasks_from_records(records)
    evaluator = Evaluator(tasks, experts)
    expert = {"first": Predictions({"n": TaskOutputs(raw=[""] * 4, answers=["3", None, "7", None])}),
              "second": Predictions({"n": TaskOutputs(raw=[""] * 4, answers=[None] * 4)})}
    silent = evaluator._task_score(tasks.tasks["n"], TaskOutputs(raw=[""] * 4, answers=[None] * 4), expert)
    assert silent.agreement == 0.0 and silent.accuracy == 0.0
    assert "second" not in silent.agreement_by_source  # an expert that answered nothing: nothing to agree with
    half = evaluator._task_score(tasks.tasks["n"], TaskOutputs(raw=[""] * 4, answers=["3", "7", "1", "8"]), expert)
    assert half.agreement == 0.5 and half.accuracy == 0.75  # agrees on "3" only; right on 3, 7 and 8


def test_accuracy_counts_only_known_answers():
    assert accuracy(["1", "2", None], ["1", None, "3"]) == 0.5
    assert accuracy(["1"], [None]) is None


# --- classifiers: each task through its own head ---------------------------------------------------------------


def _classifier(path, base_state, num_labels, seed):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        id2label={i: f"L{i}" for i in range(num_labels)}, label2id={f"L{i}": i for i in range(num_labels)})
    model = BertForSequenceClassification(config)
    state = model.state_dict()
    for name, tensor in base_state.items():
        state[name] = tensor + 0.3 * torch.randn_like(tensor)
    model.load_state_dict(state)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return load_model(path)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifiers")
    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64,
                                                    max_position_embeddings=64))
    base_state = {k: v for k, v in base.state_dict().items() if k.startswith("bert.")}
    experts = {"two": _classifier(root / "two", base_state, 2, 1), "three": _classifier(root / "three", base_state, 3, 2)}
    texts = ["a b c", "hello there", "one two", "zz top", "x y", "abc def", "k", "m n o p"]
    records = [{"task": "two", "text": t, "label": "L1", "expert": "two"} for t in texts]
    records += [{"task": "three", "text": t, "expert": "three"} for t in texts]
    return experts, base_state, tasks_from_records(records)


def test_classifier_tasks_read_the_merged_backbone_through_each_head(classifiers):
    experts, base_state, tasks = classifiers
    evaluator = Evaluator(tasks, experts)
    own = evaluator.score_state({k.removeprefix("bert."): v for k, v in experts["two"].model.state_dict().items()
                                 if k.startswith("bert.")})  # a bare-encoder state (no prefix, no head)
    assert own.scores["two"].agreement == 1.0  # expert two's backbone through its own head is expert two
    assert set(own.scores["two"].agreement_by_source) == {"two"}
    labels = [int(a) for a in evaluator.expert_predictions()["two"].tasks["two"].answers]
    assert own.scores["two"].accuracy == pytest.approx(labels.count(1) / len(labels))  # label names map to ids
    assert own.scores["three"].accuracy is None  # no labels given
    head = evaluator._scoring_copies["head:three"].classifier.weight
    assert torch.equal(head, experts["three"].model.classifier.weight)  # heads never merged
    merged = evaluator.score_state(base_state)
    assert 0.0 <= merged.scores["three"].agreement <= 1.0
    assert merged.answers["three"] != own.answers["three"] or merged.answers["two"] != own.answers["two"]


def test_classification_task_without_its_expert_is_refused(classifiers):
    experts, _, tasks = classifiers
    with pytest.raises(TaskSetError, match="'three'"):
        Evaluator(tasks, {"two": experts["two"]})


def test_outcomes_are_what_the_scores_are_shares_of_and_silence_never_agrees(lm):
    """Evaluator.outcomes lists, example by example, the right answers (known answers only) and the agreements (the
    examples the task's expert answered only): their shares are the task scores; a merge silent where the expert is
    silent gets no agreement for it."""
    _, experts, _, _ = lm
    evaluator = Evaluator(_lm_tasks(experts), experts)
    result = evaluator.score(experts["second"])
    outcomes = evaluator.outcomes(result)
    assert set(outcomes["accuracy"]) == {"one", "mix"} and set(outcomes["agreement"]) == {"one"}  # mix: no owner
    for metric, tasks in outcomes.items():
        for task, right in tasks.items():
            assert sum(right) / len(right) == pytest.approx(getattr(result.scores[task], metric))
    records = [{"task": "n", "prompt": p, "answer": a, "expert": "first"} for p, a in zip(PROMPTS, "378")]
    evaluator = Evaluator(tasks_from_records([*records, {"task": "n", "prompt": PROMPTS[3], "expert": "first"}]),
                          experts)
    evaluator._expert_predictions = {  # the expert answers the 1st and 3rd prompts only
        "first": Predictions({"n": TaskOutputs(raw=[""] * 4, answers=["3", None, "8", None])}),
        "second": Predictions({"n": TaskOutputs(raw=[""] * 4, answers=[None] * 4)})}
    merge = agreement_module.EvalResult(scores={}, answers={"n": [None, None, "8", None]}, outputs={})
    got = evaluator.outcomes(merge)
    assert got["agreement"] == {"n": [False, True]}  # over the two the expert answered: None ≠ "3", "8" = "8"
    assert got["accuracy"] == {"n": [False, False, True]}  # the three known answers "3", "7", "8"


def test_released_experts_score_as_kept_ones_through_every_head(classifiers, lm):
    """release_experts (for an evaluator that owns its experts: here, copies) keeps the answers and configs and makes
    the experts' own models the scoring models: classifier heads (label ids from the config) and a generated task
    score as a kept evaluator's copies do; an evaluator cannot be built from released experts."""
    import copy

    experts, base_state, tasks = classifiers
    owned = copy.deepcopy(experts)
    kept, released = Evaluator(tasks, experts), Evaluator(tasks, owned)
    released.release_experts()
    assert all(e.model is None for e in released.experts.values())
    assert released._scoring_copies["head:three"] is owned["three"].model  # adopted, not copied
    for state in (base_state, {k: v for k, v in experts["three"].model.state_dict().items() if k.startswith("bert.")}):
        assert released.score_state(state).to_dict() == kept.score_state(state).to_dict()
    with pytest.raises(TaskSetError, match="released"):
        Evaluator(tasks, released.experts)
    _, lms, _, _ = lm
    owned = copy.deepcopy(lms)
    kept, released = Evaluator(_lm_tasks(lms), lms), Evaluator(_lm_tasks(owned), owned)
    released.release_experts()
    state = lms["second"].model.state_dict()
    assert released.score_state(state).to_dict() == kept.score_state(state).to_dict()
    assert released.score(lms["second"]).to_dict() == kept.score(lms["second"]).to_dict()  # checked on configs
