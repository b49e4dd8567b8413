"""Agreement of a (merged) model with the experts it came from, and accuracy where answers are known.

Per task: `agreement` = share of the examples the task's own expert answered on which the model gives the same
extracted answer (`agreement_share`: "no answer" never counts as agreeing, also when both give none; a model that
gives no answer where the expert gave one disagrees); `accuracy` over the examples with a known answer; `normalized_accuracy` = accuracy / the owning expert's accuracy (for a composite task, with no owner,
over the best source's accuracy). LM tasks also get agreement and accuracy against EVERY source expert
(`agreement_by_source`), for the per-task bar chart. A task whose file asks for Japanese replies
(`"reply_language": "ja"`) also gets `japanese_accuracy`: accuracy where a reply not in Japanese counts as no answer
(evaluation.answers.is_japanese_reply), as Sakana counts MGSM-JA. Classification tasks are read through the task's own head:
the merged backbone is loaded into a copy of expert t's model, whose head stays its own.

Expert outputs are computed once per Evaluator (and reused across calls, e.g. every point of a sweep); generated
ones are also kept in an AnswerCache keyed by the expert folder's identity, the prompt and the generation settings
(in memory for the process by default; give one with a directory to keep them across processes). Without experts,
only accuracy is scored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedModel

from evaluation.answer_cache import AnswerCache, shared_memory_cache
from evaluation.answers import extract
from evaluation.scoring import (
    Predictions,
    TaskOutputs,
    classify_task,
    expected_answers,
    generate_tasks,
)
from evaluation.tasks import Task, TaskSet
from inference.generation import default_batch_size
from inference.loading import LoadedModel
from merging.errors import CompatibilityError, TaskSetError

# Config fields that must match for two checkpoints to be the same architecture (shape of every tensor follows).
_STRUCTURE = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size")
METRICS = ("agreement", "accuracy", "normalized_accuracy")


@dataclass
class TaskScore:
    task: str
    expert: str | None
    examples: int
    agreement: float | None
    accuracy: float | None
    expert_accuracy: float | None
    normalized_accuracy: float | None
    agreement_by_source: dict[str, float] = field(default_factory=dict)
    accuracy_by_source: dict[str, float] = field(default_factory=dict)
    japanese_accuracy: float | None = None  # replies in Japanese only; None unless the task asks for them


@dataclass
class EvalResult:
    scores: dict[str, TaskScore]
    answers: dict[str, list[str | None]]  # the model's comparable answer per example, by task
    outputs: dict[str, list[str]]  # its raw text (or label name) per example

    def mean(self, metric: str) -> float | None:
        """A metric over tasks: "agreement" | "accuracy" | "normalized_accuracy" (mean over tasks where defined),
        or "<task>.<metric>" for one task."""
        task, _, name = metric.rpartition(".")
        if name not in METRICS:
            raise TaskSetError(f"Unknown metric {metric!r}: use one of {', '.join(METRICS)} or <task>.<metric>.")
        if task:
            if task not in self.scores:
                raise TaskSetError(f"Unknown task {task!r} in metric {metric!r}: tasks are {', '.join(self.scores)}.")
            return getattr(self.scores[task], name)
        values = [getattr(s, name) for s in self.scores.values() if getattr(s, name) is not None]
        return sum(values) / len(values) if values else None

    def summary(self) -> dict[str, float | None]:
        return {metric: self.mean(metric) for metric in METRICS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "tasks": {name: asdict(score) for name, score in self.scores.items()},
            "answers": self.answers,
            "outputs": self.outputs,
        }


def _config(model: PreTrainedModel) -> dict:
    return model.config.to_dict()


def check_same_architecture(reference: PreTrainedModel, other: PreTrainedModel, other_name: str,
                            reference_name: str = "the merged model") -> None:
    """CompatibilityError naming the field where `other` differs from `reference`."""
    check_same_config(_config(reference), _config(other), other_name, reference_name)


def check_same_config(ours: Mapping[str, Any], theirs: Mapping[str, Any], other_name: str,
                      reference_name: str = "the merged model") -> None:
    """check_same_architecture on two configs' dicts (an expert whose model was released keeps its config)."""
    for key in _STRUCTURE:
        if ours.get(key) != theirs.get(key):
            raise CompatibilityError(
                f"Expert {other_name!r} has {key}={theirs.get(key)!r} but {reference_name} has {ours.get(key)!r}: "
                "agreement needs experts of the same architecture as the merged model; pass the experts it was "
                "merged from."
            )


