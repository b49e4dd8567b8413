"""Evaluation: task sets, answer extraction, agreement with experts, interference between task vectors, sweeps,
plotly figures; `python -m evaluation`."""

from evaluation.answers import canonical_number, extract, extract_answer, extract_equation_answer, extract_text_answer
from evaluation.tasks import Example, Task, TaskSet, load_tasks, tasks_from_records

__all__ = [
    "Example", "Task", "TaskSet", "canonical_number", "extract", "extract_answer", "extract_equation_answer",
    "extract_text_answer", "load_tasks", "tasks_from_records",
]
