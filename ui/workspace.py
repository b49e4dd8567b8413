"""What a session does with its models, shared by the panels: pick models (zoo, local folders, Hub ids), build a
recipe from the merge controls, merge in memory (LiveMerger) or to a folder (engine), and put the merged weights
into the session's own chat/classifier models. The merging itself is merging/'s; this module only wires it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merging.errors import CompatibilityError, MergeLabError, RecipeError, SourceError
from merging.methods import get_method
from merging.recipe import Recipe, validate_recipe
from ui.catalog import require_hub
from ui.hosting import HostConfig
from ui.session import Session, SourceModel

ORIGINS = ("Zoo", "Local folders", "Hub ids")
# Inputs up to this many parameters in all are merged live in memory (the zoo is ~1M; GPT-2 × 7 is not).
LIVE_MAX_ELEMENTS = 150_000_000
BASE_LABEL = "base"
HIDDEN_PARAMS = ("weight", "int8_mask")  # weight has its own slider per model; int8_mask changes nothing here


# --- choosing models ---------------------------------------------------------------------------------------------

def zoo_families() -> dict[str, Any]:
    import zoo.families

    # zoo.families() per the contract; until zoo/__init__ exports it, the name is the submodule.
    families = __import__("zoo").families
    return families() if callable(families) else zoo.families.families()


def ensure_zoo_built(family: Any, progress: Callable[[float, str], None] | None = None) -> None:
    """Build the zoo's checkpoints if they are missing (first start without shipped assets)."""
    missing = [p for p in [family.base, *family.experts.values()] if not (Path(p) / "config.json").is_file()]
    if not missing:
        return
    import zoo

    builder = getattr(zoo, "ensure_built", None)
    if builder is None:
        raise SourceError("The offline zoo is not built yet: run `python -m zoo build` once, then reload the page.")
    if progress:
        progress(0.0, "Building the offline zoo (first start only)…")
    builder(progress=progress)


def _unique_label(label: str, taken: set[str]) -> str:
    candidate, n = label, 2
    while candidate in taken or candidate == BASE_LABEL:
        candidate, n = f"{label}#{n}", n + 1
    taken.add(candidate)
    return candidate


def _resolve_ref(ref: str, origin: str, config: HostConfig) -> tuple[str, Path]:
    """(label, local folder) of a model the user typed."""
    ref = ref.strip()
    if origin == "Hub ids":
        require_hub(f"Hub id {ref!r}")
        from merging.sources import open_model

        with open_model(ref) as source:  # downloads the safetensors and side files once
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
    taken: set[str] = set()
    if origin == "Zoo":
        families = zoo_families()
        if family not in families:
            raise SourceError(f"Unknown zoo family {family!r}: choose one of {', '.join(families)}.")
        fam = families[family]
        chosen = list(experts or [])
        unknown = [e for e in chosen if e not in fam.experts]
        if unknown:
            raise SourceError(f"The {family} zoo has no expert {', '.join(map(repr, unknown))}: choose among "
                              f"{', '.join(fam.experts)}.")
        if not chosen:
            raise SourceError(f"Pick at least one expert of the {family} zoo to merge into its base.")
        ensure_zoo_built(fam, progress)
        session.family, session.kind = fam.name, fam.kind
        session.base = SourceModel(ref=f"zoo:{fam.name}/base", label=BASE_LABEL, path=Path(fam.base), origin="zoo")
        session.sources = [SourceModel(ref=f"zoo:{fam.name}/{e}", label=_unique_label(e, taken),
                                       path=Path(fam.experts[e]), origin="zoo") for e in chosen]
        session.tasks_path, session.unlabeled_path = Path(fam.tasks), Path(fam.unlabeled)
        return session
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
    for i, ref in enumerate(refs):
        if progress:
            progress(0.1 + 0.8 * i / len(refs), f"Opening {ref}…")
        label, path = _resolve_ref(ref, origin, config)
        session.sources.append(SourceModel(ref=ref, label=_unique_label(label, taken), path=path, origin=kind))
    from inference import model_kind

    session.kind = model_kind(json.loads((base_path / "config.json").read_text(encoding="utf-8")))
    if session.sources:
        expert_kind = model_kind(json.loads((session.sources[0].path / "config.json").read_text(encoding="utf-8")))
        session.kind = "classifier" if "classifier" in (session.kind, expert_kind) else "lm"
    return session


def require_models(session: Session) -> None:
    if session.base is None or not session.sources:
        raise SourceError("Choose the models first (Models tab: pick a preset or a zoo family, then Check models).")


# --- recipes from the merge controls -----------------------------------------------------------------------------

