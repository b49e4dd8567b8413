"""Streaming merge to a Hugging Face model folder.

Three stages run at once, joined by small bounded queues so memory stays at a few tensors per input:
  reader thread  -> reads tensor k+1 (and k+2) of every input from memory-mapped safetensors, moves it to the device;
  calling thread -> merges tensor k with the method from the registry, casts it to the output dtype;
  writer thread  -> appends tensor k-1 to its planned safetensors shard (headers are planned up front).
The folder is built under a hidden temporary sibling (`.OUT.incomplete-<pid>`, config.json written last) and renamed
into place only when complete, so a failed, cancelled or killed merge never leaves something that looks like a model.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from merging.cancel import CancelFlag, cancellable, is_set
from merging.checks import OutputFolderError, output_folder_problem, output_write_error
from merging.errors import CompatibilityError, MergeCancelled, MergeLabError
from merging.export import MERGEKIT_FILE, MERGELAB_FILE, mergekit_export
from merging.inputs import MergeInputs, TaskHeads, fit_rows, is_vocab_mismatch, open_inputs, task_heads
from merging.methods.chunks import compute_threads, spare_cores
from merging.plan import (
    PREFETCH_TENSORS,
    WRITE_BEHIND_TENSORS,
    TensorPlan,
    dominant_dtype,
    dtype_name,
    plan_outputs,
    torch_dtype,
)
from merging.preflight import preflight
from merging.recipe import load_recipe
from merging.shards import PlannedTensor, ShardWriter, parse_size, plan_shards
from merging.step import MergeStep

RECIPE_FILE = MERGELAB_FILE  # the recipe as MergeLab reads it (faithful)
TASKS_DIR = "tasks"  # per-task folders (merged tensors + one expert's head) when the experts have their own heads
MERGEKIT_RECIPE_FILE = MERGEKIT_FILE  # written only when mergekit 0.1.5 can run the recipe (merging/export.py)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "chat_template.jinja", "chat_template.json",
)
# Test-only hook: seconds to sleep per tensor, so a test can kill a merge mid-way.
_DELAY_ENV = "MERGELAB_TEST_TENSOR_DELAY_S"


@dataclass
class MergeProgress:
    """Handed to the progress callback after each tensor."""

    tensor_index: int  # tensors done so far (1..num_tensors)
    num_tensors: int
    tensor_name: str
    bytes_done: int  # input bytes read and merged so far
    bytes_total: int
    elapsed_s: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0


@dataclass
class MergeResult:
    out_dir: Path
    files: list[str]
    num_tensors: int
    bytes_read: int
    bytes_written: int
    seconds: float
    device: str
    out_dtype: str
    notes: list[str] = field(default_factory=list)  # what the merge report should mention (fallbacks, resizes)
    # Busy seconds per stage (they overlap): "read" (reader thread), "merge" (method functions), "write" (writer,
    # including the cast to the output dtype on the CPU).
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Per-task heads: task name -> its loadable folder OUT_DIR/tasks/<task> (merged tensors + that expert's head).
    tasks: dict[str, Path] = field(default_factory=dict)


ProgressFn = Callable[[MergeProgress], None]


def merge_to_folder(
    recipe: Any,
    out_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    seed: int = 0,
    shard_size: str | int = "2GB",
    progress: ProgressFn | None = None,
    cancel: CancelFlag = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    shown_names: Mapping[str, str] | None = None,
) -> MergeResult:
    """Merge `recipe` (a Recipe, a YAML path or YAML text) into a complete model folder at `out_dir`.

    Runs the pre-flight check first and raises CompatibilityError with its errors; raises MergeCancelled (leaving
    nothing behind) when `cancel` is set. `overwrite` replaces an existing non-empty folder only once the new one is
    complete. `shown_names` renames the models in what the folder tells its readers (model card, recipe files):
    model as the recipe names it → the name a reader finds it by (the app gives Hub ids and app-relative paths for
    the folders it read); models not in it keep the recipe's names.
    """
    recipe = _as_recipe(recipe)
    out = Path(out_dir).expanduser().absolute()
    problem = output_folder_problem(out, overwrite=overwrite)
    if problem:
        raise OutputFolderError(problem)
    remove_stale_temps(out.parent)  # before the disk check: killed merges' leftovers may be what fills the disk
    max_shard = parse_size(shard_size)
    device = _check_device(device)
    report = preflight(recipe, out_dir=out, device=device, allow_pickle=allow_pickle)
    if not report.ok:
        raise CompatibilityError("The merge cannot start:\n- " + "\n- ".join(report.errors))

    started = time.perf_counter()
    temp = out.parent / f".{out.name}.incomplete-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    with _nothing_left_on_failure(temp, out):
        temp.mkdir(parents=True)
        with open_inputs(recipe, allow_pickle=allow_pickle) as inputs:
            built = _build_folder(inputs, temp, device=device, seed=seed, max_shard=max_shard, progress=progress,
                                  cancel=cancel, started=started, shown_names=shown_names or {})
        _move_into_place(temp, out, overwrite)
    return MergeResult(
        out_dir=out, files=sorted(p.name for p in out.iterdir()), num_tensors=len(built.plan),
        tasks={name: out / TASKS_DIR / name for name in built.tasks},
        bytes_read=sum(p.bytes_read for p in built.plan),
        bytes_written=sum(p.planned.nbytes for p in built.plan) + _task_bytes(out, built.tasks),
        seconds=time.perf_counter() - started, device=device, out_dtype=dtype_name(built.out_dtype),
        notes=built.notes, stage_seconds={k: round(v, 3) for k, v in built.stages.items()},
    )


@dataclass
class _BuiltFolder:
    """What `_build_folder` wrote, for the MergeResult."""

    plan: list[TensorPlan]
    notes: list[str]
    tasks: list[str]  # per-task folders written (task names)
    out_dtype: torch.dtype
    stages: dict[str, float]


@contextlib.contextmanager
def _nothing_left_on_failure(temp: Path, out: Path) -> Iterator[None]:
    """Remove the temporary folder when anything fails or cancels the merge (Ctrl-C included), so nothing that looks
    like a model is left; an OSError (disk full, read-only folder, a file in the way) becomes a message."""
    try:
        yield
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise output_write_error(exc, out) from exc
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _build_folder(inputs: MergeInputs, folder: Path, *, device: str, seed: int, max_shard: int,
                  progress: ProgressFn | None, cancel: CancelFlag, started: float,
                  shown_names: Mapping[str, str]) -> _BuiltFolder:
    """Write the whole model into `folder`: the merged tensors, the per-task folders (if the experts have their own
    heads), then the side files with config.json last (naming the models by `shown_names`)."""
    plan = plan_outputs(inputs)
    shards = plan_shards([p.planned for p in plan], max_shard)
    stages: dict[str, float] = {"read": 0.0, "merge": 0.0, "write": 0.0}
    with _compute_threads(device), cancellable(cancel):  # reaches loops inside methods (karcher)
        notes = _run_pipeline(inputs, plan, shards, folder, device=device, seed=seed, progress=progress,
                              cancel=cancel, started=started, stages=stages)
    out_dtype = dominant_dtype(plan)
    heads = task_heads(inputs)
    written = _write_task_folders(inputs, heads, plan, shards, folder, out_dtype, max_shard, cancel) \
        if heads is not None else []
    if written:
        notes.append(f"Per-task heads are not merged: each task is read through its own head, in "
                     f"{TASKS_DIR}/<task>/ ({', '.join(written)}).")
    _write_side_files(inputs, folder, out_dtype, shown_names)
    return _BuiltFolder(plan=plan, notes=notes, tasks=written, out_dtype=out_dtype, stages=stages)


def _task_bytes(out: Path, written: list[str]) -> int:
    """Tensor bytes of the per-task folders (safetensors files, headers included)."""
    return sum(f.stat().st_size for name in written for f in (out / TASKS_DIR / name).glob("*.safetensors"))


# --- the pipeline -----------------------------------------------------------------------------------------------


def _run_pipeline(inputs: MergeInputs, plan: list[TensorPlan], shards: list, folder: Path, *, device: str, seed: int,
                  progress: ProgressFn | None, cancel: CancelFlag, started: float,
                  stages: dict[str, float]) -> list[str]:
    """Read, merge and write every planned tensor; returns the methods' notes (deduplicated, in order)."""
    merge = _TensorMerger(inputs, device=device, seed=seed, stages=stages)
    delay = float(os.environ.get(_DELAY_ENV, "0") or 0)
    total = sum(p.bytes_read for p in plan)
    done_bytes = 0
    pipeline = _Pipeline(inputs, plan, shards, folder, device=device, stages=stages)  # threads start here
    try:
        for index, item in enumerate(plan):
            if is_set(cancel):
                raise MergeCancelled("Merge cancelled; no output folder was written.")
            name, merged = _next_merged(pipeline, merge, item, device)
            if delay:
                time.sleep(delay)
            pipeline.write(name, merged, item.planned.dtype)
            done_bytes += item.bytes_read
            if progress is not None:
                progress(_progress(index + 1, len(plan), name, done_bytes, total, started))
        pipeline.finish()
    except BaseException:
        pipeline.abort()
        raise
    finally:
        pipeline.close()
    return list(merge.notes)


