"""Pre-flight check: can these models be merged with this recipe, and what will it cost on this host?

Reads only configs and safetensors headers, so it answers in well under a second even for 7B models. Problems the
user can cause are collected into the report (never raised): the UI shows `to_markdown()`, the CLI prints it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from merging.checks import existing_ancestor, output_folder_problem
from merging.dtypes import dtype_name
from merging.errors import MergeLabError
from merging.inputs import MergeInputs, is_vocab_mismatch, open_inputs, task_heads
from merging.plan import available_bytes, estimate
from merging.recipe import load_recipe, validate_recipe

MAX_LISTED = 6  # names listed per problem before "and N more"


@dataclass
class PreflightReport:
    ok: bool = True
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def error(self, message: str) -> None:
        self.errors.append(message)
        self.ok = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        if self.ok:
            lines = ["### Pre-flight: ready to merge ✓"]
        else:
            lines = [f"### Pre-flight: {len(self.errors)} problem{'s' * (len(self.errors) != 1)} to fix ✗"]
        if self.errors:
            lines += ["", "**Problems**", ""] + [f"- {e}" for e in self.errors]
        if self.warnings:
            lines += ["", "**Warnings**", ""] + [f"- {w}" for w in self.warnings]
        summary = _summary_rows(self.facts)
        if summary:
            lines += ["", "| check | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary]
        models = self.facts.get("models") or {}
        if models:
            lines += ["", "| model | architecture | parameters | dtype | vocabulary | layers |",
                      "|---|---|---|---|---|---|"]
            for ref, m in models.items():
                lines.append(f"| `{ref}` | {m['architecture']} | {_count(m['parameters'])} | {m['dtype']} | "
                             f"{m['vocab_size']} | {m['num_layers']} |")
        return "\n".join(lines) + "\n"


def preflight(recipe: Any, out_dir: str | os.PathLike | None = None, device: str = "cpu", *,
              allow_pickle: bool = False) -> PreflightReport:
    """Check `recipe` (a Recipe, a YAML path or YAML text) before any tensor is merged."""
    report = PreflightReport()
    report.facts["device"] = device
    recipe = _load(recipe, report)
    if recipe is None:
        return report
    report.facts["method"] = recipe.merge_method
    try:
        inputs = open_inputs(recipe, allow_pickle=allow_pickle)
    except MergeLabError as exc:
        report.error(str(exc))
        return report
    with inputs:
        _describe_models(inputs, report)
        for ref, what in inputs.renamed.items():
            report.warnings.append(f"`{ref}`: {what}; the output uses these names.")
        _check_architecture(inputs, report)
        _check_tensors(inputs, report)
        _check_vocabulary(inputs, report)
        _check_tokenizers(inputs, report)
        _check_tokenizer_files(inputs, report)
        _check_remote_code(inputs, report)
        _check_dtypes(inputs, report)
        _check_chat_template(inputs, report)
        _check_resources(inputs, report, out_dir, device)
    return report


# --- checks -----------------------------------------------------------------------------------------------------


def _load(recipe: Any, report: PreflightReport) -> Any:
    try:
        if isinstance(recipe, (str, os.PathLike)):
            recipe = load_recipe(recipe)
        validate_recipe(recipe)
    except MergeLabError as exc:
        report.error(str(exc))
        return None
    return recipe


def _describe_models(inputs: MergeInputs, report: PreflightReport) -> None:
    models = {}
    for ref, src in inputs.sources.items():
        names = src.tensor_names()
        dtypes = sorted({dtype_name(src.dtype(n)) for n in names})
        models[ref] = {
            "architecture": src.architecture,
            "parameters": sum(math.prod(src.shape(n)) for n in names),
            "bytes": src.total_bytes(),
            "dtype": "/".join(dtypes),
            "vocab_size": src.vocab_size,
            "num_layers": src.num_layers,
            "path": str(src.path),
            "role": _role(inputs, ref),
        }
    report.facts["models"] = models


def _role(inputs: MergeInputs, ref: str) -> str:
    roles = []
    if ref == inputs.base_ref:
        roles.append("base")
    if ref in inputs.operand_refs:
        roles.append("merged")
    if ref == inputs.tokenizer_ref:
        roles.append("tokenizer")
    return ", ".join(roles) or "unused"


def _check_architecture(inputs: MergeInputs, report: PreflightReport) -> None:
    archs = {ref: src.architecture for ref, src in inputs.sources.items()}
    heads = task_heads(inputs)
    if heads is not None:
        _report_task_heads(inputs, heads, report)
        if heads.foreign:
            listed = "; ".join(f"`{ref}` is {archs[ref]} ({inputs.sources[ref].config.get('model_type')})"
                               for ref in heads.foreign)
            report.error(f"Architectures differ: the base `{inputs.base_ref}` is {archs[inputs.base_ref]} "
                         f"({inputs.base.config.get('model_type')}), with per-task head models of its type, but "
                         f"{listed}. Choose fine-tunes of this base (its own class, or a head class such as "
                         f"{inputs.base.config.get('model_type')}'s *ForSequenceClassification).")
    elif len(set(archs.values())) > 1:
        listed = "; ".join(f"`{ref}` is {arch}" for ref, arch in archs.items())
        report.error(f"Architectures differ ({listed}). Merging needs models of one architecture fine-tuned from the "
                     "same base: choose models that share it.")
    layers = {ref: src.num_layers for ref, src in inputs.sources.items()}
    if len(set(layers.values())) > 1:
        listed = ", ".join(f"`{ref}`: {n}" for ref, n in layers.items())
        report.error(f"Layer counts differ ({listed}); models must have the same depth to be merged tensor by tensor.")


def _report_task_heads(inputs: MergeInputs, heads: Any, report: PreflightReport) -> None:
    """Experts with their own heads over a shared base (the GLUE-teachers case): a fact and a warning, not an error."""
    listed = "; ".join(f"task `{heads.tasks[ref]}` (`{ref}`, {inputs.sources[ref].architecture}): "
                       f"{_listed(names) or 'no tensors of its own'}" for ref, names in heads.heads.items())
    base_only = (f" Tensors only the base has ({_listed(heads.base_only)}) are copied from it unchanged."
                 if heads.base_only else "")
    report.warnings.append(
        f"Per-task heads, not merged: task t is read through its own head ({listed}). The {len(heads.shared)} "
        "tensors every model shares are merged into the output folder (the base's architecture), and each task gets "
        f"a loadable folder `tasks/<task>/` with the merged tensors, its own head, config and tokenizer.{base_only}"
    )
    report.facts["per_task_heads"] = {
        heads.tasks[ref]: {"model": ref, "architecture": inputs.sources[ref].architecture, "heads": names}
        for ref, names in heads.heads.items()
    }


def _check_tensors(inputs: MergeInputs, report: PreflightReport) -> None:
    donor = inputs.donor
    donor_names = set(donor.tensor_names())
    heads = task_heads(inputs)
    for ref, src in inputs.sources.items():
        if ref == inputs.donor_ref:
            continue
        names = set(src.tensor_names())
        missing, extra = sorted(donor_names - names), sorted(names - donor_names)
        if heads is not None:  # heads, and the base's own head: reported by _check_architecture, never merged
            if ref in heads.foreign:
                continue  # reported as an architecture mismatch
            missing, extra = heads.layer_gaps.get(ref, ([], []))
        if missing:
            report.error(f"`{ref}` lacks {len(missing)} tensor(s) that `{inputs.donor_ref}` has: {_listed(missing)}. "
                         "The models are not the same architecture variant; choose fine-tunes of the same base.")
        if extra:
            report.error(f"`{ref}` has {len(extra)} tensor(s) that `{inputs.donor_ref}` lacks: {_listed(extra)}. "
                         "Choose fine-tunes of the same base (extra heads or adapters must be removed first).")
        shape_diffs = [n for n in sorted(donor_names & names)
                       if src.shape(n) != donor.shape(n) and not is_vocab_mismatch(inputs, n)]
        if shape_diffs:
            details = ", ".join(f"{n} {tuple(donor.shape(n))} vs {tuple(src.shape(n))}"
                                for n in shape_diffs[:MAX_LISTED])
            more = f" and {len(shape_diffs) - MAX_LISTED} more" if len(shape_diffs) > MAX_LISTED else ""
            report.error(f"Tensor shapes of `{ref}` differ from `{inputs.donor_ref}`: {details}{more}. Models must "
                         "have the same sizes (hidden, intermediate, heads) to be merged.")


def _check_vocabulary(inputs: MergeInputs, report: PreflightReport) -> None:
    donor_names = set(inputs.donor.tensor_names())
    vocab_tensors = sorted(n for n in donor_names if is_vocab_mismatch(inputs, n))
    sizes = {ref: src.vocab_size for ref, src in inputs.sources.items()}
    report.facts["vocab_sizes"] = sizes
    if not vocab_tensors and len({s for s in sizes.values() if s is not None}) <= 1:
        return
    listed = ", ".join(f"`{ref}`: {size}" for ref, size in sizes.items())
    if not inputs.resolve_vocab:
        report.error(
            f"Vocabulary sizes differ ({listed}), so the embedding/lm_head tensors "
            f"({', '.join(vocab_tensors) or 'none'})"
            " cannot be merged row for row. Either choose models that share a tokenizer, or add "
            "`tokenizer_source: base` to the recipe: embedding and lm_head rows are then cut or padded (with the "
            "base's rows) to the base's vocabulary, and the base's tokenizer is used."
        )
        return
    target = inputs.tokenizer_donor.vocab_size
    report.warnings.append(
        f"Vocabulary sizes differ ({listed}); as `tokenizer_source` asks, the rows of {', '.join(vocab_tensors)} are "
        f"cut or padded to {target} (the vocabulary of `{inputs.tokenizer_ref}`, whose tokenizer is copied). Tokens "
        "beyond a model's own vocabulary take the tokenizer model's rows. This assumes the shared token ids mean "
        "the same tokens."
    )


def _check_tokenizers(inputs: MergeInputs, report: PreflightReport) -> None:
    digests = {ref: _file_digest(src.path / "tokenizer.json") for ref, src in inputs.sources.items()}
    known = {d for d in digests.values() if d is not None}
    if len(known) > 1 and not inputs.resolve_vocab:
        report.warnings.append(
            "The models' tokenizer.json files differ; if their token ids do not mean the same tokens the merge will "
            f"talk gibberish. The output takes `{inputs.tokenizer_ref}`'s tokenizer (set `tokenizer_source` to choose)."
        )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
MAX_TOKENIZER_JSON_BYTES = 64_000_000  # the largest real ones (250K-token vocabularies) are ~20 MB


def tokenizer_file_problem(folder: Path) -> str | None:
    """Why `folder`'s tokenizer cannot load (no tokenizer files; tokenizer.json not JSON or too big), or None.
    A cheap look at the files, so pre-flight can say it before a merge copies a broken tokenizer."""
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        return f"has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, …)"
    if "tokenizer.json" not in present:
        return None
    file = folder / "tokenizer.json"
    if file.stat().st_size > MAX_TOKENIZER_JSON_BYTES:
        return f"has a tokenizer.json of {file.stat().st_size / 1e6:.0f} MB, more than any real tokenizer"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = f"{error.msg} at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else "not UTF-8 JSON"
        return f"has a tokenizer.json that is not valid JSON ({reason})"
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return "has a tokenizer.json without a tokenizer model in it"
    return None


def _check_tokenizer_files(inputs: MergeInputs, report: PreflightReport) -> None:
    """The tokenizer the output copies must load: else the merge is written but Chat and Evaluate cannot read it."""
    problem = tokenizer_file_problem(inputs.tokenizer_donor.path)
    if problem is not None:
        report.warnings.append(
            f"`{inputs.tokenizer_ref}` {problem}: the merged model gets its tokenizer from it, so Chat and Evaluate "
            "cannot use the merge. Copy the tokenizer files of the model it was fine-tuned from into that folder.")


def _check_remote_code(inputs: MergeInputs, report: PreflightReport) -> None:
    """auto_map asks loaders to run the folder's own Python; MergeLab never does (trust_remote_code=False)."""
    asking = [f"`{ref}`" for ref, src in inputs.sources.items() if src.config.get("auto_map")]
    if asking:
        report.warnings.append(
            f"{_listed(asking)} {'asks' if len(asking) == 1 else 'ask'} to run its own code (auto_map in "
            "config.json). MergeLab never runs it: the "
            f"tensors are merged as {inputs.tokenizer_donor.config.get('model_type')!r} and loaded with "
            "transformers' built-in class, so a model that needs its own code cannot be chatted with.")


