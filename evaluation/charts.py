"""Plotly figure builders: pure functions of results (the objects or their `to_dict()` form, as saved in JSON).

- `agreement_figure`: per task, the merged model's agreement with each source expert, and its accuracy.
- `sweep_heatmap`: a (weight × density) sweep of one method with the best point marked (none when all tie).
- `interference_heatmap`: one interference metric over layers × module types (blank rows and columns left out).
- `conflict_by_layer_figure`: sign conflicts per layer beside the rate of unrelated random vectors.
- `election_figure`: per layer, the share of TIES' sign elections each task wins.
- `cosine_heatmap`: task × task cosine similarity of the task vectors (overall, or one layer/module group).
- `kept_heatmap`: the share of each task vector TIES trimming keeps, per layer.
- `loss_figure`, `coefficients_figure`: a learned merge's loss curve and its coefficients (tasks × tensors).
- `comparison_figure`, `comparison_markdown`: several merges' EvalResults side by side (learned vs baselines).
"""

from __future__ import annotations

import re
from typing import Any

import plotly.graph_objects as go

from evaluation.axes import Axis
from evaluation.stats import Interval, ScoredSetError, best_indices, direction, wilson_interval

_PERCENT_AXIS = {"range": [0, 1.1], "tickformat": ".0%"}  # room above 100 % for the bar labels


def _as_dict(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else result


def _label(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


ZERO_BAR = 0.01  # a 0 % bar is drawn this tall (labelled 0 %; hover shows 0): a bar of height 0 is not drawn at all


def _bar_values(values: list[float | None]) -> dict[str, Any]:
    """y (0 drawn as a sliver, so a 0 % score is seen, not missing), its label outside the bar, and the true value
    for the hover text."""
    return {"y": [ZERO_BAR if v == 0 else v for v in values], "text": [_label(v) for v in values],
            "customdata": values, "textposition": "outside", "cliponaxis": False}


def merge_title(title: str, data: dict[str, Any]) -> str:
    """`title`, naming the merge the numbers came from (merge #N) when the result records it."""
    version = (data.get("merge") or {}).get("version")
    return f"{title} (merge #{version})" if version is not None else title


def agreement_figure(result: Any, title: str = "Agreement of the merged model with each expert, per task") -> go.Figure:
    """Grouped bars: for each task, the share of examples where the merged model gives each source's answer, and
    its accuracy where answers are known. The title names the merge scored when the result says which."""
    data = _as_dict(result)
    tasks = data["tasks"]
    names = list(tasks)
    sources = list(dict.fromkeys(s for t in tasks.values() for s in t["agreement_by_source"]))
    fig = go.Figure()
    for source in sources:
        values = [tasks[t]["agreement_by_source"].get(source) for t in names]
        fig.add_bar(name=f"agrees with {source}", x=names, **_bar_values(values),
                    hovertemplate=f"%{{x}}: agrees with {source} on %{{customdata:.0%}}<extra></extra>")
    accuracies = [tasks[t]["accuracy"] for t in names]
    if any(v is not None for v in accuracies):
        fig.add_bar(name="accuracy", x=names, **_bar_values(accuracies), marker_pattern_shape="/",
                    hovertemplate="%{x}: accuracy %{customdata:.0%}<extra></extra>")
    fig.update_layout(title=merge_title(title, data), barmode="group",
                      yaxis=dict(title="share of examples", **_PERCENT_AXIS), xaxis_title="task",
                      legend={"orientation": "h", "y": -0.2}, height=420, margin={"t": 60, "b": 40})
    return fig


def _sweep_grid(data: dict[str, Any], method: str, metric: str, axes: tuple[str, str | None]
                ) -> tuple[list, list, list[list]]:
    """(row values, column values, z[row][column]) of one method's points; each value is under its axis's key."""
    points = [p for p in data["points"] if p["method"] == method]

    def value(point: dict) -> float | None:
        return _point_value(point, metric)

    order = lambda v: (v is None, v or 0)
    at = lambda p: (p.get(axes[0]), p.get(axes[1]) if axes[1] else None)
    rows = sorted({at(p)[0] for p in points}, key=order)
    columns = sorted({at(p)[1] for p in points}, key=order)
    lookup = {at(p): value(p) for p in points}
    return rows, columns, [[lookup.get((r, c)) for c in columns] for r in rows]


def _point_value(point: dict[str, Any], metric: str) -> float | None:
    """A sweep point's (results-file form) value of `metric`: a mean over tasks, or "<task>.<metric>"."""
    task, _, name = metric.rpartition(".")
    return point["scores"][task][name] if task else point["summary"][name]


def _sweep_best(data: dict[str, Any]) -> tuple[float | None, str | None]:
    """The value the best cells hold, or None and why no point is best (stats.best_indices over every point)."""
    values = [_point_value(p, data["metric"]) for p in data["points"]]
    indices, note = best_indices(values)
    return (values[indices[0]] if indices else None), note


def _axis_title(axis: str | None) -> str:
    return Axis(axis).title if axis else ""


def sweep_heatmap(sweep: Any, method: str | None = None, metric: str | None = None) -> go.Figure:
    """One method's grid (rows × columns of the swept settings, weight × density by default), coloured by the
    metric; the best cell keeps its number and gets a star beside it (each one when several tie for the top). When
    every point scores the same or the top is 0, no cell is starred and the title says why."""
    data = _as_dict(sweep)
    method = method or data["grid"]["methods"][0]
    metric = metric or data["metric"]
    rows_axis, columns_axis = data["grid"].get("axes") or ["weight", "density"]  # results from before axes
    rows, columns, z = _sweep_grid(data, method, metric, (rows_axis, columns_axis))
    single = columns == [None]
    x = [("all points" if single else "—") if c is None else f"{c:g}" for c in columns]
    y = ["—" if r is None else f"{r:g}" for r in rows]
    top, note = _sweep_best(data)
    text = [[_label(v) for v in row] for row in z]
    if metric == data["metric"] and top is not None:  # every cell at the top (several when they tie) is starred
        text = [[f"★ {t}" if v == top else t for t, v in zip(trow, zrow, strict=True)]
                for trow, zrow in zip(text, z, strict=True)]  # the number stays readable beside the star
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=y, zmin=0, zmax=1, colorscale="Viridis", colorbar={"title": metric},
        text=text, texttemplate="%{text}", textfont={"size": 13},
        hovertemplate=f"{_axis_title(rows_axis)} %{{y}}, {_axis_title(columns_axis) or 'point'} %{{x}}: "
                      "%{z:.1%}<extra></extra>",
    ))
    what = f"{_axis_title(rows_axis)} × {_axis_title(columns_axis)}" if columns_axis else _axis_title(rows_axis)
    fig.update_layout(title=f"{method}: {metric} over {what}" + (f" ({note})" if note else ""),
                      xaxis={"title": _axis_title(columns_axis) or "(one setting varied)", "type": "category"},
                      yaxis={"title": _axis_title(rows_axis), "type": "category"}, height=440,
                      margin={"t": 60, "b": 40}, showlegend=False)
    return fig