def _next_merged(pipeline: _Pipeline, merge: _TensorMerger, item: TensorPlan,
                 device: str) -> tuple[str, torch.Tensor]:
    """The next tensor read, merged (or copied from the donor) and, on a GPU, cast and moved to the host. The inputs
    are released on return, before the merged tensor waits for room in the write queue."""
    name, base, operands = pipeline.next_read()
    merged = merge(name, base, operands, item.planned.dtype) if item.merge else base
    if device != "cpu":  # cast on the GPU, so half the bytes cross to the host
        merged = merged.to(device="cpu", dtype=item.planned.dtype)
    return name, merged


def _progress(done: int, count: int, name: str, done_bytes: int, total: int, started: float) -> MergeProgress:
    elapsed = time.perf_counter() - started
    eta = elapsed / done_bytes * (total - done_bytes) if done_bytes else None
    return MergeProgress(done, count, name, done_bytes, total, elapsed, eta)


class _TensorMerger:
    """The engine's side of the per-tensor step (merging.step.MergeStep: parameters, generator, method call,
    checks): times the method on the device (busy seconds go to stages["merge"]) and keeps the methods' notes."""

    def __init__(self, inputs: MergeInputs, *, device: str, seed: int, stages: dict[str, float]) -> None:
        self.step = MergeStep(inputs.recipe, inputs.donor.num_layers, seed=seed, device=device)
        self.device = device
        self.stages = stages

    @property
    def notes(self) -> list[str]:
        """Each method message once, in the order first seen."""
        return self.step.distinct_notes()

    def __call__(self, name: str, base: torch.Tensor | None, operands: list[torch.Tensor],
                 out_dtype: torch.dtype) -> torch.Tensor:
        tick = time.perf_counter()
        merged = self.step(name, base, operands, out_dtype)
        if self.device != "cpu":
            torch.cuda.synchronize(self.device)
        self.stages["merge"] += time.perf_counter() - tick
        return merged


