"""Writing an evaluation result: the JSON file and a CSV of per-task scores beside it, as both the command line
(`python -m evaluation run`) and the Evaluate tab's downloads write them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("task", "expert", "examples", "agreement", "accuracy", "expert_accuracy", "normalized_accuracy",
               "japanese_accuracy")  # the last: Japanese replies only, empty unless the task asks for them


def score_rows(result: dict[str, Any]) -> list[list[Any]]:
    """One row per task (CSV_COLUMNS) from an EvalResult's `to_dict()` (or anything with its "tasks")."""
    return [[name, s["expert"] or "", s["examples"], s["agreement"], s["accuracy"], s["expert_accuracy"],
             s["normalized_accuracy"], s.get("japanese_accuracy")] for name, s in result["tasks"].items()]


def write_results(json_path: str | Path, data: dict[str, Any]) -> dict[str, Path]:
    """`data` (an EvalResult's dict plus whatever the caller adds: model, recipe, questions) as JSON at
    `json_path`, and its per-task scores as CSV beside it (same name, .csv). Returns {"json": path, "csv": path}."""
    json_file = Path(json_path)
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    csv_file = json_file.with_suffix(".csv")
    with csv_file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(score_rows(data))
    return {"json": json_file, "csv": csv_file}
