"""The leaderboard: a table of runs (sorted by a chosen column) and a runs × keypoints heatmap
of validation RMSE.

It is the page every session opens on, so it is kept light: the table is plain HTML (a
Tabulator would add half a megabyte of scripts to every page and a second of layout under
load). Clicking a heatmap cell calls ``on_cell(run_id, keypoint)``; the page uses it to open
the face grid on that run, worst faces for that keypoint first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import (
    BasicTicker,
    ColorBar,
    ColumnDataSource,
    FactorRange,
    HoverTool,
    LinearColorMapper,
    TapTool,
)
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

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


def heatmap_data(runs, metric: str = "plain") -> dict:
    """Columns for the heatmap's rects: one per (run, keypoint), NaN where unknown."""
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
    return {
        "run": run_ids, "keypoint": names, "rmse": values,
        "label": ["–" if not np.isfinite(v) else f"{v:.1f}" for v in values],
        "ink": ["black"] * len(values),
    }


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
        self._source = ColumnDataSource(heatmap_data([]))
        self._mapper = LinearColorMapper(palette=Viridis256, nan_color="#dddddd")
        self._figure = self._heatmap()
        self._source.selected.on_change("indices", self._on_tap)
        self._empty = pn.pane.HTML("", visible=False, css_classes=["fkd-no-runs"])
        self._broken = pn.pane.Alert("", alert_type="warning", visible=False,
                                     css_classes=["fkd-broken-runs"])
        self._heatmap_box = pn.Column(
            pn.pane.Markdown(
                "### RMSE per keypoint (px, validation)\nClick a cell to see that run's faces, "
                "worst first for that keypoint."
            ),
            pn.widgets.RadioButtonGroup.from_param(self.param.metric, label="predictions"),
            pn.pane.Bokeh(self._figure),
        )
        self._runs_heading = pn.pane.Markdown("### Runs")
        self._table_box = pn.Column(self._runs_heading, self._sort, self._table)
        self._layout = pn.Column(self._empty, self._broken, self._table_box, self._heatmap_box)
        self.refresh()

    def _heatmap(self):
        fig = figure(
            x_range=FactorRange(factors=list(KEYPOINT_NAMES)), y_range=FactorRange(factors=[]),
            tools="", toolbar_location=None, width=900, height=200, min_border_left=10,
            x_axis_location="above", css_classes=["fkd-heatmap"], name="fkd-heatmap",
        )
        cells = fig.rect("keypoint", "run", 1, 1, source=self._source, line_color="white",
                         fill_color={"field": "rmse", "transform": self._mapper},
                         selection_line_color="black", nonselection_fill_alpha=1.0)
        fig.text("keypoint", "run", text="label", source=self._source, text_align="center",
                 text_baseline="middle", text_font_size="10px", text_color="ink")
        fig.add_tools(HoverTool(renderers=[cells], tooltips=[
            ("run", "@run"), ("keypoint", "@keypoint"), ("RMSE", "@rmse{0.000} px")]))
        tap = TapTool(renderers=[cells])
        fig.add_tools(tap)
        fig.toolbar.active_tap = tap
        fig.xaxis.major_label_orientation = 0.9
        fig.axis.major_tick_line_color = None
        fig.axis.axis_line_color = None
        fig.grid.visible = False
        fig.add_layout(ColorBar(color_mapper=self._mapper, ticker=BasicTicker(desired_num_ticks=6),
                                title="px", width=12), "right")
        return fig

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
        """Replace the heatmap's data (colour range included); the figure itself stays."""
        data = heatmap_data(self._runs, self.metric)
        finite = data["rmse"][np.isfinite(data["rmse"])]
        if len(finite):
            self._mapper.update(low=float(finite.min()), high=float(max(finite.max(),
                                                                      finite.min() + 1e-6)))
        if len(finite):
            lo, hi = self._mapper.low, self._mapper.high
            bright = (np.nan_to_num(data["rmse"], nan=lo) - lo) / (hi - lo) > 0.6
            data["ink"] = np.where(bright, "black", "white")
        else:
            data["ink"] = np.full(len(data["rmse"]), "black")
        ids = [r.id for r in self._runs]
        self._figure.y_range.factors = ids[::-1]
        self._figure.height = 170 + 40 * len(ids)
        self._source.selected.indices = []
        self._source.data = data

    @in_document  # one held update: the detail arrives as one message, not a dozen
    def _on_tap(self, attr, old, new) -> None:
        if not new:
            return
        i = new[0]
        run_id, keypoint = self._source.data["run"][i], self._source.data["keypoint"][i]
        self._source.selected.indices = []
        if self.on_cell is not None:
            self.on_cell(run_id, keypoint)

    def __panel__(self):
        return self._layout