class _Pipeline:
    """The reader and writer threads around the merging thread, joined by bounded queues (PREFETCH_TENSORS read
    ahead, WRITE_BEHIND_TENSORS waiting to be written). A stage that fails sets `stop`; the merging thread re-raises
    its exception at its next read or write."""

    def __init__(self, inputs: MergeInputs, plan: list[TensorPlan], shards: list, folder: Path, *, device: str,
                 stages: dict[str, float]) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.read_q: queue.Queue = queue.Queue(maxsize=PREFETCH_TENSORS)
        self.write_q: queue.Queue = queue.Queue(maxsize=WRITE_BEHIND_TENSORS)
        self.writer = ShardWriter(folder, shards, metadata={"merged_by": "mergelab"})
        self.reader_thread = self._thread(_read_all, (inputs, plan, device, self.read_q, self.stop, stages),
                                          "mergelab-reader")
        self.writer_thread = self._thread(_write_all, (self.writer, self.write_q, self.stop, stages),
                                          "mergelab-writer")
        self.reader_thread.start()
        self.writer_thread.start()

    def _thread(self, body: Callable[..., None], args: tuple, name: str) -> threading.Thread:
        return threading.Thread(target=_stage, args=(body, args, self.stop, self.errors), name=name, daemon=True)

    def _stopped(self) -> BaseException:
        return self.errors[0] if self.errors else RuntimeError("the merge pipeline stopped unexpectedly")

    def next_read(self) -> tuple[str, torch.Tensor | None, list[torch.Tensor]]:
        """(name, base, operands) of the next tensor, as the reader prepared them."""
        got = _get(self.read_q, self.stop)
        if got is _STOPPED:
            raise self._stopped()
        return got

    def write(self, name: str, tensor: torch.Tensor, dtype: torch.dtype) -> None:
        if not _put(self.write_q, (name, tensor, dtype), self.stop):
            raise self._stopped()

    def finish(self) -> None:
        """Wait for the writer to write everything, then complete the shards."""
        if not _put(self.write_q, _DONE, self.stop):
            raise self._stopped()
        self.writer_thread.join()
        if self.errors:
            raise self.errors[0]
        self.writer.finish()

    def abort(self) -> None:
        """After a failure or cancel: stop the writer and close its shard file (the caller removes the folder)."""
        self.stop.set()
        self.writer_thread.join(timeout=60)
        self.writer.close()

    def close(self) -> None:
        self.stop.set()
        self.reader_thread.join(timeout=60)