def _layer_names(layers: list[str]) -> list[str]:
    return [f"layer {k}" if k != "none" else "outside layers" for k in layers]


def _present(z: list[list[float | None]]) -> tuple[list[int], list[int]]:
    """Rows and columns of a grid that hold at least one value."""
    rows = [i for i, row in enumerate(z) if any(v is not None for v in row)]
    columns = [j for j in range(len(z[0]) if z else 0) if any(row[j] is not None for row in z)]
    return rows, columns


MAX_LABELLED_CELLS = 120  # beyond this many cells the numbers are unreadable: colour and hover only


def interference_heatmap(report: Any, metric: str = "sign_conflict_rate") -> go.Figure:
    """Module types (rows) × layers (columns) of one per-group metric: sign_conflict_rate, mean_cosine or
    mean_jaccard. Module types and layers with no value anywhere (the experts did not change them, so there is
    nothing to compare) are left out and named under the title; numbers are written in the cells only when they
    fit (hover shows them always)."""
    data = _as_dict(report)
    layers, modules = list(data["by_layer"]), list(data["by_module"])
    cells = {(c["layer"], c["module"]): c[metric] for c in data["cells"]}
    z = [[cells.get((layer, module)) for layer in layers] for module in modules]
    rows, columns = _present(z)
    hidden = [m for i, m in enumerate(modules) if i not in rows]
    z = [[z[i][j] for j in columns] for i in rows]
    modules, layers = [modules[i] for i in rows], [layers[j] for j in columns]
    scale = {"sign_conflict_rate": ("OrRd", 0, 1), "mean_cosine": ("RdBu", -1, 1), "mean_jaccard": ("Blues", 0, 1)}
    colorscale, low, high = scale.get(metric, ("Viridis", None, None))
    labelled = len(modules) * len(layers) <= MAX_LABELLED_CELLS
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"L{k}" if k != "none" else "outside" for k in layers], y=modules, zmin=low, zmax=high,
        colorscale=colorscale, colorbar={"title": metric.replace("_", " ")}, xgap=1, ygap=1,
        text=[[_label(v) for v in row] for row in z], texttemplate="%{text}" if labelled else None,
        textfont={"size": 12}, hovertemplate="%{y}, layer %{x}: %{z:.0%}<extra></extra>",
    ))
    overall = data["overall"].get(metric)
    suffix = f" (overall {overall:.0%})" if isinstance(overall, float) else ""
    notes = [f"not shown: {', '.join(hidden)} (the experts left them unchanged: no task vector, nothing to conflict)"
             ] if hidden else []
    if any(v is None for row in z for v in row):
        notes.append("blank: no such tensor in that layer (embeddings and heads sit outside the layers)")
    note = "".join(f"<br><sub>{text}</sub>" for text in notes)
    fig.update_layout(title=f"{metric.replace('_', ' ').capitalize()} per layer and module{suffix}{note}",
                      height=420, margin={"t": 60 + 20 * len(notes), "b": 40}, xaxis={"type": "category"},
                      font={"size": 14})
    return fig


