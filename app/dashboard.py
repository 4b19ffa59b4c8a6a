"""The page: a header and three tabs — leaderboard, face grid, data overview."""

from __future__ import annotations

import html

import panel as pn

from app.data_view import DataView
from app.grid import FaceGrid
from app.leaderboard import Leaderboard
from app.state import Store

TABS = ("Leaderboard", "Faces", "Data")


class Dashboard(pn.viewable.Viewer):
    """Composes the views; a heatmap click switches to the grid focused on that cell."""

    def __init__(self, store: Store, **params):
        super().__init__(**params)
        self.store = store
        self.grid = FaceGrid(store)
        self.leaderboard = Leaderboard(store, on_cell=self._open_cell)
        self.data_view = DataView(store)
        self.tabs = pn.Tabs(
            (TABS[0], self.leaderboard), (TABS[1], self.grid), (TABS[2], self.data_view),
            dynamic=False, css_classes=["fkd-tabs"],
        )
        banner = pn.pane.Alert(
            f"<b>Could not load the data</b> — {html.escape(store.data_error or '')}. "
            "The leaderboard still works; restart with a valid <code>--data PATH</code>.",
            alert_type="danger", visible=store.data_error is not None,
            css_classes=["fkd-data-error"],
        )
        where = html.escape(store.data_path or "?")
        header = pn.pane.HTML(
            f"<h2 style='margin:4px 0'>fkd — facial keypoints dashboard</h2>"
            f"<div style='color:#555'>data: <code>{where}</code> · runs: "
            f"<code>{html.escape(str(store.models_dir))}</code></div>",
            margin=(5, 10),
        )
        self._layout = pn.Column(header, banner, self.tabs, sizing_mode="stretch_width")

    def _open_cell(self, run_id: str, keypoint: str) -> None:
        self.grid.focus(run_id, keypoint)
        self.tabs.active = TABS.index("Faces")

    def __panel__(self):
        return self._layout
