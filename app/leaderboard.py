"""The leaderboard: a table of runs (sorted by a chosen column) and a runs × keypoints heatmap
of validation RMSE.

It is the page every session opens on, so it is kept light: the table is plain HTML (a
Tabulator would add half a megabyte of scripts to every page and a second of layout under
load), and so is the heatmap — one HTML table in one small component (:class:`HeatmapCells`)
instead of a Bokeh figure with axes, colour bar and tools, which cost every page open 0.1–0.3 s
of machine time (BENCHMARKS.md, "Dashboard under load"). Clicking a heatmap cell calls
``on_cell(run_id, keypoint)``; the page uses it to open the face grid on that run, worst faces
for that keypoint first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.palettes import Viridis256
from panel.reactive import ReactiveHTML

from app.background import in_document
from app.state import Store
from app.untrusted import html_text, markdown_text
from fkd_core.keypoints import KEYPOINT_NAMES

METRICS = {"plain": "per_keypoint", "flip-TTA": "per_keypoint_tta"}


def leaderboard_frame(runs) -> pd.DataFrame:
    """One row per usable run, best validation RMSE first."""
    rows = []
    for r in runs:
        train = r.config.get("train", {})
        rows.append({
            "run": r.id,
            "kind": r.kind,
            "arch": r.arch,
            "head": train.get("head", "–"),
            "width": train.get("width"),
            "params": r.config.get("model", {}).get("params"),
            "epochs": r.config.get("epochs_run"),
            "train min": round(r.config.get("train_seconds", 0.0) / 60.0, 1),
            "val RMSE": r.metrics.get("val_rmse"),
            "flip-TTA RMSE": r.metrics.get("val_rmse_tta"),
            "hold-out RMSE": r.metrics.get("holdout_rmse"),
            "hold-out TTA": r.metrics.get("holdout_rmse_tta"),
        })
    frame = pd.DataFrame(rows, columns=[
        "run", "kind", "arch", "head", "width", "params", "epochs", "train min", "val RMSE",
        "flip-TTA RMSE", "hold-out RMSE", "hold-out TTA"])
    if frame["hold-out RMSE"].isna().all():  # no run set rows aside: no empty columns
        frame = frame.drop(columns=["hold-out RMSE", "hold-out TTA"])
    return frame.sort_values("val RMSE", na_position="last").reset_index(drop=True)


#: Leaderboard columns shown with a fixed number of decimals (the rest as they are).
DECIMALS = {"val RMSE": 3, "flip-TTA RMSE": 3, "hold-out RMSE": 3, "hold-out TTA": 3,
            "params": 0}
#: Columns sorted from high to low (the rest from low to high: best RMSE first).
DESCENDING = ("params", "epochs", "train min", "width")


def sort_frame(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``frame`` sorted by ``column`` (missing values last; ties in leaderboard order)."""
    if column not in frame.columns:
        return frame
    return frame.sort_values(column, ascending=column not in DESCENDING, na_position="last",
                             kind="stable").reset_index(drop=True)


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if column in DECIMALS and isinstance(value, (int, float, np.number)):
        return f"{float(value):,.{DECIMALS[column]}f}"
    return html_text(value)


def table_html(frame: pd.DataFrame) -> str:
    """The runs as an HTML table; every cell escaped (run ids and config strings are
    untrusted)."""
    head = "".join(f"<th>{html_text(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(c, v)}</td>" for c, v in zip(frame.columns, row)) + "</tr>"
        for row in frame.itertuples(index=False))
    return f'<table class="fkd-runs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


TABLE_CSS = """
table.fkd-runs { border-collapse: collapse; font-size: 13px; }
table.fkd-runs th, table.fkd-runs td { padding: 3px 8px; border-bottom: 1px solid #ddd;
  text-align: left; white-space: nowrap; }
table.fkd-runs th { background: #f3f3f3; }
"""


NAN_COLOR = "#dddddd"
HEATMAP_CSS = """
table.fkd-heat { border-collapse: collapse; font-size: 11px; }
table.fkd-heat th { font-weight: normal; color: #333; padding: 2px 4px; }
table.fkd-heat th.kp { vertical-align: bottom; height: 9em; }
table.fkd-heat th.kp span { writing-mode: vertical-rl; transform: rotate(180deg);
  white-space: nowrap; }
table.fkd-heat th.run { text-align: right; white-space: nowrap; }
table.fkd-heat td { width: 44px; height: 30px; text-align: center; cursor: pointer;
  border: 1px solid white; }
table.fkd-heat td:hover { outline: 2px solid black; }
.fkd-heat-scale { display: flex; align-items: center; gap: 6px; margin-top: 6px;
  font-size: 11px; color: #333; }
.fkd-heat-scale .bar { width: 240px; height: 10px; }
"""