def conflict_by_layer_figure(report: Any, reference: float | None = None) -> go.Figure:
    """Sign-conflict rate per layer (bars), with the rate unrelated random task vectors would give as a dashed line
    (`reference`, evaluation.interference.random_conflict_rate): bars under the line pull together more than chance.
    Layers with no task vector are left out and counted in the title."""
    data = _as_dict(report)
    layers = [k for k, v in data["by_layer"].items() if v.get("sign_conflict_rate") is not None]
    skipped = len(data["by_layer"]) - len(layers)
    values = [data["by_layer"][k]["sign_conflict_rate"] for k in layers]
    fig = go.Figure(go.Bar(x=[f"L{k}" if k != "none" else "outside" for k in layers], y=values,
                           text=[_label(v) for v in values], textposition="inside", insidetextanchor="middle",
                           textfont={"color": "white"}, marker_color="#d6604d", name="measured",
                           hovertemplate="layer %{x}: %{y:.0%} of shared entries disagree in sign<extra></extra>"))
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dash", line_color="#444", annotation_position="top right",
                      annotation_text=f"unrelated random vectors: {reference:.0%}", annotation_yshift=4,
                      annotation_bgcolor="rgba(255,255,255,0.85)")
    note = (f"<br><sub>{skipped} layer(s) where no entry is changed by two experts left out</sub>" if layers
            else "<br><sub>no entry is changed by two experts: nothing can conflict</sub>" if skipped else "")
    fig.update_layout(title=f"Where the experts disagree: sign conflicts per layer{note}", height=380,
                      yaxis={"title": "entries with opposite signs", **_PERCENT_AXIS}, xaxis={"type": "category"},
                      margin={"t": 70, "b": 40}, font={"size": 14}, showlegend=False)
    return fig


def election_figure(report: Any) -> go.Figure:
    """Per layer, the share of contested entries (kept by trimming in two vectors, opposite signs) each task's sign
    wins in TIES' election: where a task loses, its expert's change is dropped from the merge, so a task that loses
    most layers is the one whose accuracy the merge costs."""
    data = _as_dict(report)
    layers = [k for k, v in data["by_layer"].items() if v.get("contested")]
    fig = go.Figure()
    for task in data["tasks"]:
        values = [data["by_layer"][k]["election_wins"][task] for k in layers]
        fig.add_bar(name=task, x=[f"L{k}" if k != "none" else "outside" for k in layers], y=values,
                    hovertemplate=f"layer %{{x}}: {task}'s sign wins %{{y:.0%}} of the contested entries<extra></extra>")
    sub = ("share of the contested entries each task's sign wins; the loser's change is dropped there" if layers
           else "no contested entries: no entry is kept by two experts with opposite signs")
    fig.update_layout(title=f"Who wins TIES' sign elections, per layer<br><sub>{sub}</sub>", barmode="group",
                      height=380, yaxis={"title": "elections won", **_PERCENT_AXIS}, xaxis={"type": "category"},
                      legend={"orientation": "h", "y": -0.2}, margin={"t": 70, "b": 40}, font={"size": 14})
    return fig


def cosine_heatmap(report: Any, layer: str | None = None, module: str | None = None) -> go.Figure:
    """Task × task cosine similarity of the task vectors: overall, or of one layer or module type."""
    data = _as_dict(report)
    group = data["by_layer"][layer] if layer is not None else data["by_module"][module] if module else data["overall"]
    tasks, z = data["tasks"], group["cosine"]
    where = f" (layer {layer})" if layer is not None else f" ({module})" if module else ""
    fig = go.Figure(go.Heatmap(z=z, x=tasks, y=tasks, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                               text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
                               colorbar={"title": "cosine"}))
    fig.update_layout(title=f"Cosine similarity between task vectors{where}", height=400, margin={"t": 60, "b": 40},
                      yaxis={"autorange": "reversed"})
    return fig


