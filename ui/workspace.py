"""What a session does with its models, shared by the panels: pick models (zoo, local folders, Hub ids), build a
recipe from the merge controls, merge in memory (LiveMerger) or to a folder (engine), and put the merged weights
into the session's own chat/classifier models. The merging itself is merging/'s; this module only wires it."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import zoo
from inference import model_kind
from merging.cancel import cancellable
from merging.engine import merge_to_folder as engine_merge
from merging.errors import CompatibilityError, MergeLabError, RecipeError, SourceError
from merging.live import LiveMerger, ReaderTensors, live_memory_plan
from merging.methods.registry import Param
from merging.recipe import ModelEntry, Recipe
from merging.settings import MergeSettings
from merging.sources import open_model, validate_hub_id
from ui.catalog import require_hub
from ui.hosting import APP_ROOT, HostConfig
from ui.merge_record import MergeRecord
from ui.resources import device, private_copy, shared_model
from ui.session import Session, SourceModel

ORIGINS = ("Zoo", "Local folders", "Hub ids")
BASE_LABEL = "base"


def has_own_control(param: Param) -> bool:
    """Whether the Merge panel shows a parameter as one of the method's own controls: not the weight (it has a
    slider per source) nor a parameter without effect here (int8_mask), as their declared roles say."""
    return param.role not in ("weight", "hidden")


# --- choosing models ---------------------------------------------------------------------------------------------

def zoo_families() -> dict[str, Any]:
    return zoo.families()


def ensure_zoo_built(family: Any, progress: Callable[[float, str], None] | None = None) -> None:
    """Build the zoo family's checkpoints if they are missing (first start without shipped assets; a real family
    such as smollm2 also after new shipped adapters), with progress."""
    zoo.ensure_family(family.name, progress=progress)


def _unique_label(label: str, taken: set[str]) -> str:
    candidate, n = label, 2
    while candidate in taken or candidate == BASE_LABEL:
        candidate, n = f"{label}#{n}", n + 1
    taken.add(candidate)
    return candidate


def _resolve_ref(ref: str, origin: str, config: HostConfig) -> tuple[str, Path]:
    """(label, local folder) of a model the user typed. Hosted, a Hub id is only ever a Hub id (validated, never
    looked up on this server's disk: a path typed there must not reach files outside ./models)."""
    ref = ref.strip()
    if origin == "Hub ids":
        if config.hosted:
            ref = validate_hub_id(ref)  # before anything else, so a path is refused whether or not the Hub answers
        require_hub(f"Hub id {ref!r}")
        cache = None if config.hub_cache_dir is None else str(config.hub_cache_dir)
        with open_model(ref, hub_only=config.hosted, cache_dir=cache) as source:  # downloads the files a merge needs
            return ref.rstrip("/").split("/")[-1], source.path
    folder = config.resolve_local(ref)
    if not folder.is_dir():
        raise SourceError(f"Model folder {config.public_message(str(folder))!r} does not exist: give the folder that "
                          "holds config.json and the *.safetensors files.")
    if not (folder / "config.json").is_file():
        raise SourceError(f"{ref!r} is not a Hugging Face model folder (no config.json in it).")
    return folder.name, folder


def select_models(
    session: Session,
    config: HostConfig,
    origin: str,
    family: str | None,
    experts: list[str] | None,
    base_ref: str | None,
    source_refs: list[str] | str | None,
    progress: Callable[[float, str], None] | None = None,
) -> Session:
    """Record the base and the sources the user picked (resolved to local folders); drops the previous merge."""
    if origin not in ORIGINS:
        raise SourceError(f"Unknown model origin {origin!r}: choose one of {', '.join(ORIGINS)}.")
    session.reset_models()
    if origin == "Zoo":
        _select_zoo_models(session, family, list(experts or []), progress)
    else:
        _select_typed_models(session, config, origin, base_ref, source_refs, progress)
    session.dtype = sources_dtype([session.base, *session.sources])
    return session


def _select_zoo_models(session: Session, family: str | None, chosen: list[str],
                       progress: Callable[[float, str], None] | None) -> None:
    """A zoo family's base and the chosen experts (the family is built first if its checkpoints are missing)."""
    families = zoo_families()
    if family not in families:
        raise SourceError(f"Unknown zoo family {family!r}: choose one of {', '.join(families)}.")
    fam = families[family]
    unknown = [e for e in chosen if e not in fam.experts]
    if unknown:
        raise SourceError(f"The {family} zoo has no expert {', '.join(map(repr, unknown))}: choose among "
                          f"{', '.join(fam.experts)}.")
    if not chosen:
        raise SourceError(f"Pick at least one expert of the {family} zoo to merge into its base.")
    ensure_zoo_built(fam, progress)
    taken: set[str] = set()
    session.family, session.kind = fam.name, fam.kind
    session.base = SourceModel(ref=f"zoo:{fam.name}/base", label=BASE_LABEL, path=Path(fam.base), origin="zoo")
    session.sources = [SourceModel(ref=f"zoo:{fam.name}/{e}", label=_unique_label(e, taken),
                                   path=Path(fam.experts[e]), origin="zoo") for e in chosen]
    session.tasks_path, session.unlabeled_path = Path(fam.tasks), Path(fam.unlabeled)


def _select_typed_models(session: Session, config: HostConfig, origin: str, base_ref: str | None,
                         source_refs: list[str] | str | None, progress: Callable[[float, str], None] | None) -> None:
    """Local folders or Hub ids as the user typed them (one source per line); no task set comes with them."""
    refs = [r.strip() for r in (source_refs.splitlines() if isinstance(source_refs, str) else source_refs or [])]
    refs = [r for r in refs if r]
    if not (base_ref or "").strip():
        raise SourceError("Give the base model (the model the sources were fine-tuned from).")
    if not refs:
        raise SourceError("Give at least one source model, one per line.")
    if progress:
        progress(0.05, "Opening the models…")
    _, base_path = _resolve_ref(base_ref, origin, config)
    session.family, session.tasks_path, session.unlabeled_path = None, None, None
    kind = "hub" if origin == "Hub ids" else "local"
    session.base = SourceModel(ref=base_ref.strip(), label=BASE_LABEL, path=base_path, origin=kind)
    session.sources = []
    taken: set[str] = set()
    for i, ref in enumerate(refs):
        if progress:
            progress(0.1 + 0.8 * i / len(refs), f"Opening {ref}…")
        label, path = _resolve_ref(ref, origin, config)
        session.sources.append(SourceModel(ref=ref, label=_unique_label(label, taken), path=path, origin=kind))
    session.kind = _kind_of(session.base.path, session.sources[0].path)


def _kind_of(base: Path, expert: Path) -> str:
    """The session's kind: "classifier" when the base or the first expert is a sequence classifier, else "lm"."""
    kinds = {model_kind(json.loads((folder / "config.json").read_text(encoding="utf-8"))) for folder in (base, expert)}
    return "classifier" if "classifier" in kinds else "lm"


def require_models(session: Session) -> None:
    if session.base is None or not session.sources:
        raise SourceError("Choose the models first (Models tab: pick a preset or a zoo family, then Check models).")


# --- recipes from the merge controls -----------------------------------------------------------------------------

def check_settings(session: Session, settings: MergeSettings, weight: Param | None) -> None:
    """Problems only the page has, said in its terms (before the recipe validator's): a weight per source, a method
    that takes this many sources, weights that add nothing. `weight`: the method's weight parameter (None: it has
    none). Parameter bounds are the recipe validator's (it names the parameter, its range and what it does)."""
    require_models(session)
    method = settings.spec
    problems = []
    uses_weights = weight is not None
    if uses_weights and len(settings.weights) != len(session.sources):
        problems.append(f"give one weight per source model: {len(session.sources)} sources "
                        f"({', '.join(session.labels)}), {len(settings.weights)} weights")
    n_inputs = len(session.sources) + (1 if method.base == "ignored" else 0)
    if n_inputs < method.min_models or (method.max_models is not None and n_inputs > method.max_models):
        wanted = (f"exactly {method.min_models}" if method.max_models == method.min_models
                  else f"at least {method.min_models}")
        problems.append(f"{method.name} takes {wanted} model(s) besides the base; you chose {len(session.sources)}: "
                        "change the sources in the Models tab or pick another method")
    if uses_weights and settings.weights and not problems:
        total = sum(settings.weights)
        if all(w == 0 for w in settings.weights):
            problems.append("every weight is 0, so the merge would add nothing: raise at least one model's weight")
        elif abs(total) < 1e-9 and _normalizes(settings):
            problems.append(f"the weights sum to zero ({' + '.join(f'{w:g}' for w in settings.weights)}) and "
                            f"{method.name} divides by that sum: make them add up to something other than 0, or "
                            "turn normalize off")
    if problems:
        raise RecipeError("Cannot merge: " + "; ".join(problems) + ".")


def _normalizes(settings: MergeSettings) -> bool:
    """Whether the merge divides by the sum of the weights: normalize set, or declared on by default."""
    declared = settings.spec.param("normalize")
    return settings.params.get("normalize", declared.default if declared is not None else None) is True


def build_recipe(session: Session, settings: MergeSettings) -> Recipe:
    """The recipe the controls describe, built and validated once, its models named by their session labels (the
    LiveMerger's keys, and what a merge record keeps). Where a recipe leaves the session it is renamed:
    `recorded_recipe` for export and reports, `folder_recipe` for the engine."""
    method = settings.spec  # resolved with the settings; the recipe keeps it
    weight = method.weight
    check_settings(session, settings, weight)
    own = {param.name for param in method.params if has_own_control(param)}  # unknown and hidden ones are dropped
    global_params = {key: _coerce_choice(value) for key, value in settings.params.items()
                     if key in own and value is not None}
    models = [ModelEntry(source.label, {weight.name: float(settings.weights[i])} if weight is not None else {})
              for i, source in enumerate(session.sources)]
    # dtype is the compute dtype (as in mergekit), out_dtype the written one: the sources' own (bf16 in, bf16 out).
    return Recipe.checked(merge_method=method.name, models=models, parameters=global_params, dtype="float32",
                          out_dtype=session.dtype, base_model=None if method.base == "ignored" else session.base.label,
                          method=method)


def recorded_recipe(session: Session, recipe: Recipe) -> Recipe:
    """A recipe named by labels (build_recipe's, a merge record's) with each model named as an export or a report
    names it: a Hub id, or a zoo folder relative to the app (portable). A pure renaming: nothing is validated
    again."""
    return recipe.renamed({m.label: _shown(m) for m in _models(session)})


def shown_names(session: Session) -> dict[str, str]:
    """Folder → the name a merged folder's card and recipe files give that model (as an export names it): what
    merging.engine.merge_to_folder takes for a folder_recipe, so no server path is written into a merged model."""
    return {str(m.path): _shown(m) for m in _models(session)}


def _shown(model: SourceModel) -> str:
    return model.ref if model.origin == "hub" else _portable(model)


def folder_recipe(session: Session, recipe: Recipe) -> Recipe:
    """A recipe named by labels with each model named by its local folder (Hub models are already downloaded), as
    the engine reads it. A pure renaming."""
    return recipe.renamed({m.label: str(m.path) for m in _models(session)})


def _models(session: Session) -> list[SourceModel]:
    """The base (labelled BASE_LABEL in recipes) and the sources."""
    return [session.base, *session.sources]


def _portable(model: SourceModel) -> str:
    """A zoo model's folder relative to the app (readable in an exported YAML, no server paths)."""
    try:
        return str(model.path.resolve().relative_to(APP_ROOT))
    except ValueError:
        return str(model.path)


def _coerce_choice(value: Any) -> Any:
    # Dropdowns hand back strings; the registry's choices may be booleans (rescale: true/false/inverse_density).
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


# --- live merging ------------------------------------------------------------------------------------------------

def _read_all(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (Evaluate scores a merged folder's state this way)."""
    with open_model(path) as source:
        return {name: source.get(name) for name in source.tensor_names()}


def sources_dtype(models: list[SourceModel]) -> str:
    """The dtype a merge of these models is written in by default: their floating dtypes promoted (bf16 in, bf16
    out), as the engine does when the recipe names none."""
    dtype: torch.dtype | None = None
    for model in models:
        with open_model(model.path) as source:
            for name in source.tensor_names():
                found = source.dtype(name)
                if found.is_floating_point:
                    dtype = found if dtype is None else torch.promote_types(dtype, found)
                    break
    return str(dtype or torch.float32).removeprefix("torch.")


def live_plan(session: Session, device: str) -> Any:
    """merging.live's memory plan for the chosen models: their tensors in their own dtype, scratch for the largest
    tensor, and the session's own model(s) the merge is written into."""
    sizes, elements, largest = [], [], 0
    for model in [session.base, *session.sources]:
        with open_model(model.path) as source:
            names = source.tensor_names()
            sizes.append(sum(source.nbytes(n) for n in names))
            counts = [math.prod(source.shape(n)) for n in names]
            largest = max([largest, *counts])
            elements.append(sum(counts))
    # The session's model: float32 on the CPU (inference.loading's default there), the checkpoint's dtype elsewhere.
    per_model = elements[0] * 4 if device == "cpu" else sizes[0]
    targets = len(session.sources) if session.kind == "classifier" else 1
    return live_memory_plan(sizes, largest, device=device, model_bytes=per_model * targets, source_elements=elements)


def prepare_live(session: Session) -> bool:
    """Read the sources into memory for live merging when the memory plan says they fit; True when it is on.
    `session.live_plan.reason` says why either way."""
    require_models(session)
    session.live = None
    plan = live_plan(session, device())
    session.live_plan = plan
    if not plan.live:
        return False
    with contextlib.ExitStack() as readers:  # each tensor read once, straight to where the merger holds it
        base = ReaderTensors(readers.enter_context(open_model(session.base.path)))
        models = {s.label: ReaderTensors(readers.enter_context(open_model(s.path))) for s in session.sources}
        session.live = LiveMerger(base, models, base.reader.num_layers, device=plan.device,
                                  on_device=plan.on_device)
    return True


def live_mode_text(session: Session) -> str:
    """What the Models report says about merging: live or to a folder, and why (the memory plan's reason)."""
    plan = session.live_plan
    if plan is None:
        return ""
    if plan.live:
        return f"**Live merging is on**: sliders re-merge in memory, into the chat model itself ({plan.reason})."
    return f"**Live merging is off**: {plan.reason}. Use *Merge to folder*."


@dataclass(frozen=True)
class MoveResult:
    """What one move of a Merge-tab control did (apply_move), for the panel to word: the settings the controls gave,
    the sources' labels, the merge recorded (None: these models merge to a folder, so nothing was merged) and the
    session's kind (which tab uses the merge)."""

    settings: MergeSettings
    labels: list[str]
    record: MergeRecord | None
    kind: str


def apply_move(session: Session, method: str, weights: list[float], params: dict[str, Any], seed: float | None,
               stamp: float | None) -> MoveResult | None:
    """A Merge-tab control moved (the page's live re-merge): the controls' values (the method's name, every weight
    slider, the method's parameters by name, the seed) checked as settings, then merged in memory into the
    session's own model and recorded when live merging is on (merge_live). None when a later move has been merged
    already (`stamp`: see newest_move)."""
    settings = MergeSettings.from_controls(method, weights, params, seed, len(session.sources))
    if session.live is None:
        return MoveResult(settings, session.labels, None, session.kind)
    with session.lock:
        if not newest_move(session, stamp):
            return None
        current = session.merge
        if current is not None and current.mode == "live" and current.settings == settings:
            # the same values again (a slider's release after its input, a number box losing focus): the session's
            # models hold this merge already, so it stands instead of being merged and recorded a second time
            return MoveResult(settings, session.labels, current, session.kind)
        return MoveResult(settings, session.labels, merge_live(session, settings), session.kind)


def newest_move(session: Session, stamp: float | None) -> bool:
    """True (and remembered in the session, so it goes with it) when `stamp` is not older than the newest move
    merged for this session. Call under the session's lock."""
    stamp = float(stamp or 0)
    if not math.isfinite(stamp) or stamp < session.newest_move:
        return False
    session.newest_move = stamp
    return True


def merge_live(session: Session, settings: MergeSettings) -> MergeRecord:
    """Merge in memory straight into this session's own model(s) (their parameters, in place) and record it.
    Cancellable: /cancel_merge reaches loops inside a method (karcher's iterations); a Cancel pressed while nothing
    ran does not stop it."""
    require_models(session)
    if session.live is None:
        reason = session.live_plan.reason if session.live_plan is not None else "the models are not read yet"
        raise MergeLabError(f"Live merging is off ({reason}): use Merge to folder.")
    session.cancel.clear()
    recipe = build_recipe(session, settings)
    started = time.perf_counter()
    with session.lock, cancellable(session.cancel):
        previous = session.merge
        try:
            written = session.live.merge_into(_merge_targets(session), recipe, seed=settings.seed)
        except BaseException:
            _restore_models(session, previous)  # a failed merge never leaves half-written weights in use
            raise
        if not written:
            raise CompatibilityError("The merged tensors do not match the model's parameter names; merge to a "
                                     "folder and load it instead.")
        dtype = recipe.out_dtype  # build_recipe sets it: what the engine writes, and live merging rounds to
        return session.record_merge(settings, recipe, "live", dtype=dtype, seconds=time.perf_counter() - started)


def _merge_targets(session: Session) -> list[dict[str, torch.Tensor]]:
    """The parameters a live merge is written into: the session's chat model, or each task's classifier (made on
    first use as private copies of the sources)."""
    if session.kind == "classifier":
        for source in session.sources:
            if source.label not in session.classifier_models:
                session.classifier_models[source.label] = private_copy(source.path)
        return [session.classifier_models[s.label].model.state_dict() for s in session.sources]
    if session.chat_model is None or session.chat_model.path != session.base.path:
        session.chat_model = private_copy(session.base.path)
    return [session.chat_model.model.state_dict()]


def _restore_models(session: Session, previous: MergeRecord | None) -> None:
    """After a failed live merge: write the previous live merge back, or drop the half-written models (they are
    made again from the sources on the next merge)."""
    if previous is not None and previous.mode == "live" and session.live is not None:
        try:
            session.live.merge_into(_merge_targets(session), build_recipe(session, previous.settings),
                                    seed=previous.settings.seed)
            return
        except Exception as error:  # noqa: BLE001 - fall through to dropping the models
            logging.getLogger(__name__).warning("Could not write the previous merge back: %s", error)
    session.chat_model = None
    session.classifier_models = {}
    if previous is not None and previous.in_memory:
        session.merge = None


def write_learned(session: Session, learned: Any, recipe: Recipe, seconds: float) -> MergeRecord:
    """Put a learned merge (merging.learned.LearnedMerge) into the session's own models, rounded to the dtype the
    engine writes for its recipe (models named by session label, as every record's), and record it."""
    dtype = recipe.out_dtype or recipe.dtype or session.dtype
    out = getattr(torch, dtype)
    merged = learned.merged()
    with session.lock, torch.no_grad():
        for target in _merge_targets(session):
            for name, value in merged.items():
                found = target.get(name)
                if found is not None and found.shape == value.shape:
                    found.copy_(value.to(out))
        settings = MergeSettings("task_arithmetic", [0.0] * len(session.sources))
        return session.record_merge(settings, recipe, "learned", dtype=dtype, seconds=seconds, learned=learned)


# --- merging to a folder -----------------------------------------------------------------------------------------

def merge_to_folder(
    session: Session,
    config: HostConfig,
    settings: MergeSettings,
    name: str = "merged",
    progress: Callable[[float, str], None] | None = None,
) -> Path:
    """Stream the merge to ./models/merged/<session>/<name> (replacing an earlier one of that name) and record it:
    Chat and Evaluate then read that folder (through the cache, keyed by the folder's content)."""
    recipe = build_recipe(session, settings)
    out = session.merged_folder(config.models_dir, name)
    session.cancel.clear()
    started = time.perf_counter()

    def report(p: Any) -> None:
        if progress:
            eta = f", about {p.eta_s:.0f} s left" if getattr(p, "eta_s", None) else ""
            progress(p.fraction, f"Tensor {p.tensor_index}/{p.num_tensors}{eta}")

    result = engine_merge(folder_recipe(session, recipe), out, device=device(), seed=settings.seed, progress=report,
                          cancel=session.cancel, overwrite=True, shown_names=shown_names(session))
    session.record_merge(settings, recipe, "folder", dtype=result.out_dtype, folder=out,
                         seconds=time.perf_counter() - started)
    if session.kind == "classifier" and session.live is not None:
        # Classify reads the session's per-task models: give them the same merge the folder holds.
        session.live.merge_into(_merge_targets(session), recipe, seed=settings.seed)
    return out


def build_recipe_for_engine(session: Session, settings: MergeSettings) -> Recipe:
    """The engine needs real folders (zoo models are named by folder, Hub models by their downloaded folder)."""
    return folder_recipe(session, build_recipe(session, settings))


def current_merge(session: Session, action: str = "use the result") -> MergeRecord:
    """The session's current merge, or an error saying to merge first."""
    require_models(session)
    if session.merge is None:
        raise MergeLabError(f"Merge the models first (Merge tab), then {action}.")
    return session.merge


def merged_chat_model(session: Session, quantization: str | None = None):
    """The model Chat talks to: the session's own model holding an in-memory merge, or the merged folder through
    the shared cache (a folder rewritten by a re-merge is a new cache entry)."""
    require_models(session)
    if session.kind == "classifier":
        raise MergeLabError("These are classifiers: use the Classify tab to compare their labels.")
    record = current_merge(session, "chat with the result")
    if record.in_memory:
        if session.chat_model is None:
            raise MergeLabError("The in-memory merge was lost (a merge failed): merge again.")
        return session.chat_model
    return shared_model(record.folder, quantization)


def merged_state(session: Session) -> dict[str, torch.Tensor]:
    """The current in-memory merge's weights, copied (a re-merge may write into the model while they are used):
    the chat model's, or one task model's for classifiers (the shared tensors are the same in each)."""
    with session.lock:
        record = current_merge(session, "evaluate the result")
        if not record.in_memory:
            raise MergeLabError("The current merge is a folder: load it instead.")
        if session.kind == "classifier":
            model = next(iter(session.classifier_models.values()), None)
        else:
            model = session.chat_model
        if model is None:
            raise MergeLabError("The in-memory merge was lost (a merge failed): merge again.")
        return {name: tensor.clone() for name, tensor in model.model.state_dict().items()}