def _backbone_prefix(model: PreTrainedModel) -> str:
    return f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""


def load_state_into(model: PreTrainedModel, state: Mapping[str, torch.Tensor], *, backbone_only: bool) -> None:
    """Copy `state` into `model` in place (no new model). `backbone_only` keeps the model's own head. Every tensor of
    the model that is to be replaced must be in `state` with the same shape."""
    own = model.state_dict()
    prefix = _backbone_prefix(model) if backbone_only else ""
    wanted = [k for k in own if k.startswith(prefix)] if backbone_only else list(own)
    missing = [k for k in wanted if k not in state]
    if missing and not backbone_only:
        # Tied weights (lm_head = embeddings) may be absent from a merged state; anything else must be there.
        tied = {k for k in missing if own[k].data_ptr() in {own[j].data_ptr() for j in own if j in state}}
        missing = [k for k in missing if k not in tied]
    if missing:
        raise CompatibilityError(f"The merged weights lack {len(missing)} tensors of the model (first: {missing[0]!r}): "
                                 "merge models of the same architecture as the experts.")
    for key in wanted:
        if key in state and tuple(state[key].shape) != tuple(own[key].shape):
            raise CompatibilityError(f"Tensor {key!r} has shape {tuple(state[key].shape)} in the merged weights but "
                                     f"{tuple(own[key].shape)} in the experts: merge models of the same architecture.")
    subset = {k: state[k] for k in wanted if k in state}
    with torch.no_grad():
        model.load_state_dict(subset, strict=False)


