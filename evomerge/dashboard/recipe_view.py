"""Recipes as pictures: a parameter-space recipe as a heatmap (one row per expert and varied
parameter, one column per layer or gradient anchor), a data-flow recipe as a strip (slot ->
source model, source layer, input scale). Read from the stored recipe alone (mergekit's value
forms: a scalar, a list per layer or of gradient anchors, a list of ``{filter, value}`` entries),
so the dashboard needs neither the models nor the space's codec."""

from __future__ import annotations

from typing import Any


def _short(model: str) -> str:
    """A model reference as a row label: its last path component (``zoo://expert_add`` -> expert_add)."""
    return model.rstrip("/").rsplit("/", 1)[-1] or model


def _entries(value: Any) -> list[tuple[str | None, list[float]]]:
    """A parameter value as (filter or None for the rest, values per layer or anchor)."""
    if isinstance(value, int | float):
        return [(None, [float(value)])]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out: list[tuple[str | None, list[float]]] = []
        for entry in value:
            for _f, vals in _entries(entry.get("value")):
                out.append((entry.get("filter"), vals))
        return out
    if isinstance(value, list):
        return [(None, [float(v) for v in value if isinstance(v, int | float)])]
    return []


def ps_rows(recipe: dict[str, Any], params: list[str]) -> list[tuple[str, list[float]]]:
    """(label, values) for each expert's and each global varied parameter of a PS recipe."""
    rows: list[tuple[str, list[float]]] = []
    for m in recipe.get("models") or []:
        for p in params:
            if p in (m.get("parameters") or {}):
                for flt, vals in _entries(m["parameters"][p]):
                    rows.append((f"{_short(m['model'])} {p}" + (f" [{flt}]" if flt else ""), vals))
    for p in params:
        if p in (recipe.get("parameters") or {}):
            for flt, vals in _entries(recipe["parameters"][p]):
                rows.append((f"global {p}" + (f" [{flt}]" if flt else ""), vals))
    return rows


def ps_heatmap(recipes: list[dict[str, Any]], params: list[str]) -> dict[str, Any]:
    """The best recipe's rows and the elementwise mean over all of ``recipes`` (best first), as
    rectangular matrices (shorter rows padded with None); rows are labelled, columns numbered."""
    per = [ps_rows(r, params) for r in recipes]
    labels = [label for label, _ in per[0]] if per else []
    width = max((len(v) for rows in per for _, v in rows), default=0)

    def pad(v: list[float | None]) -> list[float | None]:
        return list(v) + [None] * (width - len(v))

    best = [pad(list(v)) for _, v in per[0]] if per else []
    mean: list[list[float | None]] = []
    for j, label in enumerate(labels):
        same = [rows[j][1] for rows in per if j < len(rows) and rows[j][0] == label]
        cols = []
        for c in range(width):
            vals = [v[c] for v in same if c < len(v)]
            cols.append(sum(vals) / len(vals) if vals else None)
        mean.append(cols)
    return {"kind": "ps", "labels": labels, "columns": list(range(width)), "best": best, "mean": mean,
            "count": len(recipes)}


def dfs_slots(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The layer path of a passthrough recipe: per slot its source model, layer and input scale,
    or ``identity``; the empty end slices that only name where embeddings and head come from are
    not slots."""
    slots = []
    for sl in recipe.get("slices") or []:
        if sl.get("identity"):
            slots.append({"slot": len(slots), "identity": True})
            continue
        src = (sl.get("sources") or [{}])[0]
        lo, hi = (src.get("layer_range") or [0, 0])[:2]
        for layer in range(lo, hi):
            slots.append({"slot": len(slots), "identity": False, "model": _short(str(src.get("model", "?"))),
                          "layer": layer, "scale": sl.get("input_scale", 1.0)})
    return slots


def dfs_strip(recipes: list[dict[str, Any]]) -> dict[str, Any]:
    """The best recipe's path, and per slot how often the top recipes put each source layer there."""
    paths = [dfs_slots(r) for r in recipes]
    share: list[dict[str, float]] = []
    width = max((len(p) for p in paths), default=0)
    for s in range(width):
        seen: dict[str, int] = {}
        for p in paths:
            if s < len(p):
                key = "identity" if p[s]["identity"] else f"{p[s]['model']}:{p[s]['layer']}"
                seen[key] = seen.get(key, 0) + 1
        share.append({k: v / len(paths) for k, v in seen.items()})
    return {"kind": "dfs", "best": paths[0] if paths else [], "share": share, "count": len(recipes)}


def recipe_picture(space: dict[str, Any], recipes: list[dict[str, Any]]) -> dict[str, Any]:
    """The heatmap (PS) or the path strip (DFS, PS+DFS) of ``recipes``, best first."""
    if recipes and "slices" in recipes[0] and not recipes[0].get("models"):
        return dfs_strip(recipes)
    return ps_heatmap(recipes, sorted((space.get("vary") or {}).keys()))
