# ruff: noqa: F811 - the walkthrough's fixtures are imported by name and used as test parameters
"""Issue 20 in a real browser (Debian's chromium driven by Playwright) on the tiny zoo, kept small: nothing stale or
silent (Chat opens beside the first expert and labels the merge's answers with the merge number; a method switch
re-merges and TIES starts trimming; Evaluate merges first and names the merge it scored), the teacher's Lesson tab,
and Learn's estimate before a run. Screenshots go to test-artifacts/ (docs/screenshots/ holds a reviewed set)."""

from __future__ import annotations

import re

import pytest

from tests.browser.test_walkthrough import (  # noqa: F401 - the fixtures: the app on the tiny zoo, chromium, a tab
    app_url,
    browser,
    choose,
    no_error_badges,
    page,
    shot,
)

pytestmark = pytest.mark.browser


def test_chat_first_opens_beside_the_first_expert_and_labels_the_merge(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Chat").click()
    expect(page.locator("#chat-compare-model input")).to_have_value("math")  # not "(none)"
    page.locator("#chat-message textarea").fill("13+6=")
    page.locator("#chat-send").click()
    merged = page.locator("#chat-merged [data-testid='bot']").first
    expect(merged).to_contain_text(re.compile(r"答え.*merge #\d+", re.DOTALL))  # an answer, labelled with its merge
    expect(page.locator("#chat-compare [data-testid='bot']").first).to_contain_text(re.compile(r"\S"))
    no_error_badges(page, "chat-merged", "chat-compare")
    shot(page, "3-chat")


def test_a_method_switch_re_merges_and_ties_starts_trimming(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Merge").click()
    status = page.locator("#merge-status")
    choose(page, "merge-method", "task_arithmetic")
    expect(status).to_contain_text("Merged with task_arithmetic")  # no Merge press needed
    choose(page, "merge-method", "ties")
    expect(page.locator("#param-density input[type=number]")).to_have_value("0.5")  # not 1: trimming from the start
    expect(status).to_contain_text("ties")
    expect(status).to_contain_text("density=0.5")


def test_evaluate_before_any_merge_merges_and_names_the_merge(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-per-task input[type=number]").fill("5")
    page.locator("#eval-per-task input[type=number]").press("Enter")
    page.locator("#eval-run").click()
    status = page.locator("#eval-status")
    expect(status).to_contain_text("✓ Evaluated the current merge #")
    expect(status).to_contain_text("merged the Merge tab's settings first")
    expect(page.locator("#eval-chart .gtitle")).to_contain_text(re.compile(r"merge #\d+"))
    no_error_badges(page, "eval-status", "eval-chart")
    shot(page, "4-evaluate")


def test_the_teacher_shows_the_lesson_and_interference_reads(page):
    from playwright.sync_api import expect

    # The lesson's worked example follows the current merge: the teacher merges with TIES to show sign election.
    page.get_by_role("tab", name="Merge").click()
    choose(page, "merge-method", "ties")
    expect(page.locator("#merge-status")).to_contain_text("Merged with ties")
    page.get_by_role("tab", name="Interference").click()
    page.locator("#interference-run").click()
    expect(page.locator("#interference-conflicts .gtitle")).to_contain_text("Sign conflict rate")
    shot(page, "5-interference")
    page.get_by_role("tab", name="Lesson").click()
    page.locator("#lesson-run").click()
    expect(page.locator("#lesson-conflicts .gtitle")).to_contain_text("Where the experts disagree")
    expect(page.locator("#lesson-conflicts")).to_contain_text("unrelated random vectors")
    example = page.locator("#lesson-example")
    expect(example).to_contain_text("conflict")
    expect(example).to_contain_text("merged by ties")
    expect(example).to_contain_text("elected sign")
    page.locator("#lesson-score-run").click()
    expect(page.locator("#lesson-score")).to_contain_text(re.compile(r"merge #\d+"))
    expect(page.locator("#lesson-score")).to_contain_text("its expert")
    no_error_badges(page, "lesson-conflicts", "lesson-example", "lesson-score")
    shot(page, "7-lesson")


def test_learn_says_how_long_before_it_starts(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Learn").click()
    estimate = page.locator("#learn-estimate")
    expect(estimate).to_contain_text("Expected on this CPU")
    expect(estimate).to_contain_text("GPU")
    box = page.locator("#learn-steps input[type=number]")
    box.fill("5")
    box.press("Enter")
    expect(estimate).to_contain_text("5 steps")
    page.locator("#learn-run").click()
    expect(page.locator("#learn-status")).to_contain_text("Learned")
    shot(page, "6-learn")
