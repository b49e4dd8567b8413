"""The project's promises about itself: README's two commands, CI running exactly the test command, pins."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)]


def test_readme_opens_with_app_then_test_command():
    commands = readme_commands()
    assert len(commands) >= 2, "README.md must start with two bash blocks: run the app, run the tests"
    app_cmd, test_cmd = commands[0], commands[1]
    assert "app.py" in app_cmd and "requirements.txt" in app_cmd
    assert "pytest" in test_cmd


def test_ci_runs_readme_test_command_verbatim():
    test_cmd = readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd in ci.splitlines(), ".ci/run must run README's test command exactly as written"
    assert "set -euo pipefail" in ci, ".ci/run must fail when a step fails"


def test_torch_pinned_to_the_cpu_wheel_on_disk():
    reqs = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "torch==2.13.0" in reqs, "a bare torch pulls a multi-GB CUDA build on CPU machines"


def test_no_pickle_checkpoints_shipped():
    shipped = [p for p in (ROOT / "assets").rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert not shipped, f"ship safetensors only, found: {shipped}"