def _check_dtypes(inputs: MergeInputs, report: PreflightReport) -> None:
    dtypes = {ref: m["dtype"] for ref, m in report.facts["models"].items()}
    if len(set(dtypes.values())) > 1 and not getattr(inputs.recipe, "dtype", None):
        listed = ", ".join(f"`{r}`: {d}" for r, d in dtypes.items())
        report.warnings.append(f"Input dtypes differ ({listed}); each tensor is computed in the wider of them. Set "
                               "`dtype:` (and `out_dtype:`) in the recipe to choose.")


def _check_chat_template(inputs: MergeInputs, report: PreflightReport) -> None:
    template = getattr(inputs.recipe, "chat_template", None)
    if template and "{" not in template:
        report.warnings.append(f"chat_template {template!r} is a name; only a Jinja template written into the recipe "
                               f"is applied, so the output keeps `{inputs.tokenizer_ref}`'s chat template.")


def _check_resources(inputs: MergeInputs, report: PreflightReport, out_dir: Any, device: str) -> None:
    cost = estimate(inputs, device, planned=report.ok)  # names or shapes differ: estimated from the donor alone
    memory, out_bytes = cost.memory_needed_bytes, cost.output_bytes
    report.facts.update({
        "num_tensors": cost.num_tensors,
        "output_dtype": cost.output_dtype,
        "read_bytes": cost.read_bytes,
        "output_bytes": out_bytes,
        "memory_needed_bytes": memory,
        "estimated_seconds": cost.estimated_seconds,
    })
    available = available_bytes(device)
    report.facts["memory_available_bytes"] = available
    if available is not None and memory > available:
        where = "GPU memory" if device.startswith("cuda") else "RAM"
        report.error(f"This merge needs about {_gb(memory)} of {where} at once but only {_gb(available)} is free. "
                     "Close other programs, merge on the CPU, or choose smaller models.")
    if out_dir is not None:
        _check_disk(report, out_dir, out_bytes)