@dataclass
class MergeSettings:
    """What the Merge panel's controls say: a method, one weight per source (in source order), the method's other
    parameters (applied to every model), and a seed for random methods."""

    method: str
    weights: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: Any) -> MergeSettings:
        if not isinstance(raw, dict):
            raise RecipeError('Merge settings must be a JSON object like {"method": "ties", "weights": [0.5, 0.5], '
                              '"params": {"density": 0.5}, "seed": 0}.')
        try:
            weights = [float(w) for w in raw.get("weights") or []]
            seed = int(raw.get("seed") or 0)
        except (TypeError, ValueError):
            raise RecipeError("weights must be numbers (one per source model) and seed an integer.") from None
        return cls(method=str(raw.get("method") or ""), weights=weights, params=dict(raw.get("params") or {}),
                   seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "weights": list(self.weights), "params": dict(self.params), "seed": self.seed}


def method_param_names(method_name: str) -> list[str]:
    """The parameters the Merge panel shows for a method, besides the per-model weights."""
    method = get_method(method_name)
    return [p.name for p in method.params if p.name not in HIDDEN_PARAMS]


def check_settings(session: Session, settings: MergeSettings) -> None:
    """Problems the user can fix in the Merge panel, said in its terms (before the recipe validator's)."""
    require_models(session)
    method = get_method(settings.method)
    problems = []
    uses_weights = method.param("weight") is not None
    if uses_weights and len(settings.weights) != len(session.sources):
        problems.append(f"give one weight per source model: {len(session.sources)} sources "
                        f"({', '.join(session.labels)}), {len(settings.weights)} weights")
    n_inputs = len(session.sources) + (1 if method.base == "ignored" else 0)
    if n_inputs < method.min_models or (method.max_models is not None and n_inputs > method.max_models):
        wanted = (f"exactly {method.min_models}" if method.max_models == method.min_models
                  else f"at least {method.min_models}")
        problems.append(f"{method.name} takes {wanted} model(s) besides the base; you chose {len(session.sources)}: "
                        "change the sources in the Models tab or pick another method")
    for name, value in settings.params.items():
        param = method.param(name)
        if param is None or value is None or param.kind not in ("float", "int"):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            problems.append(f"{name} must be a number, got {value!r}")
            continue
        if (param.low is not None and number < param.low) or (param.high is not None and number > param.high):
            problems.append(f"{name} = {number:g} is outside [{param.low:g}, {param.high:g}]: {param.help} "
                            f"Set it between {param.low:g} and {param.high:g}")
    if uses_weights and settings.weights and not problems:
        normalize = settings.params.get("normalize", (method.param("normalize") or _NO).default)
        total = sum(settings.weights)
        if all(w == 0 for w in settings.weights):
            problems.append("every weight is 0, so the merge would add nothing: raise at least one model's weight")
        elif normalize is True and abs(total) < 1e-9:
            problems.append(f"the weights sum to zero ({' + '.join(f'{w:g}' for w in settings.weights)}) and "
                            f"{method.name} divides by that sum: make them add up to something other than 0, or "
                            "turn normalize off")
    if problems:
        raise RecipeError("Cannot merge: " + "; ".join(problems) + ".")


class _NoParam:
    default = None


_NO = _NoParam()


def build_recipe(session: Session, settings: MergeSettings, *, by: str = "label") -> Recipe:
    """The recipe the controls describe. `by="label"` names models by their labels (keys of the LiveMerger);
    `by="path"` by folder or Hub id, for the engine and for export."""
    check_settings(session, settings)
    method = get_method(settings.method)

    def name(model: SourceModel) -> str:
        if by == "label":
            return model.label
        return model.ref if model.origin == "hub" else _portable(model)

    global_params: dict[str, Any] = {}
    for key, value in settings.params.items():
        param = method.param(key)
        if param is None or value is None or key in HIDDEN_PARAMS:
            continue
        global_params[key] = _coerce_choice(value)
    models = []
    for i, source in enumerate(session.sources):
        params = {"weight": float(settings.weights[i])} if method.param("weight") is not None else {}
        models.append({"model": name(source), "parameters": params})
    data: dict[str, Any] = {"merge_method": method.name, "models": models, "dtype": "float32"}
    if method.base != "ignored":
        data["base_model"] = name(session.base)
    if global_params:
        data["parameters"] = global_params
    recipe = Recipe.from_dict(data)
    validate_recipe(recipe)
    return recipe


def _portable(model: SourceModel) -> str:
    """A zoo model's folder relative to the app (readable in an exported YAML, no server paths)."""
    from ui.hosting import APP_ROOT

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
    from merging.sources import open_model

    with open_model(path) as source:
        return {name: source.get(name) for name in source.tensor_names()}


def input_elements(session: Session) -> int:
    from merging.sources import open_model

    total = 0
    for model in [session.base, *session.sources]:
        with open_model(model.path) as source:
            total += sum(_numel(source.shape(n)) for n in source.tensor_names())
    return total


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def prepare_live(session: Session) -> bool:
    """Cache task vectors for in-memory merging when the models are small enough; True when live merging is on."""
    require_models(session)
    if input_elements(session) > LIVE_MAX_ELEMENTS:
        session.live = None
        return False
    try:
        from merging.live import LiveMerger
    except ImportError:  # an install without live merging still merges to folders
        session.live = None
        return False

    base = _read_all(session.base.path)
    models = {s.label: _read_all(s.path) for s in session.sources}
    num_layers = _num_layers(session.base.path)
    session.live = LiveMerger(base, models, num_layers)
    return True