def colours(values: np.ndarray, low: float, high: float) -> list[str]:
    """Viridis colours of ``values`` on [low, high] (as a Bokeh LinearColorMapper maps them);
    grey where a value is missing."""
    n = len(Viridis256)
    scaled = (np.nan_to_num(values, nan=low) - low) / max(high - low, 1e-12)
    index = np.clip(np.floor(scaled * n), 0, n - 1).astype(int)
    return [Viridis256[i] if np.isfinite(v) else NAN_COLOR for i, v in zip(index, values)]


def heatmap_cells(data: dict) -> dict:
    """What the browser draws (:class:`HeatmapCells`) of :func:`heatmap_data`'s cells: the
    runs (rows), the keypoints (columns), each cell's fill, ink, label and title (the hover:
    run, keypoint, value) in ``data``'s order, and the colour scale's ends and gradient (None
    without values)."""
    values, low, high = data["rmse"], data["low"], data["high"]
    fill = colours(values, low, high)
    cells = [[fill[i], data["ink"][i], data["label"][i],
              f"{run} · {k} · " + (f"{v:.3f} px" if np.isfinite(v) else "–")]
             for i, (run, k, v) in enumerate(zip(data["run"], data["keypoint"], values))]
    stops = ", ".join(Viridis256[i] for i in range(0, 256, 32)) + f", {Viridis256[-1]}"
    scale = [f"{low:.2f}", f"{high:.2f} px", f"linear-gradient(to right, {stops})"] \
        if np.isfinite(values).any() else None
    return {"runs": list(dict.fromkeys(data["run"])), "keypoints": list(KEYPOINT_NAMES),
            "cells": cells,
            "scale": scale}


#: Draws HeatmapCells.heat into its div: every string goes in as text (textContent, title),
#: never as markup, so run ids need no escaping here.
_DRAW = """
const h = data.heat, table = document.createElement('table');
table.className = 'fkd-heat';
const head = table.createTHead().insertRow();
head.appendChild(document.createElement('th'));
for (const k of h.keypoints || []) {
  const th = document.createElement('th'), label = document.createElement('span');
  th.className = 'kp'; label.textContent = k; th.appendChild(label); head.appendChild(th);
}
const body = table.createTBody();
let i = 0;
for (const run of h.runs || []) {
  const row = body.insertRow(), name = document.createElement('th');
  name.className = 'run'; name.textContent = run; row.appendChild(name);
  for (let k = 0; k < h.keypoints.length; k++, i++) {
    const [fill, ink, label, title] = h.cells[i], td = row.insertCell();
    td.dataset.i = i; td.style.background = fill; td.style.color = ink;
    td.textContent = label; td.title = title;
  }
}
const parts = [table];
if (h.scale) {
  const box = document.createElement('div'), bar = document.createElement('span');
  const low = document.createElement('span'), high = document.createElement('span');
  box.className = 'fkd-heat-scale'; bar.className = 'bar'; bar.style.background = h.scale[2];
  low.textContent = h.scale[0]; high.textContent = h.scale[1];
  box.append(low, bar, high); parts.push(box);
}
cells.replaceChildren(...parts);
"""


class HeatmapCells(ReactiveHTML):
    """The heatmap as one HTML table (:func:`heatmap_cells`), drawn by the browser, that
    reports clicks: the browser sets ``pick`` to the clicked cell's index and a click count
    (so clicking the same cell again is a change). The page validates it before using it:
    it comes from the browser."""

    heat = param.Dict(default={}, doc="The cells to draw (heatmap_cells).")
    pick = param.String(default="", doc="'<cell index> <click count>', set by the browser.")

    _template = '<div id="cells" onclick="${script(\'clicked\')}"></div>'
    _scripts = {"render": _DRAW, "heat": _DRAW, "clicked": """
        const td = event.target.closest('td[data-i]');
        if (td !== null) {
          state.clicks = (state.clicks || 0) + 1;
          data.pick = td.dataset.i + ' ' + state.clicks;
        }"""}


def heatmap_data(runs, metric: str = "plain") -> dict:
    """The heatmap's cells, one per (run, keypoint), run by run (RMSE NaN where unknown; label
    and ink colour), and its colour scale's ends."""
    key = METRICS[metric]
    run_ids, names, values = [], [], []
    for r in runs:
        per_kp = r.metrics.get(key) or {}
        for name in KEYPOINT_NAMES:
            v = per_kp.get(name)
            run_ids.append(r.id)
            names.append(name)
            values.append(np.nan if v is None else float(v))
    values = np.asarray(values, dtype=float)
    low, high = value_range(values)
    bright = (np.nan_to_num(values, nan=low) - low) / (high - low) > 0.6
    return {
        "run": run_ids, "keypoint": names, "rmse": values,
        "label": ["–" if not np.isfinite(v) else f"{v:.1f}" for v in values],
        "ink": ["black" if b else "white" for b in bright] if np.isfinite(values).any()
        else ["black"] * len(values),
        "low": low, "high": high,
    }


