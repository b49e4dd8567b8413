"""evaluation.baselines: baselines chosen on the learning split, never on the scored set; the task-wise pass is never
worse than the uniform λ it starts from; the learning split is scored like the tasks its experts own."""

from __future__ import annotations

import pytest
import torch

from evaluation import baselines
from evaluation.agreement import Evaluator
from evaluation.tasks import tasks_from_records
from inference import load_model
from merging.learned.adapters import read_state
from merging.live import LiveMerger
from tests.factory import make_family

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LEARNING = {"expert0": ["5+1=", "hello", "2+9="], "expert1": ["2+2=", "zz", "ab"]}


def _scored(answers: str, prompts: tuple[str, ...] = ("1+2=", "abc")) -> object:
    lines = [{"task": "a", "prompt": p, "answer": answers, "expert": "expert0", "answer_type": "text",
              "max_new_tokens": 4, "stop": "\n"} for p in prompts]
    lines += [{"task": "b", "prompt": p, "answer": 7, "expert": "expert1", "max_new_tokens": 3} for p in ("3+4=", "x")]
    return tasks_from_records(lines)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    tiny = make_family(tmp_path_factory.mktemp("baselines"), n_experts=2, scale=0.3)
    experts = {f"expert{i}": load_model(p) for i, p in enumerate(tiny.experts)}
    states = {f"expert{i}": read_state(p) for i, p in enumerate(tiny.experts)}
    merger = LiveMerger(read_state(tiny.base), states, num_layers=2)

    def merge(settings):
        return merger.merge(baselines.settings_recipe("base", list(states), settings))

    return experts, merge


def test_the_learning_split_is_scored_like_the_tasks_its_experts_own():
    tasks = baselines.learning_tasks(LEARNING, _scored("答え: x"))
    assert list(tasks.tasks) == ["expert0", "expert1"]
    own, other = tasks.tasks["expert0"], tasks.tasks["expert1"]
    assert own.inputs == LEARNING["expert0"] and not any(own.answers)  # no answers: agreement only
    assert (own.numeric, own.max_new_tokens, own.stop) == (False, 4, ("\n",))
    assert (other.numeric, other.max_new_tokens) == (True, 3)
    with pytest.raises(Exception, match="No scored task belongs to expert 'nobody'"):
        baselines.learning_tasks({"nobody": ["x"]}, _scored("y"))


def test_the_learning_split_keeps_an_equation_tasks_answer_type():
    scored = tasks_from_records([{"task": "sums", "prompt": "14+5=", "answer": "19", "expert": "expert0",
                                  "answer_type": "equation", "max_new_tokens": 8}])
    learning = baselines.learning_tasks({"expert0": ["十四+五="]}, scored).tasks["expert0"]
    assert (learning.answer_type, learning.numeric, learning.max_new_tokens) == ("equation", True, 8)


def test_each_baseline_is_the_best_of_its_candidates_on_the_learning_split(family):
    experts, merge = family
    selector = Evaluator(baselines.learning_tasks(LEARNING, _scored("y")), experts)
    choices = baselines.choose_baselines(selector, merge, 2)
    assert list(choices) == [baselines.UNIFORM, baselines.TASK_WISE, baselines.TIES]
    uniform, task_wise, ties = choices.values()
    assert [c["weights"] for c, _ in uniform.tried] == [[w, w] for w in baselines.UNIFORM_GRID]
    assert len(ties.tried) == len(baselines.TIES_DENSITIES) * len(baselines.TIES_LAMBDAS)
    for choice in choices.values():
        assert choice.score == max(v for _, v in choice.tried)
        rescored = selector.score_state(merge(choice.settings)).mean("agreement")  # recomputed, not remembered
        assert rescored == pytest.approx(choice.score)
    assert task_wise.score >= uniform.score  # the coordinate pass starts at the best uniform λ
    assert "chosen on the learning split" in task_wise.describe()


def test_the_scored_set_never_enters_the_choice(family):
    """Two scored sets with different answers and prompts, one learning split: the same baselines."""
    experts, merge = family
    picks = []
    for scored in (_scored("y"), _scored("答え: z", ("7+7=", "qq", "hello there"))):
        evaluator = Evaluator(scored, experts)
        _, choices = baselines.compare_fairly(evaluator, "samerging", lambda: merge(
            baselines.task_arithmetic_settings([0.5, 0.5])), merge, 2, LEARNING)
        picks.append({name: c.settings for name, c in choices.items()})
    assert picks[0] == picks[1]


def test_without_a_learning_split_the_baselines_are_fixed_and_say_so(family):
    experts, merge = family
    evaluator = Evaluator(_scored("y"), experts)
    scores, choices = baselines.compare_fairly(evaluator, "samerging", lambda: merge(
        baselines.task_arithmetic_settings([0.5, 0.5])), merge, 2, None)
    assert list(scores) == ["learned (samerging)", baselines.UNIFORM, baselines.TIES]
    assert all("fixed" in c.describe() for c in choices.values())
    assert torch.equal(torch.tensor(choices[baselines.UNIFORM].settings["weights"]), torch.tensor([0.5, 0.5]))


def test_the_learned_merge_is_said_to_beat_task_arithmetic_only_when_its_interval_excludes_0():
    from evaluation.stats import Interval, ScoredSetError

    def error(difference):
        return ScoredSetError("learned (samerging)", paired={baselines.UNIFORM: {"agreement": difference}})

    reason = baselines.WHY_NOT["samerging"]
    assert baselines.why_not_better("samerging", error(Interval(0.04, 0.01, 0.07, 40))) is None  # established
    assert baselines.why_not_better("samerging", error(Interval(0.04, -0.01, 0.09, 40))) == reason  # a higher mean
    assert baselines.why_not_better("samerging", error(Interval(-0.04, -0.07, -0.01, 40))) == reason
    assert baselines.why_not_better("samerging", error(None)) is None  # no agreement to compare


def test_the_comparisons_error_pairs_the_learned_merge_with_each_baseline_on_the_scored_examples(family):
    """The paired differences are the differences of the table's means; a "learned" merge that is the uniform
    baseline itself differs from it by exactly 0, with no width."""
    experts, merge = family
    evaluator = Evaluator(_scored("y"), experts)
    choices = baselines.choose_baselines(baselines.learning_selector(evaluator, LEARNING), merge, 2)
    scores = baselines.compare_with_baselines(evaluator, "samerging", lambda: merge(
        choices[baselines.UNIFORM].settings), merge, choices)
    error = baselines.comparison_error(evaluator, "samerging", scores)
    assert set(error.halfwidth) == set(scores) and list(error.paired) == list(scores)[1:]
    learned = scores["learned (samerging)"]
    for name, diffs in error.paired.items():
        for metric, difference in diffs.items():
            if learned.mean(metric) is None:
                assert difference is None
            else:
                assert difference.mean == pytest.approx(learned.mean(metric) - scores[name].mean(metric))
    itself = [d for d in error.paired[baselines.UNIFORM].values() if d is not None]
    assert itself and all((d.mean, d.low, d.high) == (0.0, 0.0, 0.0) for d in itself)
    assert baselines.why_not_better("samerging", error) == baselines.WHY_NOT["samerging"]
