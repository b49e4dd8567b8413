# ruff: noqa: F811 - the walkthrough's fixtures are imported by name and used as test parameters
"""Issue 20's student and teacher on the real default family (SmolLM2-135M and its LoRA experts, built on first use
by tests/conftest.py `smollm2_family`), kept small: a 1 x 2 TIES grid (5 prompts a task) scored on japanese_math alone, filling in, with its
per-task CSV; the Lesson from the two experts' task vectors to the merge's score beside each expert's."""

from __future__ import annotations

import csv
import io
import re

import pytest

from tests.browser.test_walkthrough import (  # noqa: F401 - chromium and the page helpers
    WORK,
    app_on_preset,
    browser,
    choose,
    fetch_file,
    no_error_badges,
    shot,
)

pytestmark = pytest.mark.browser
REAL_PRESET = "SmolLM2-135M · math + japanese"


@pytest.fixture(scope="module")
def real_url(smollm2_family, tmp_path_factory):
    """The app on the SmolLM2 preset (the catalog's default), the family already built."""
    with app_on_preset(REAL_PRESET, tmp_path_factory.mktemp("models")) as url:
        yield url


@pytest.fixture
def real_page(browser, real_url):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(180_000)  # a click may wait on a busy 2-core server
    page.goto(real_url)
    expect(page.locator("#preflight-report")).to_contain_text("ready to merge", timeout=WORK)
    yield page
    page.close()


def test_the_student_sweeps_japanese_math_alone_and_downloads_the_grid(real_page):
    from playwright.sync_api import expect

    page = real_page
    page.get_by_role("tab", name="Evaluate").click()
    choose(page, "sweep-method", "ties")
    expect(page.locator("#sweep-rows input")).to_have_value(re.compile("weight"))  # weight x density for TIES
    expect(page.locator("#sweep-columns input")).to_have_value("density")
    metric = page.locator("#sweep-metric input")
    metric.fill("japanese_math.accuracy")
    metric.press("Enter")
    page.locator("#eval-per-task input[type=number]").fill("5")  # the fewest the control takes
    page.locator("#eval-per-task input[type=number]").press("Enter")
    for elem, grid in (("sweep-weights", "0.7"), ("sweep-densities", "0.3,0.7")):
        page.locator(f"#{elem} textarea, #{elem} input").first.fill(grid)
    page.locator("#sweep-run").click()
    # a best point, or why there is none (both points at the same share, 0 % say, star neither)
    expect(page.locator("#sweep-best")).to_contain_text(re.compile(r"Best|No best point"), timeout=WORK)
    expect(page.locator("#sweep-chart .gtitle")).to_contain_text("japanese_math")
    rows = list(csv.DictReader(io.StringIO(fetch_file(page, "sweep-files", ".tasks.csv"))))
    assert len(rows) == 2, rows  # one row a point
    assert any("japanese_math" in column for column in rows[0]), list(rows[0])  # a column per task
    no_error_badges(page, "sweep-best", "sweep-chart")
    shot(page, "real-sweep")


def test_the_teacher_walks_the_lesson_on_the_real_family(real_page):
    from playwright.sync_api import expect

    page = real_page
    page.get_by_role("tab", name="Evaluate").click()  # the lesson scores with the Evaluate tab's examples per task
    page.locator("#eval-per-task input[type=number]").fill("5")
    page.locator("#eval-per-task input[type=number]").press("Enter")
    page.get_by_role("tab", name="Lesson").click()
    page.locator("#lesson-run").click()
    expect(page.locator("#lesson-conflicts")).to_contain_text("unrelated random vectors", timeout=WORK)
    # this family's experts change disjoint layers (japanese 0-9, math 10-29): no entry can conflict, and the
    # lesson says so where the worked example would stand
    expect(page.locator("#lesson-conflicts")).to_contain_text("nothing can conflict")
    example = page.locator("#lesson-example")
    expect(example).to_contain_text("No weight is changed by two experts")
    expect(example).to_contain_text("math changes layers 10-29; japanese changes layers 0-9")
    page.locator("#lesson-score-run").click()
    score = page.locator("#lesson-score")
    expect(score).to_contain_text(re.compile(r"merge #\d+"), timeout=WORK)
    expect(score).to_contain_text("5 examples a task")
    for task in ("math", "japanese"):
        expect(score).to_contain_text(task)
    no_error_badges(page, "lesson-conflicts", "lesson-example", "lesson-score")
    shot(page, "real-lesson")