def _compute_threads(device: str) -> Any:
    """Thread policy for the merge: on the CPU the method functions get the cores minus one (the reader and writer
    threads are mostly I/O and memory copies, but they need a core), never more than torch already had. One budget
    covers torch's intra-op pool and the methods' chunk workers (merging.methods.chunks), so they do not fight."""
    if device != "cpu":
        return contextlib.nullcontext()
    return compute_threads(min(torch.get_num_threads(), spare_cores()))


def _stage(body: Callable[..., None], args: tuple, stop: threading.Event, errors: list[BaseException]) -> None:
    """Run a pipeline stage in its thread; its exception goes to the merging thread, which re-raises it."""
    try:
        body(*args)
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
        stop.set()


def _read_all(inputs: MergeInputs, plan: list[TensorPlan], device: str, out_q: queue.Queue,
              stop: threading.Event, stages: dict[str, float]) -> None:
    """Read every tensor of every input in plan order, resolve vocabulary rows, and move it to the device."""
    for item in plan:
        name = item.planned.name
        tick = time.perf_counter()
        if item.merge:
            base, operands = _read_tensor(inputs, name, device)
        else:
            base, operands = inputs.donor.get(name), []
        stages["read"] += time.perf_counter() - tick
        if not _put(out_q, (name, base, operands), stop):
            return


def _read_tensor(inputs: MergeInputs, name: str, device: str) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    compute_dtype = torch_dtype(getattr(inputs.recipe, "dtype", None))  # inputs are rounded to it, as in mergekit
    loaded: dict[str, torch.Tensor] = {}  # a model listed twice is read once

    def load(ref: str) -> torch.Tensor:
        if ref not in loaded:
            loaded[ref] = inputs.sources[ref].get(name)
        return loaded[ref]

    rows_donor = load(inputs.tokenizer_ref) if inputs.resolve_vocab and is_vocab_mismatch(inputs, name) else None

    def prepared(ref: str) -> torch.Tensor:
        tensor = load(ref)
        if rows_donor is not None:
            tensor = fit_rows(tensor, rows_donor)
        if compute_dtype is not None:
            tensor = tensor.to(compute_dtype)
        return tensor if device == "cpu" else tensor.to(device, non_blocking=True)

    base = prepared(inputs.base_ref) if inputs.recipe.uses_base() else None
    return base, [prepared(ref) for ref in inputs.operand_refs]


def _write_all(writer: ShardWriter, in_q: queue.Queue, stop: threading.Event, stages: dict[str, float]) -> None:
    while True:
        item = _get(in_q, stop)
        if item is _STOPPED or item is _DONE:
            return
        tick = time.perf_counter()
        name, tensor, dtype = item
        writer.write(name, tensor.to(dtype))  # on the CPU the cast runs here, beside the next tensor's merge
        stages["write"] += time.perf_counter() - tick


_DONE = object()
_STOPPED = object()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put, unless the pipeline stops first (then False): no stage blocks forever on a dead neighbour."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    """Get the next item; _STOPPED once the pipeline stops and nothing is left."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _STOPPED


# --- the output folder ------------------------------------------------------------------------------------------


