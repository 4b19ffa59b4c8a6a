"""The page: a header and tabs — leaderboard, face grid, data overview, augmentation QA, flip
audit and activation maps. The inspection views build their heavy parts (TensorFlow, models)
the first time their tab is shown."""

from __future__ import annotations

import panel as pn

from app.activations_view import ActivationsView
from app.augment_view import AugmentView
from app.data_view import DataView
from app.flip_audit_view import FlipAuditView
from app.grid import FaceGrid
from app.leaderboard import Leaderboard
from app.state import Store
from app.untrusted import html_text, markdown_text

TABS = ("Leaderboard", "Faces", "Data", "Augment", "Flip audit", "Activations")


class Dashboard(pn.viewable.Viewer):
    """Composes the views; a heatmap click switches to the grid focused on that cell, and the
    flip audit's "open in augmentation QA" to the augmentation view on that row."""

    def __init__(self, store: Store, **params):
        super().__init__(**params)
        self.store = store
        self.grid = FaceGrid(store, on_open_row=self._open_in_augment)
        self.leaderboard = Leaderboard(store, on_cell=self._open_cell)
        self.data_view = DataView(store)
        self.augment = AugmentView(store)
        self.flip_audit = FlipAuditView(store, on_open=self._open_in_augment)
        self.activations = ActivationsView(store)
        self._views = (self.leaderboard, self.grid, self.data_view, self.augment,
                       self.flip_audit, self.activations)
        self.tabs = pn.Tabs(
            *zip(TABS, self._views), dynamic=False, css_classes=["fkd-tabs"],
        )
        self.tabs.param.watch(self._tab_shown, "active")
        banner = pn.pane.Alert(
            f"<b>Could not load the data</b> — {markdown_text(store.data_error or '')}. "
            "The leaderboard still works; restart with a valid <code>--data PATH</code>.",
            alert_type="danger", visible=store.data_error is not None,
            css_classes=["fkd-data-error"],
        )
        where = html_text(store.data_path or "?")
        header = pn.pane.HTML(
            f"<h2 style='margin:4px 0'>fkd — facial keypoints dashboard</h2>"
            f"<div style='color:#555'>data: <code>{where}</code> · runs: "
            f"<code>{html_text(store.models_dir)}</code></div>",
            margin=(5, 10),
        )
        self._layout = pn.Column(header, banner, self.tabs, sizing_mode="stretch_width")

    def _open_cell(self, run_id: str, keypoint: str) -> None:
        self.grid.focus(run_id, keypoint)
        self.tabs.active = TABS.index("Faces")

    def _tab_shown(self, event) -> None:
        view = self._views[event.new]
        if hasattr(view, "activate"):
            view.activate()

    def _open_in_augment(self, row: int) -> None:
        self.augment.show_row(row)
        self.tabs.active = TABS.index("Augment")

    def __panel__(self):
        return self._layout