def kept_heatmap(report: Any, by: str = "kept_mass_share") -> go.Figure:
    """Tasks (rows) × layers (columns): the share of each task vector TIES trimming keeps at the report's density
    (by magnitude mass, or by count with by="kept_count_share")."""
    data = _as_dict(report)
    layers, tasks = list(data["by_layer"]), data["tasks"]
    z = [[data["by_layer"][layer][by].get(task) for layer in layers] for task in tasks]
    fig = go.Figure(go.Heatmap(z=z, x=_layer_names(layers), y=tasks, zmin=0, zmax=1, colorscale="Greens",
                               text=[[_label(v) for v in row] for row in z], texttemplate="%{text}",
                               colorbar={"title": "kept"}))
    what = "magnitude" if by == "kept_mass_share" else "entries"
    # Two short title lines (one long line is clipped in a half-width plot); rows top-down in task order, as in
    # the cosine chart.
    fig.update_layout(title=f"Kept by TIES trimming at density {data['density']:g}<br>"
                            f"<sub>share of each task vector's {what}</sub>", height=400,
                      margin={"t": 70, "b": 40}, yaxis={"autorange": "reversed"})
    return fig


# --- learned merging ---------------------------------------------------------------------------------------------


def loss_figure(losses: list[float], method: str) -> go.Figure:
    """The training loss per step of a learned merge."""
    fig = go.Figure(go.Scatter(x=list(range(1, len(losses) + 1)), y=losses, mode="lines", name="loss"))
    fig.update_layout(title=f"{method} loss", xaxis_title="step", yaxis_title="loss", height=320,
                      margin={"t": 50, "b": 40})
    return fig


def short_tensor_name(name: str) -> str:
    """model.layers.3.self_attn.q_proj.weight -> L3 q_proj (bias kept): tick labels a person can read."""
    match = re.search(r"(?:layers|layer|h|blocks)\.(\d+)\.(.*)", name)
    tail = match.group(2) if match else name.removeprefix("model.").removeprefix("bert.")
    tail = tail.replace("self_attn.", "").replace("mlp.", "").replace("attention.", "")
    tail = tail.removesuffix(".weight")
    return f"L{match.group(1)} {tail}" if match else tail


def coefficients_figure(tasks: list[str], names: list[str], coefficients: Any) -> go.Figure:
    """Learned coefficients as a tasks × tensors heatmap (one column when they are task-wise)."""
    values = coefficients.detach().float().cpu()
    if values.dim() == 1:
        values = values[:, None]
        names = ["all tensors"]
    labels = [short_tensor_name(n) for n in names]
    fig = go.Figure(go.Heatmap(z=values.tolist(), x=labels, y=tasks, colorscale="Viridis",
                               colorbar={"title": "λ"}, hovertemplate="%{y} · %{x}: λ = %{z:.3f}<extra></extra>"))
    fig.update_layout(title="Learned coefficients (tasks × tensors, in layer order)", height=360,
                      xaxis={"showticklabels": len(names) <= 60, "tickangle": -60, "tickfont": {"size": 9}},
                      margin={"t": 50, "b": 90})
    return fig


def comparison_figure(scores: dict[str, Any], error: ScoredSetError | None = None) -> go.Figure:
    """Mean accuracy and agreement of several merges (name -> EvalResult), side by side; with `error`, each bar
    carries the scored set's 95 % error (evaluation.stats.scored_set_error)."""
    fig = go.Figure()
    for metric in ("accuracy", "agreement"):
        bars: dict[str, Any] = {}
        if error is not None:
            halves = [error.halfwidth.get(name, {}).get(metric) for name in scores]
            bars["error_y"] = {"type": "data", "array": [h or 0.0 for h in halves], "visible": True}
        fig.add_bar(name=metric, x=list(scores), y=[s.mean(metric) for s in scores.values()], **bars)
    title = "Learned merge beside task arithmetic and TIES (mean over tasks"
    fig.update_layout(title=title + (", ± the scored set's 95 % error)" if error is not None else ")"),
                      barmode="group", yaxis={"range": [0, 1.1], "tickformat": ".0%"}, height=360,
                      margin={"t": 50, "b": 40})
    return fig


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _mean_cell(result: Any, metric: str, error: ScoredSetError | None, name: str) -> str:
    half = None if error is None else error.halfwidth.get(name, {}).get(metric)
    mean = result.mean(metric)
    return _pct(mean) if half is None or mean is None else f"{_pct(mean)} ±{100 * half:.0f}"