def value_range(values: np.ndarray) -> tuple[float, float]:
    """The colour scale's ends: the smallest and largest known value (never equal)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return 0.0, 1.0
    return float(finite.min()), float(max(finite.max(), finite.min() + 1e-6))


class Leaderboard(pn.viewable.Viewer):
    metric = param.Selector(default="plain", objects=list(METRICS),
                            doc="Per-keypoint RMSE with or without flip test-time augmentation.")
    sort_by = param.Selector(default="val RMSE", objects=["val RMSE"],
                             doc="Column the runs are sorted by.")

    def __init__(self, store: Store, on_cell: Callable[[str, str], None] | None = None,
                 **params):
        super().__init__(**params)
        self.store = store
        self.on_cell = on_cell
        self._runs = []
        self._frame = leaderboard_frame([])
        self._table = pn.pane.HTML("", css_classes=["fkd-leaderboard"], stylesheets=[TABLE_CSS],
                                   margin=(0, 10))
        self._sort = pn.widgets.Select.from_param(self.param.sort_by, label="sort by", width=160,
                                                  css_classes=["fkd-sort-runs"])
        self._data = heatmap_data([])
        self._cells = HeatmapCells(css_classes=["fkd-heatmap"], stylesheets=[HEATMAP_CSS],
                                   margin=(0, 10))
        self._cells.param.watch(self._on_pick, "pick")
        self._empty = pn.pane.HTML("", visible=False, css_classes=["fkd-no-runs"])
        self._broken = pn.pane.Alert("", alert_type="warning", visible=False,
                                     css_classes=["fkd-broken-runs"])
        self._heatmap_box = pn.Column(
            pn.pane.Markdown(
                "### RMSE per keypoint (px, validation)\nClick a cell to see that run's faces, "
                "worst first for that keypoint."
            ),
            pn.widgets.RadioButtonGroup.from_param(self.param.metric, label="predictions"),
            self._cells,
        )
        self._runs_heading = pn.pane.Markdown("### Runs")
        self._table_box = pn.Column(self._runs_heading, self._sort, self._table)
        self._layout = pn.Column(self._empty, self._broken, self._table_box, self._heatmap_box)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the run list (cheap when nothing changed) and redraw table and heatmap."""
        found = self.store.runs()
        self._runs = self.store.ok_runs()
        broken = [r for r in found if not r.ok]
        self._broken.object = "**Broken run folders** (left out):\n\n" + "\n".join(
            f"- {markdown_text(r.id)}: {markdown_text(r.error or '')}" for r in broken)
        self._broken.visible = bool(broken)
        if not self._runs:
            self._empty.object = (
                "<h2>No trained runs yet</h2><p>There are no finished runs in "
                f"<code>{html_text(self.store.models_dir)}</code>. Make one with:</p>"
                f"<pre>{html_text(self.store.train_command())}</pre><p>then reload this page.</p>"
            )
        self._empty.visible = not self._runs
        self._frame = leaderboard_frame(self._runs)
        columns = list(self._frame.columns)
        self.param.sort_by.objects = columns
        if self.sort_by not in columns:
            self.sort_by = "val RMSE"
        self._render_table()
        self._table_box.visible = bool(self._runs)
        self._heatmap_box.visible = bool(self._runs)
        self.update_heatmap()

    @param.depends("sort_by", watch=True)
    @in_document
    def _show_table(self) -> None:
        self._render_table()

    def _render_table(self) -> None:
        self._table.object = table_html(sort_frame(self._frame, self.sort_by))

    @param.depends("metric", watch=True)
    @in_document
    def _metric_changed(self) -> None:
        self.update_heatmap()

    def update_heatmap(self) -> None:
        """Replace the heatmap's table (colour range included); the component itself stays."""
        self._data = heatmap_data(self._runs, self.metric)
        self._cells.heat = heatmap_cells(self._data)

    @in_document  # one held update: the grid arrives as one message, not a dozen
    def _on_pick(self, event) -> None:
        try:
            i = int(str(event.new).split(" ")[0])
        except ValueError:
            return  # not a click this page's script would send
        if not 0 <= i < len(self._data["run"]) or self.on_cell is None:
            return
        self.on_cell(self._data["run"][i], self._data["keypoint"][i])

    def __panel__(self):
        return self._layout
