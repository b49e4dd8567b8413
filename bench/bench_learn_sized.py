"""The Learn tab's default run on the default preset (the SmolLM2 family), as a visitor starts it: the controls sized
by merging.learned.budget, the estimate shown before the run, and the time it actually took (preparation, steps,
early stop). Never run in CI (minutes of CPU): run it under the heavy-job lock.

    .venv/bin/python bench/bench_learn_sized.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import machine  # bench/machine.py (this folder is on sys.path when a script runs)

from merging.learned import budget
from ui import learn_panel, models_panel
from ui.hosting import HostConfig
from ui.session import new_session


def main() -> None:
    config = HostConfig.detect(hosted=False, models_dir=Path(tempfile.mkdtemp(prefix="bench-learn-")))
    session = new_session()
    name = models_panel.default_preset_name()
    models_panel.check_models(session, config, models_panel.preset_choice(models_panel.get_preset(name)), name)
    sized = learn_panel.sizing_for(session)
    settings = learn_panel.LearnSettings("samerging", sized.examples_per_task, sized.steps)
    print(f"# {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; preset {name}, {len(session.sources)} experts")
    print(f"sized: {sized}")
    print(learn_panel.estimate_markdown(session, settings))
    started = time.perf_counter()
    first_step = None
    for _, _, status in learn_panel.learn(session, config, settings):
        if first_step is None and status.startswith("Step"):
            first_step = time.perf_counter() - started
        print(f"{time.perf_counter() - started:7.1f} s  {status[:160]}", flush=True)
    total = time.perf_counter() - started
    print(f"| estimate {budget.duration_text(sized.total_s)} | took {budget.duration_text(total)} (first step "
          f"after {budget.duration_text(first_step or 0)}) |")

if __name__ == "__main__":
    main()