class Evaluator:
    """Scores models on `tasks` against `experts` (name -> loaded expert). Every expert must share one architecture;
    classification tasks need their expert (its head)."""

    def __init__(self, tasks: TaskSet, experts: Mapping[str, LoadedModel], *, batch_size: int | None = None,
                 template: LoadedModel | None = None, answer_cache: AnswerCache | None = None,
                 scoring_copies: dict[str, PreTrainedModel] | None = None) -> None:
        """`scoring_copies`: the models merged weights are loaded into, shared by evaluators that score one merge at
        a time (a runner's splits): one copy of the model in memory, not one per split."""
        self.tasks = tasks
        self.answer_cache = answer_cache if answer_cache is not None else shared_memory_cache()
        self.experts = dict(experts)
        released = [name for name, e in self.experts.items() if e.model is None]
        if released:
            raise TaskSetError(f"Expert {released[0]!r} was released after its answers were computed "
                               "(Evaluator.release_experts): build every evaluator of these experts before that.")
        self._configs = {name: e.model.config for name, e in self.experts.items()}  # kept when models are released
        self.template = template  # what merged weights are loaded into (default: a copy of an LM expert)
        self.batch_size = batch_size
        self._expert_predictions: dict[str, Predictions] | None = None
        self._scoring_copies: dict[str, PreTrainedModel] = {} if scoring_copies is None else scoring_copies
        self._validate()

    def _validate(self) -> None:
        names = list(self.experts)
        for name in names[1:]:
            check_same_architecture(self.experts[names[0]].model, self.experts[name].model, name,
                                    reference_name=f"expert {names[0]!r}")
        for task in self.tasks.tasks.values():
            if task.expert is not None and self.experts and task.expert not in self.experts:
                raise TaskSetError(f"Task {task.name!r} belongs to expert {task.expert!r}, which was not given: pass "
                                   f"it (experts given: {', '.join(names) or 'none'}).")
            if task.is_classification and task.expert is None:
                raise TaskSetError(f"Classification task {task.name!r} has no expert: its labels are read through "
                                   "its expert's head, so give the task an expert.")
            if task.is_classification and task.expert not in self.experts:
                raise TaskSetError(f"Classification task {task.name!r} is read through the head of expert "
                                   f"{task.expert!r}: pass that expert.")
            if task.is_classification and self.experts[task.expert].kind != "classifier":
                raise TaskSetError(f"Task {task.name!r} classifies texts but expert {task.expert!r} is a language "
                                   "model; give a *ForSequenceClassification expert.")

    # --- expert outputs, computed once ---------------------------------------------------------------------------

    def _sources_for(self, task: Task) -> list[str]:
        """Experts compared on a task: all LM experts for an LM task, only the owner for a classification task."""
        if task.is_classification:
            return [task.expert]
        return [name for name, e in self.experts.items() if e.kind == "lm"]

    def release_experts(self) -> None:
        """For an evaluator that owns its experts (nothing else uses their models): compute their answers on every
        task, make the template (or the first LM expert) itself the model merged weights are loaded into, and each
        classification task's expert its head's (instead of copies: no second model in memory, even for a moment),
        keep the configs and tokenizers, and drop every other reference to the expert models, whose memory is then
        freed. score_state and score give the same numbers as before."""
        if all(e.model is None for e in self.experts.values()):
            return  # released already (a runner warms its scorer before every run)
        self.expert_predictions()
        adopted = {}
        if any(not t.is_classification for t in self.tasks.tasks.values()):
            adopted["__lm__"] = self._lm_template().model
        for task in self.tasks.tasks.values():
            if task.is_classification:
                adopted[f"head:{task.expert}"] = self.experts[task.expert].model
        for key, model in adopted.items():
            if key not in self._scoring_copies:  # made already: by an evaluator sharing them, or a score before
                self._scoring_copies[key] = model.eval()
        self.experts = {name: replace(e, model=None) for name, e in self.experts.items()}
        if self.template is not None:
            self.template = replace(self.template, model=None)

    def expert_predictions(self) -> dict[str, Predictions]:
        if self._expert_predictions is None:
            predictions = {name: Predictions() for name in self.experts}
            for name, expert in self.experts.items():
                mine = [t for t in self.tasks.tasks.values() if name in self._sources_for(t)]
                key = self.answer_cache.model_key(expert)
                predictions[name].tasks.update(self._run(expert.model, expert.tokenizer, mine, key))
            self._expert_predictions = predictions
        return self._expert_predictions

    def _batch_size(self, model: PreTrainedModel) -> int:
        return self.batch_size or default_batch_size(model)

    def _run(self, model: PreTrainedModel, tokenizer, tasks: list[Task], cache_key: str | None = None
             ) -> dict[str, TaskOutputs]:
        size = self._batch_size(model)
        outputs = {t.name: classify_task(model, tokenizer, t, batch_size=size) for t in tasks if t.is_classification}
        outputs.update(generate_tasks(model, tokenizer, [t for t in tasks if not t.is_classification], batch_size=size,
                                      cache=self.answer_cache, model_key=cache_key))
        return outputs

    # --- scoring ---------------------------------------------------------------------------------------------------

    def score(self, merged: LoadedModel) -> EvalResult:
        """Score a loaded model. For classification tasks its backbone is read through each task expert's head."""
        for name, config in self._configs.items():
            check_same_config(_config(merged.model), config.to_dict(), name)
        needs_state = any(t.is_classification for t in self.tasks.tasks.values())
        return self._score(merged, merged.model.state_dict() if needs_state else None)

    def score_state(self, state: Mapping[str, torch.Tensor]) -> EvalResult:
        """Score merged weights (a state dict, e.g. from LiveMerger.merge) by loading them into one scoring copy of
        the model (one per task head for classifiers), made once and reused: no reloads."""
        merged = None
        if any(not t.is_classification for t in self.tasks.tasks.values()):
            template = self._lm_template()
            instance = self._scoring_copy("__lm__", template.model)
            load_state_into(instance, state, backbone_only=False)
            merged = LoadedModel(model=instance, tokenizer=template.tokenizer, kind="lm")
        return self._score(merged, state)

    def _lm_template(self) -> LoadedModel:
        """What generation tasks load merged weights into (a copy of it): the template, else the first LM expert."""
        template = self.template or next((e for e in self.experts.values() if e.kind == "lm"), None)
        if template is None:
            raise TaskSetError("Scoring merged weights on generation tasks needs a language-model expert or a "
                               "template model to load them into; pass one.")
        return template

    def _scoring_copy(self, key: str, template: PreTrainedModel | None) -> PreTrainedModel:
        """The model merged weights are loaded into for `key`, copied from `template` once (None once released)."""
        if key not in self._scoring_copies:
            if template is None:
                raise TaskSetError(f"No scoring model {key!r} was made before the experts were released: release "
                                   "them after the evaluator has every task it scores.")
            self._scoring_copies[key] = copy.deepcopy(template).eval()
        return self._scoring_copies[key]

    def _classifier_outputs(self, task: Task, state: Mapping[str, torch.Tensor]) -> TaskOutputs:
        expert = self.experts[task.expert]
        instance = self._scoring_copy(f"head:{task.expert}", expert.model)
        load_state_into(instance, _as_backbone_state(state, instance), backbone_only=True)  # a copy of the expert
        return classify_task(instance, expert.tokenizer, task, batch_size=self._batch_size(instance))

    def _score(self, merged: LoadedModel | None, classifier_state: Mapping[str, torch.Tensor] | None) -> EvalResult:
        experts = self.expert_predictions()
        generated = {}
        lm_tasks = [t for t in self.tasks.tasks.values() if not t.is_classification]
        if lm_tasks:
            generated = generate_tasks(merged.model, merged.tokenizer, lm_tasks,
                                       batch_size=self._batch_size(merged.model))
        scores, answers, outputs = {}, {}, {}
        for task in self.tasks.tasks.values():
            if task.is_classification:
                if classifier_state is None:
                    raise CompatibilityError(f"Task {task.name!r} classifies texts, but the model has no encoder "
                                             "weights to read through the expert heads.")
                ours = self._classifier_outputs(task, classifier_state)
            else:
                ours = generated[task.name]
            answers[task.name], outputs[task.name] = ours.answers, ours.raw
            scores[task.name] = self._task_score(task, ours, experts)
        return EvalResult(scores=scores, answers=answers, outputs=outputs)

    def _expected(self, task: Task) -> list[str | None]:
        """The task's true answers as comparable answers (a classifier's labels as its expert's head ids)."""
        label2id = None
        if task.is_classification:
            label2id = getattr(self._configs[task.expert], "label2id", None)
        return expected_answers(task, label2id)

    def outcomes(self, result: EvalResult) -> dict[str, dict[str, list[bool]]]:
        """Example by example, what `result`'s shares are shares of: {"accuracy": {task: right or not, over the
        examples with a known answer}, "agreement": {task: same answer as the task's expert or not, over the examples
        the expert answered ("no answer" never agrees)}}; only tasks where the metric is defined. Two results of this
        evaluator list the same examples in the same order, so they can be compared pair by pair
        (evaluation.stats.paired_share_difference)."""
        experts = self.expert_predictions()
        accuracy_, agreement_ = {}, {}
        for task in self.tasks.tasks.values():
            ours = result.answers[task.name]
            known = [a == e for a, e in zip(ours, self._expected(task), strict=True) if e is not None]
            if known:
                accuracy_[task.name] = known
            if task.expert in experts:  # without experts, accuracy only
                theirs = experts[task.expert].tasks[task.name].answers
                answered = [a == b for a, b in zip(ours, theirs, strict=True) if b is not None]
                if answered:
                    agreement_[task.name] = answered
        return {"accuracy": accuracy_, "agreement": agreement_}

    def _task_score(self, task: Task, ours: TaskOutputs, experts: dict[str, Predictions]) -> TaskScore:
        expected = self._expected(task)
        agreement_by_source, accuracy_by_source = {}, {}
        for name in self._sources_for(task):
            theirs = experts[name].tasks[task.name].answers
            source_agreement = agreement_share(ours.answers, theirs)
            if source_agreement is not None:  # an expert that answered nothing has nothing to agree with
                agreement_by_source[name] = source_agreement
            source_accuracy = accuracy(theirs, expected)
            if source_accuracy is not None:
                accuracy_by_source[name] = source_accuracy
        own_accuracy = accuracy(ours.answers, expected)
        if task.expert is not None:
            expert_accuracy = accuracy_by_source.get(task.expert)
        else:
            expert_accuracy = max(accuracy_by_source.values(), default=None)
        normalized = own_accuracy / expert_accuracy if own_accuracy is not None and expert_accuracy else None
        return TaskScore(
            task=task.name, expert=task.expert, examples=len(task.examples),
            agreement=agreement_by_source.get(task.expert) if task.expert else None,
            accuracy=own_accuracy, expert_accuracy=expert_accuracy, normalized_accuracy=normalized,
            agreement_by_source=agreement_by_source, accuracy_by_source=accuracy_by_source,
            japanese_accuracy=japanese_accuracy(task, ours, expected),
        )