def _write_side_files(inputs: MergeInputs, folder: Path, out_dtype: torch.dtype, shown_names: Mapping[str, str]
                      ) -> None:
    """Tokenizer, generation config, model card and recipe (models named by `shown_names`); config.json last (its
    presence marks completeness)."""
    recipe = inputs.recipe.renamed(shown_names)
    tok_path = inputs.tokenizer_donor.path
    for name in TOKENIZER_FILES:
        if (tok_path / name).is_file():
            shutil.copy2(tok_path / name, folder / name)
    template = getattr(recipe, "chat_template", None)
    if template and "{" in template:  # a Jinja template written into the recipe replaces the copied one
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    donor_path = inputs.donor.path
    if (donor_path / "generation_config.json").is_file():
        shutil.copy2(donor_path / "generation_config.json", folder / "generation_config.json")
    recipe_yaml = recipe.to_yaml()
    (folder / RECIPE_FILE).write_text(recipe_yaml, encoding="utf-8")
    export = mergekit_export(recipe)
    if export.runs_in_mergekit:
        (folder / MERGEKIT_RECIPE_FILE).write_text(export.text, encoding="utf-8")
    (folder / "README.md").write_text(model_card(inputs, recipe_yaml, export.reason, shown_names), encoding="utf-8")
    _write_config(inputs.donor.config, inputs, out_dtype, folder)


def _write_task_folders(inputs: MergeInputs, heads: TaskHeads, plan: list[TensorPlan], shards: list, folder: Path,
                        out_dtype: torch.dtype, max_shard: int, cancel: CancelFlag) -> list[str]:
    """For each expert with tensors of its own: `folder/tasks/<task>/`, a complete model of the expert's class holding
    the merged shared tensors (read back from the shards just written, one at a time) and the expert's own tensors
    (its head), with the expert's config and tokenizer. Returns the task names."""
    fixed = torch_dtype(getattr(inputs.recipe, "out_dtype", None) or getattr(inputs.recipe, "dtype", None))
    planned = {p.planned.name: p.planned for p in plan}
    written_in = {t.name: shard.filename for shard in shards for t in shard.tensors}
    handles: dict[str, Any] = {}
    names = []
    for ref, own in heads.own.items():
        expert, name = inputs.sources[ref], heads.tasks[ref]
        task_dir = folder / TASKS_DIR / name
        task_dir.mkdir(parents=True)
        tensors = [planned[n] for n in heads.shared]
        for n in own:
            dtype = expert.dtype(n)
            tensors.append(PlannedTensor(n, tuple(expert.shape(n)),
                                         fixed if fixed is not None and dtype.is_floating_point else dtype))
        task_shards = plan_shards(tensors, max_shard)
        writer = ShardWriter(task_dir, task_shards, metadata={"merged_by": "mergelab", "task": name})
        try:
            for shard in task_shards:
                for t in shard.tensors:
                    if is_set(cancel):
                        raise MergeCancelled("Merge cancelled; no output folder was written.")
                    if t.name in written_in:
                        file = written_in[t.name]
                        if file not in handles:
                            handles[file] = safe_open(str(folder / file), framework="pt")
                        tensor = handles[file].get_tensor(t.name)
                    else:
                        tensor = expert.get(t.name).to(t.dtype)
                    writer.write(t.name, tensor)
            writer.finish()
        finally:
            writer.close()
        _write_task_side_files(inputs, ref, name, task_dir, out_dtype)
        names.append(name)
    handles.clear()
    return names


def _write_task_side_files(inputs: MergeInputs, ref: str, name: str, folder: Path, out_dtype: torch.dtype) -> None:
    """The expert's tokenizer (the tokenizer donor's when vocabulary rows were resolved to it), a short card, and
    the expert's config (labels and head class) last."""
    expert = inputs.sources[ref]
    tok_path = inputs.tokenizer_donor.path if inputs.resolve_vocab else expert.path
    for file in TOKENIZER_FILES:
        if (tok_path / file).is_file():
            shutil.copy2(tok_path / file, folder / file)
    (folder / "README.md").write_text(
        "---\nlibrary_name: transformers\ntags:\n- mergelab\n- merge\n---\n"
        f"# Merged model, read through the `{name}` head\n\nThe merged shared tensors of the model two folders up "
        f"(see its README.md for the recipe) with the head of `{ref}`, which is not merged, and that model's config "
        "and labels.\n", encoding="utf-8")
    _write_config(expert.config, inputs, out_dtype, folder)


