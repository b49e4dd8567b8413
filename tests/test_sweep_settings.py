"""Sweeps of the Merge panel's settings: which settings an axis varies, the axes a method starts with, and that a
grid point is the base settings with exactly its axes changed (so a kept point merges to what was scored)."""

from __future__ import annotations

import pytest

from evaluation.axes import apply_axis, axis_choices, default_axes
from evaluation.errors import SweepError
from evaluation.sweep import settings_grid

SOURCES = ["math", "japanese"]
BASE = {"method": "ties", "weights": [0.5, 0.5], "params": {"density": 0.5, "normalize": True}, "seed": 3}


def test_axis_choices_are_the_methods_own_numeric_settings():
    assert axis_choices("ties", SOURCES) == ["weight", "weight:math", "weight:japanese", "density", "lambda"]
    assert axis_choices("slerp", SOURCES) == ["t"]
    assert axis_choices("sce", SOURCES) == ["select_topk"]
    assert axis_choices("model_stock", SOURCES) == []


@pytest.mark.parametrize(("method", "params", "axes"), [
    ("ties", {"normalize": True}, ("weight", "density")),  # weight x density for every method with a density
    ("dare_ties", {}, ("weight", "density")),
    ("della", {}, ("weight", "density")),
    ("ties", {"normalize": False}, ("weight", "density")),
    ("task_arithmetic", {}, ("weight:math", "weight:japanese")),  # no density: one source against the other
    ("slerp", {}, ("t", None)),
    ("sce", {}, ("select_topk", None)),
])
def test_default_axes(method, params, axes):
    assert default_axes(method, params, SOURCES) == axes


def test_grid_points_change_only_their_axes():
    points = settings_grid(BASE, SOURCES, "weight:japanese", [0.2, 0.8], "density", [0.3])
    assert [(r, c) for r, c, _ in points] == [(0.2, 0.3), (0.8, 0.3)]
    first = points[0][2]
    assert first == {"method": "ties", "weights": [0.5, 0.2], "params": {"density": 0.3, "normalize": True},
                     "seed": 3}
    assert BASE["weights"] == [0.5, 0.5] and BASE["params"]["density"] == 0.5  # the base is left alone
    shared = apply_axis(BASE, "weight", 0.7, SOURCES)
    assert shared["weights"] == [0.7, 0.7]
    assert shared["params"]["normalize"] is False  # else equal weights divide out and the axis changes nothing


def test_bad_axes_say_what_to_choose():
    with pytest.raises(SweepError, match="both vary"):
        settings_grid(BASE, SOURCES, "density", [0.5], "density", [0.5])
    with pytest.raises(SweepError, match="choose one of"):
        settings_grid(BASE, SOURCES, "t", [0.5])
