"""Data overview: how many rows label each keypoint, and where one keypoint's labels fall.

Kaggle's training set mixes ~30 % rows labelling all 15 keypoints with rows labelling only
four; the two groups were labelled differently (the nose tip most visibly), which shows
here as two offset clouds on the 96 × 96 frame.
"""

from __future__ import annotations

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem, Range1d
from bokeh.plotting import figure

from app.background import in_document
from app.faces import grey_mapper
from app.state import Store
from app.untrusted import html_text, markdown_text
from fkd_core.keypoints import IMAGE_SIZE, KEYPOINT_NAMES

GROUPS = ("complete rows", "four-keypoint rows", "other rows")
GROUP_COLOURS = ("#1f77b4", "#ff7f0e", "#7f7f7f")
SCALE = 4


def label_counts(keypoints_labelled: np.ndarray, complete: np.ndarray,
                 four_point: np.ndarray) -> dict:
    """Per keypoint, how many complete / four-keypoint / other rows label it."""
    other = ~(complete | four_point)
    return {
        "keypoint": list(KEYPOINT_NAMES),
        GROUPS[0]: keypoints_labelled[complete].sum(axis=0),
        GROUPS[1]: keypoints_labelled[four_point].sum(axis=0),
        GROUPS[2]: keypoints_labelled[other].sum(axis=0),
    }


class DataView(pn.viewable.Viewer):
    keypoint = param.Selector(default="nose_tip", objects=list(KEYPOINT_NAMES))

    def __init__(self, store: Store, **params):
        super().__init__(**params)
        self.store = store
        self._summary = pn.pane.HTML("", css_classes=["fkd-data-summary"], margin=(0, 10))
        self._means = pn.pane.HTML("", css_classes=["fkd-data-means"], margin=(0, 10))
        self._positions = ColumnDataSource({"x": [], "y": [], "colour": [], "group": [],
                                            "row": []})
        train = store.train
        if store.data is None or train is None or len(train) == 0:
            reason = store.data_error or "this data has no training.csv"
            self._layout = pn.Column(
                pn.pane.Alert(f"No training data to show: {markdown_text(reason)}",
                              alert_type="danger", css_classes=["fkd-data-error"]))
            return
        self._labelled = train.labelled
        self._group = np.where(train.complete, 0, np.where(train.four_point, 1, 2))
        counts = label_counts(self._labelled, train.complete, train.four_point)
        self._summary.object = self._summary_html()
        self._layout = pn.Column(
            self._summary,
            pn.Row(
                pn.Column(pn.pane.Markdown("### Labelled rows per keypoint"),
                          pn.pane.Bokeh(self._counts_figure(counts))),
                pn.Column(
                    pn.pane.Markdown("### Where a keypoint's labels fall"),
                    pn.widgets.Select.from_param(self.param.keypoint, label="Keypoint",
                                                 width=240, css_classes=["fkd-data-keypoint"]),
                    pn.pane.Bokeh(self._positions_figure()),
                    self._means,
                ),
            ),
        )
        self.update_positions()

    def _summary_html(self) -> str:
        data, train = self.store.data, self.store.train
        test = self.store.test
        return (
            f"<p><b>{html_text(self.store.data_path)}</b> · {len(train)} training rows, "
            f"{int(train.complete.sum())} label all 15 keypoints, "
            f"{int(train.four_point.sum())} only the four always-present ones"
            + (f" · {len(test)} test faces" if test is not None else "")
            + f" · {len(data.files)} Kaggle files found</p>"
        )

    def _counts_figure(self, counts: dict):
        fig = figure(
            y_range=list(reversed(KEYPOINT_NAMES)), width=560, height=440, tools="",
            toolbar_location=None, css_classes=["fkd-counts"], x_axis_label="rows",
        )
        source = ColumnDataSource(counts)
        bars = fig.hbar_stack(list(GROUPS), y="keypoint", height=0.8, source=source,
                              color=list(GROUP_COLOURS))
        fig.add_tools(HoverTool(renderers=bars, tooltips=[
            ("keypoint", "@keypoint"), ("complete rows", f"@{{{GROUPS[0]}}}"),
            ("four-keypoint rows", f"@{{{GROUPS[1]}}}"), ("other rows", f"@{{{GROUPS[2]}}}"),
        ]))
        legend = Legend(items=[LegendItem(label=g, renderers=[b]) for g, b in zip(GROUPS, bars)],
                        orientation="horizontal", border_line_color=None)
        fig.add_layout(legend, "above")
        fig.x_range.start = 0
        fig.ygrid.visible = False
        return fig

    def _positions_figure(self):
        fig = figure(
            x_range=Range1d(-0.5, IMAGE_SIZE - 0.5), y_range=Range1d(IMAGE_SIZE - 0.5, -0.5),
            frame_width=IMAGE_SIZE * SCALE, frame_height=IMAGE_SIZE * SCALE,
            tools="pan,wheel_zoom,reset", toolbar_location="right",
            css_classes=["fkd-positions"], x_axis_label="x (px)", y_axis_label="y (px, down)",
        )
        mean = self.store.mean_face
        fig.image([mean], x=-0.5, y=-0.5, dw=IMAGE_SIZE, dh=IMAGE_SIZE,
                  color_mapper=grey_mapper(), global_alpha=0.6)
        points = fig.scatter("x", "y", source=self._positions, size=4, fill_color="colour",
                             line_color=None, fill_alpha=0.45, legend_field="group")
        fig.add_tools(HoverTool(renderers=[points], tooltips=[
            ("row", "@row"), ("x, y", "@x{0.0}, @y{0.0}"), ("", "@group")]))
        fig.legend.location = "top_left"
        fig.legend.background_fill_alpha = 0.7
        fig.grid.visible = False
        return fig

    @param.depends("keypoint", watch=True)
    @in_document
    def _keypoint_changed(self) -> None:
        self.update_positions()

    def update_positions(self) -> None:
        train = self.store.train
        i = KEYPOINT_NAMES.index(self.keypoint)
        rows = np.flatnonzero(self._labelled[:, i])
        rows = rows[np.argsort(-self._group[rows], kind="stable")]  # complete rows drawn last
        group = self._group[rows]
        self._positions.data = {
            "x": train.keypoints[rows, 2 * i], "y": train.keypoints[rows, 2 * i + 1],
            "colour": np.array(GROUP_COLOURS)[group], "group": np.array(GROUPS)[group],
            "row": train.row_ids[rows],
        }
        parts = []
        for g, name in enumerate(GROUPS):
            sel = rows[group == g]
            if len(sel):
                mx = train.keypoints[sel, 2 * i].mean()
                my = train.keypoints[sel, 2 * i + 1].mean()
                parts.append(f"{name}: {len(sel)} labels, mean ({mx:.1f}, {my:.1f})")
        self._means.object = f"<p>{self.keypoint} — " + " · ".join(parts) + "</p>"

    def __panel__(self):
        return self._layout