def model_card(inputs: MergeInputs, recipe_yaml: str, mergekit_gap: str | None = None,
               shown_names: Mapping[str, str] | None = None) -> str:
    """README.md of the merged folder, its models named by `shown_names` (see merge_to_folder); `mergekit_gap` says
    why there is no mergekit_config.yml (None: there is)."""
    shown_names = shown_names or {}
    recipe = inputs.recipe.renamed(shown_names)
    for_mergekit = (f"`{MERGEKIT_RECIPE_FILE}` holds it as mergekit 0.1.5 runs it" if mergekit_gap is None
                    else f"{mergekit_gap}, so there is no `{MERGEKIT_RECIPE_FILE}`")
    models = "\n".join(f"- {ref}" for ref in dict.fromkeys(e.model for e in recipe.models))
    base = f" with `{recipe.base_model}` as the base" if recipe.base_model else ""
    return (
        "---\nlibrary_name: transformers\ntags:\n- mergelab\n- merge\n---\n"
        f"# Merged model\n\nMade with MergeLab using the `{recipe.merge_method}` method{base}.\n\n"
        f"## Models merged\n\n{models}\n\n{_tasks_section(inputs, shown_names)}## Recipe\n\nThe recipe (also in `{RECIPE_FILE}`; {for_mergekit}):\n\n"
        f"```yaml\n{recipe_yaml.rstrip()}\n```\n"
    )


def _tasks_section(inputs: MergeInputs, shown_names: Mapping[str, str]) -> str:
    heads = task_heads(inputs)
    if heads is None:
        return ""
    rows = "\n".join(f"- `{TASKS_DIR}/{heads.tasks[ref]}/`: read through the head of `{shown_names.get(ref, ref)}` "
                      f"({', '.join(f'`{n}`' for n in names) or 'no tensors of its own'})"
                      for ref, names in heads.heads.items() if ref in heads.own)
    base_only = (f" Tensors only the base has ({', '.join(f'`{n}`' for n in heads.base_only)}) are the base's, "
                 "unchanged." if heads.base_only else "")
    return (f"## Per-task heads\n\nThe experts have their own heads, which are not merged: task t is read through its "
            f"own head. This folder holds the {len(heads.shared)} merged tensors every model shares, with the base's "
            f"config.{base_only} Each task has a complete folder with the merged tensors, its head, its config "
            f"(labels) and its tokenizer; load it with `AutoModelForSequenceClassification.from_pretrained`:\n\n"
            f"{rows}\n\n")


def _move_into_place(temp: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:  # someone wrote there while we merged
            raise OutputFolderError(f"{out} appeared while merging; the merge was discarded. Choose another folder.")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        temp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return
    if out.exists():
        out.rmdir()
    temp.rename(out)


def remove_stale_temps(parent: Path) -> list[Path]:
    """Remove the hidden `.NAME.incomplete-<pid>` folders that killed merges left in `parent` (any NAME, their
    process gone); folders of running processes (this one included) are kept. Returns what was removed."""
    removed = []
    try:
        candidates = list(parent.glob(".*.incomplete-*")) if parent.is_dir() else []
    except OSError:  # an unreadable parent: the merge itself will say what is wrong
        return removed
    for temp in candidates:
        pid = temp.name.rsplit("-", 1)[-1]
        if temp.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)
            removed.append(temp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or not a possible pid)
        return False
    except PermissionError:
        return True
    return True


# --- small helpers ----------------------------------------------------------------------------------------------


def _as_recipe(recipe: Any) -> Any:
    if isinstance(recipe, (str, os.PathLike)):
        return load_recipe(recipe)
    return recipe


def _check_device(device: str) -> str:
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MergeLabError(f"Device {device!r} was asked for but this machine has no CUDA GPU usable by torch; "
                                "use --device cpu.")
        return device
    raise MergeLabError(f"Unknown device {device!r}: use cpu or cuda (cuda:N for a given GPU).")


def _write_config(source_config: dict, inputs: MergeInputs, out_dtype: torch.dtype, folder: Path) -> None:
    """config.json of an output folder: the source's config with the output dtype (and the resolved vocabulary).
    Written last, so a folder holding it is a finished model."""
    config = dict(source_config)
    config["dtype"] = dtype_name(out_dtype)
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype_name(out_dtype)
    if inputs.resolve_vocab and inputs.tokenizer_donor.vocab_size is not None and "vocab_size" in config:
        config["vocab_size"] = inputs.tokenizer_donor.vocab_size
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
