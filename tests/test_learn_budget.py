"""merging.learned.budget: Learn's defaults sized to the models and the device, the estimate shown before a run, and
the Learn tab's use of them (on the tiny LM zoo)."""

from __future__ import annotations

import pytest

from merging.learned import budget
from ui import learn_panel, models_panel
from ui.hosting import HostConfig
from ui.session import new_session

SMOLLM2_PARAMETERS = 134_515_008  # SmolLM2-135M-Instruct, tied embeddings counted once


def test_the_default_learn_on_smollm2_fits_five_minutes_of_cpu_and_says_so():
    sized = budget.sized_defaults(SMOLLM2_PARAMETERS, 3, "samerging", "cpu")
    assert sized.total_s * 1.85 <= 5 * 60  # within 5 minutes even at the slowdown measured on a busy machine
    assert sized.steps >= budget.MIN_STEPS and sized.examples_per_task >= budget.MIN_EXAMPLES
    assert sized.steps // sized.eval_every >= 5  # early stopping can act within the run
    old = budget.estimate(SMOLLM2_PARAMETERS, 3, 16, 200, "samerging", "cpu")  # the defaults the issue met
    assert old.total_s > 3600  # about 1.5 h, as measured; the estimate says so before it starts
    gpu = budget.sized_defaults(SMOLLM2_PARAMETERS, 3, "samerging", "cuda")
    assert gpu.steps >= sized.steps and gpu.examples_per_task >= sized.examples_per_task
    assert budget.estimate(SMOLLM2_PARAMETERS, 3, sized.examples_per_task, sized.steps, "samerging",
                           "cuda").total_s < sized.total_s / 10


def test_estimates_grow_with_the_work_and_adamerging_costs_less():
    small = budget.estimate(SMOLLM2_PARAMETERS, 2, 8, 20, "samerging", "cpu")
    assert budget.estimate(SMOLLM2_PARAMETERS, 3, 8, 20, "samerging", "cpu").total_s > small.total_s
    assert budget.estimate(SMOLLM2_PARAMETERS, 2, 16, 20, "samerging", "cpu").total_s > small.total_s
    assert budget.estimate(SMOLLM2_PARAMETERS, 2, 8, 40, "samerging", "cpu").total_s > small.total_s
    assert budget.estimate(SMOLLM2_PARAMETERS, 2, 8, 20, "adamerging", "cpu").step_s < small.step_s
    assert budget.train_batch(16) == 12 and budget.train_batch(4) == 3 and budget.train_batch(1) == 1


def test_eta_and_durations_read_as_a_person_would():
    assert budget.eta_seconds(0, 20, 5.0) is None
    assert budget.eta_seconds(5, 20, 10.0) == pytest.approx(30.0)
    assert [budget.duration_text(s) for s in (12, 200, 3900)] == ["12 s", "3 min 20 s", "1 h 5 min"]


def test_opening_learn_sizes_its_controls_once_per_choice_of_models(tmp_path):
    config = HostConfig.detect(hosted=False, models_dir=tmp_path / "models")
    session = new_session()
    models_panel.check_models(session, config, models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", ""))
    sized = learn_panel.sizing_for(session)
    examples, steps, text, key = learn_panel.sized_controls(session, "", "samerging", 2, 3, 0.05, 0.3, True)
    assert (examples["value"], steps["value"]) == (sized.examples_per_task, sized.steps)
    shown = learn_panel.sized_controls(session, "", "samerging", sized.examples_per_task, sized.steps, 0.05, 0.3, True)
    assert "value" not in shown[0] and "value" not in shown[1]  # nothing sent that could overwrite typing
    assert "Expected on this CPU" in text and "GPU" in text and key
    again = learn_panel.sized_controls(session, key, "samerging", 5, 30, 0.05, 0.3, True)
    assert "value" not in again[0] and "value" not in again[1]  # the user's values stay
    assert "Steps must be" in learn_panel.estimate_for(session, "samerging", 16, 0, 0.05, 0.3, True)