def compare_merges(evaluator: Evaluator, merges: Mapping[str, Callable[[], Mapping[str, torch.Tensor]]]
                   ) -> dict[str, EvalResult]:
    """Several merges scored on the same tasks by one evaluator (the experts' answers shared), e.g. a learned merge
    beside task arithmetic and TIES. Each merge is built (`merges[name]()` returns its weights) just before it is
    scored, so one set of merged weights is in memory at a time."""
    return {name: evaluator.score_state(build()) for name, build in merges.items()}


def _as_backbone_state(state: Mapping[str, torch.Tensor], expert: PreTrainedModel) -> Mapping[str, torch.Tensor]:
    """Names as the expert's state has them. A merged state from a bare encoder (no "bert." prefix) gets it."""
    prefix = _backbone_prefix(expert)
    if not prefix or any(k.startswith(prefix) for k in state):
        return state
    return {prefix + k: v for k, v in state.items()}


def agreement_share(ours: list[str | None], theirs: list[str | None]) -> float | None:
    """Share of the examples `theirs` (the reference expert) answered on which `ours` gives the same answer; None
    when the expert answered none. "No answer" is never agreement: positions where the expert gave none are left
    out (there is nothing to agree with), and None from `ours` where the expert answered is a disagreement."""
    answered = [(a, b) for a, b in zip(ours, theirs, strict=True) if b is not None]
    if not answered:
        return None
    return sum(a == b for a, b in answered) / len(answered)


def japanese_accuracy(task: Task, ours: TaskOutputs, expected: list[str | None]) -> float | None:
    """Accuracy counting an answer only where the reply is in Japanese; None unless the task asks for Japanese
    replies (generated tasks only: a classifier has no reply)."""
    if task.reply_language != "ja" or task.is_classification:
        return None
    return accuracy([extract(raw, task.answer_type, require_japanese=True) for raw in ours.raw], expected)


def accuracy(answers: list[str | None], expected: list[str | None]) -> float | None:
    """Share of correct answers over the examples whose answer is known (None where none is)."""
    known = [(a, e) for a, e in zip(answers, expected, strict=True) if e is not None]
    if not known:
        return None
    return sum(a == e for a, e in known) / len(known)