def _points(interval: Interval | None) -> str:
    if interval is None:
        return "–"
    return f"{100 * interval.mean:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"


def _verdict(difference: Interval | None) -> str:
    if difference is None:
        return "–"
    worded = direction(difference)
    return f"**{worded}** (established)" if worded != "no difference established" else worded


def paired_markdown(error: ScoredSetError) -> str:
    """The reference (learned) merge minus each other merge on the same examples, in points with the 95 % interval,
    each metric worded by its interval (established only when it excludes 0)."""
    header = (f"| {error.reference} minus | Δ accuracy, points [95 % CI] | accuracy | Δ agreement, points [95 % CI] "
              "| agreement |")
    lines = [header, "|---|---|---|---|---|"]
    for name, diffs in error.paired.items():
        acc, agr = diffs.get("accuracy"), diffs.get("agreement")
        lines.append(f"| {name} | {_points(acc)} | {_verdict(acc)} | {_points(agr)} | {_verdict(agr)} |")
    return "\n".join(lines)


def comparison_markdown(scores: dict[str, Any], notes: dict[str, str] | None = None,
                        error: ScoredSetError | None = None) -> str:
    """A table of merges × tasks with accuracy on the true answers and agreement with the task's expert apart
    ("acc / agr"; – where a task has no answers or no expert), their means over tasks, and a note per merge (how a
    baseline's settings were chosen). With `error` (evaluation.stats.scored_set_error): each mean ± the scored set's
    95 % error, and a second table of paired differences (the learned merge minus each baseline) worded by their
    intervals; without it, a note on how uncertain a share of that many examples is."""
    notes = notes or {}
    tasks = list(next(iter(scores.values())).scores)
    lines = ["| merge | " + " | ".join(tasks) + " | mean accuracy | mean agreement | settings |",
             "|---" * (len(tasks) + 4) + "|"]
    for name, result in scores.items():
        cells = [f"{_pct(result.scores[t].accuracy)} / {_pct(result.scores[t].agreement)}" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_cell(result, 'accuracy', error, name)} | "
                     f"{_mean_cell(result, 'agreement', error, name)} | {notes.get(name, '')} |")
    fewest = min(sc.examples for result in scores.values() for sc in result.scores.values())
    cells_note = ("(cells: accuracy on the true answers / agreement with the task's expert, over the examples the "
                  "expert answered; \"no answer\" never agrees. ")
    if error is None:
        low, high = wilson_interval(fewest // 2, fewest) if fewest else (0.0, 1.0)
        return "\n".join(lines) + ("\n\n" + cells_note + f"One run on {fewest} examples per task: a share near 50 % "
                                   f"is uncertain by ±{(high - low) / 2:.0%} (95 % Wilson interval); differences "
                                   "smaller than that are not established)")
    return ("\n".join(lines) + "\n\n" + paired_markdown(error) + "\n\n" + cells_note
            + f"One run on {fewest} or more examples per task. ±: the scored set's 95 % error of the mean over tasks "
            "(binomial, at each task's share). Δ: the learned merge minus a baseline on the same examples, with its "
            "paired 95 % interval; a difference is established only when that interval excludes 0. The learning "
            "inputs' draw is not varied here: bench/learned_experiments.py repeats it over draws.)")


def search_figure(result: Any) -> go.Figure:
    """A merge search: each proposal's metric on the search split (dots), the best so far (line), and the best grid
    point's value on the same split (dashed) for comparison."""
    values = [t.search_value for t in result.trials]
    running, best = [], None
    for value in values:
        best = value if best is None or (value is not None and value > best) else best
        running.append(best)
    numbers = list(range(1, len(values) + 1))
    fig = go.Figure([
        go.Scatter(x=numbers, y=values, mode="markers", name="proposal", marker={"size": 9}),
        go.Scatter(x=numbers, y=running, mode="lines", name="best so far", line={"shape": "hv"}),
    ])
    grid_best = result.grid_best
    if grid_best is not None and grid_best.search_value is not None:
        fig.add_hline(y=grid_best.search_value, line_dash="dash",
                      annotation_text=f"best of the {len(result.grid)}-point grid")
    fig.update_layout(title=f"{result.sampler} search of {result.method}: {result.metric} on the search split",
                      xaxis={"title": "proposal", "dtick": 1}, yaxis={"title": result.metric, "range": [0, 1.05],
                                                                      "tickformat": ".0%"},
                      height=380, margin={"t": 60, "b": 40})
    return fig
