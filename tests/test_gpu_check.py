"""bench/gpu_check.py, the one-process GPU check of issue 19, rehearsed on the CPU so the GPU run is never the first
time its code runs: the script runs as a user runs it (a subprocess) and its table is checked row by row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_step_on_the_cpu_and_prints_its_table(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--shape", "tiny", "--points", "2",
         "--workdir", str(tmp_path / "work")],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    start = lines.index("| step | what | seconds | peak memory GB | note |")
    end = lines.index("", start)  # the table, not the rows for docs/benchmarks.md printed after it
    rows: dict[str, list[list[str]]] = {}
    for line in lines[start + 2:end]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.setdefault(cells[0], []).append(cells)
    assert "FAILED" not in done.stdout
    assert rows["plan"][0][1] == "live memory plan: on"
    live = {cells[1].split()[0]: float(cells[2]) for cells in rows["live"]}
    assert set(live) == {"task_arithmetic", "ties", "dare_ties"} and all(s > 0 for s in live.values())
    assert any("generate_batch: 32 prompts x 8 new tokens, batch 32" in c[1] for c in rows["score"])
    assert any("static KV cache" in c[1] for c in rows["score"])
    assert "2-point weight sweep" in rows["sweep"][0][1] and float(rows["sweep"][0][2]) > 0
    folder = rows["folder"]
    assert "python -m merging run --device cpu" in folder[0][1] and "the I/O floor" in folder[0][4]
    assert (tmp_path / "work" / "merged" / "config.json").is_file()  # the CLI wrote a finished folder
    assert [c[4].startswith("skipped: bitsandbytes loading needs a CUDA GPU") for c in rows["8bit"] + rows["4bit"]] \
        == [True, True]
    assert "Rows for docs/benchmarks.md" in done.stdout
    assert lines[end + 3:end + 3 + len(lines[start + 2:end])] == lines[start + 2:end]  # the same rows, for the docs