def _num_layers(path: Path) -> int:
    from merging.sources import open_model

    with open_model(path) as source:
        return source.num_layers


def merge_live(session: Session, settings: MergeSettings) -> dict[str, torch.Tensor]:
    """Merge in memory and put the result into this session's models. Returns the merged tensors."""
    require_models(session)
    if session.live is None:
        raise MergeLabError("These models are too large to merge in memory: use Merge to folder.")
    recipe = build_recipe(session, settings, by="label")
    started = time.perf_counter()
    with session.lock:
        merged = session.live.merge(recipe, seed=settings.seed)
        session.merged_tensors = merged
        session.recipe = build_recipe(session, settings, by="path")
        session.merge_settings = settings
        session.merge_version += 1
        session.merged_path = None
        load_merged_into_models(session)
    session.last_merge_ms = (time.perf_counter() - started) * 1000
    return merged


def load_merged_into_models(session: Session) -> None:
    """Copy the merged tensors into the session's own model instances (created on first use)."""
    from ui.resources import private_copy

    merged = session.merged_tensors
    if merged is None:
        return
    if session.kind == "classifier":
        for source in session.sources:
            if source.label not in session.classifier_models:
                session.classifier_models[source.label] = private_copy(source.path)
            _load_tensors(session.classifier_models[source.label].model, merged)
    else:
        if session.chat_model is None or getattr(session.chat_model, "path", None) != session.base.path:
            session.chat_model = private_copy(session.base.path)
        _load_tensors(session.chat_model.model, merged)
    session.loaded_version = session.merge_version


@torch.no_grad()
def _load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    missing = [name for name in tensors if name not in state]
    if len(missing) == len(tensors):
        raise CompatibilityError("The merged tensors do not match the model's parameter names; merge to a folder "
                                 "and load it instead.")
    for name, value in tensors.items():
        target = state.get(name)
        if target is not None and target.shape == value.shape:
            target.copy_(value.to(target.dtype))


# --- merging to a folder -----------------------------------------------------------------------------------------

def merge_to_folder(
    session: Session,
    config: HostConfig,
    settings: MergeSettings,
    name: str = "merged",
    progress: Callable[[float, str], None] | None = None,
) -> Path:
    """Stream the merge to ./models/merged/<session>/<name> (replacing an earlier one of that name)."""
    from merging.engine import merge_to_folder as engine_merge
    from ui.resources import device

    recipe = build_recipe(session, settings, by="path")
    engine_recipe = build_recipe_for_engine(session, settings)
    out = session.merged_folder(config.models_dir, name)
    session.cancel.clear()

    def report(p: Any) -> None:
        if progress:
            eta = f", about {p.eta_s:.0f} s left" if getattr(p, "eta_s", None) else ""
            progress(p.fraction, f"Tensor {p.tensor_index}/{p.num_tensors}{eta}")

    engine_merge(engine_recipe, out, device=device(), seed=settings.seed, progress=report,
                 cancel=session.cancel, overwrite=True)
    if session.live is not None:
        merge_live(session, settings)  # the in-memory models show the same merge the folder holds
    with session.lock:
        session.recipe = recipe
        session.merge_settings = settings
        session.merged_path = out
        session.merge_version += 1
        if session.live is None:
            session.merged_tensors = None
            session.chat_model = None  # chat loads the folder through the cache
    return out


def build_recipe_for_engine(session: Session, settings: MergeSettings) -> Recipe:
    """The engine needs real folders (zoo models are named by folder, Hub models by their downloaded folder)."""
    recipe = build_recipe(session, settings, by="label")
    paths = {BASE_LABEL: str(session.base.path), **{s.label: str(s.path) for s in session.sources}}
    data = recipe.to_dict()
    for entry in data["models"]:
        entry["model"] = paths[entry["model"]]
    if data.get("base_model"):
        data["base_model"] = paths[data["base_model"]]
    return Recipe.from_dict(data)


def merged_chat_model(session: Session, quantization: str | None = None):
    """The model Chat talks to: the live-merged private copy, or the merged folder through the shared cache."""
    from ui.resources import shared_model

    require_models(session)
    if session.kind == "classifier":
        raise MergeLabError("These are classifiers: use the Classify tab to compare their labels.")
    if session.merged_tensors is not None and session.chat_model is not None:
        return session.chat_model
    if session.merged_path is not None:
        return shared_model(session.merged_path, quantization)
    raise MergeLabError("Merge the models first (Merge tab), then chat with the result.")