def _check_disk(report: PreflightReport, out_dir: Any, out_bytes: int) -> None:
    """The output folder can be written, and its disk has room for the merged model."""
    problem = output_folder_problem(Path(out_dir).expanduser().absolute(), overwrite=True)
    if problem:  # a file in the way, no permission, a name too long: nothing to measure
        report.error(problem)
        return
    free = shutil.disk_usage(existing_ancestor(Path(out_dir))).free
    report.facts["disk_free_bytes"] = free
    if out_bytes > free:
        report.error(f"The merged model needs {_gb(out_bytes)} of disk but only {_gb(free)} is free where "
                     f"{out_dir} would be written. Free space or choose another output folder.")
    elif out_bytes > 0.9 * free:
        report.warnings.append(f"The merged model ({_gb(out_bytes)}) nearly fills the free disk ({_gb(free)}).")


# --- helpers ----------------------------------------------------------------------------------------------------


def _file_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _summary_rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    if "method" in facts:
        rows.append(("method", str(facts["method"])))
    if "num_tensors" in facts:
        rows.append(("tensors", str(facts["num_tensors"])))
        rows.append(("output", f"{_gb(facts['output_bytes'])} ({facts['output_dtype']})"))
        rows.append(("to read", _gb(facts["read_bytes"])))
        available = facts.get("memory_available_bytes")
        rows.append(("memory", f"{_gb(facts['memory_needed_bytes'])} needed"
                     + (f", {_gb(available)} free" if available is not None else "")))
        if "disk_free_bytes" in facts:
            rows.append(("disk", f"{_gb(facts['output_bytes'])} needed, {_gb(facts['disk_free_bytes'])} free"))
        rows.append(("estimated time", f"about {facts['estimated_seconds']:.0f} s on {facts.get('device', 'cpu')}"))
    return rows


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _gb(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} KB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
