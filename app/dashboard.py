"""The page: a header and tabs — leaderboard, face grid, data overview, augmentation QA, flip
audit, activation maps, label QA and keypoints on photos.

A new session builds only the header and the leaderboard, so the first paint costs one light
view. Every other tab's view is built the first time that tab is shown (or another view sends
the user there) — except two that are built a moment before the user is likely to go there:

- Faces, once the page has painted (the tab people go to first): it reaches the browser while
  the user reads the leaderboard, and switching to it is a browser-side switch (tens of
  milliseconds instead of a second);
- Augment, half a second after a face's detail is first shown (its "open this face in
  augmentation QA" is the next step; the detail paints first), already on that face. Built
  right after the page painted, as before, its build (about 0.3 s of the event loop) and its
  widgets' reaching the browser held up other users' and this user's next page by up to two
  seconds (`bench_load.py`, five sessions).

A prefetched tab is built in its own turn of the event loop, and the process builds one at a
time (:data:`_IN_FLIGHT`): a burst of new users interleaves with the builds, and a user's
click never waits behind more than one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import panel as pn

from app.activations_view import ActivationsView
from app.augment_view import AugmentView
from app.background import in_document, one_recompute, session_doc
from app.data_view import DataView
from app.experiments_view import ExperimentsView
from app.flip_audit_view import FlipAuditView
from app.grid import FaceGrid
from app.label_qa_view import LabelQAView
from app.leaderboard import Leaderboard
from app.photos_view import PhotosView
from app.state import Store
from app.untrusted import html_text, markdown_text

TABS = ("Leaderboard", "Faces", "Data", "Augment", "Flip audit", "Activations", "Label QA",
        "Photos", "Experiments")
#: How often a session waiting to prefetch looks again.
PREFETCH_RETRY_MS = 250
#: How long after a face's detail is shown its Augment tab is prefetched.
AUGMENT_AFTER_DETAIL_MS = 500
#: When the one prefetched build in flight was queued (empty: none); one queued longer ago
#: than PREFETCH_STALE_S (its session closed first) no longer blocks the others.
_IN_FLIGHT: list[float] = []
PREFETCH_STALE_S = 2.0


class Dashboard(pn.viewable.Viewer):
    """Composes the views; a heatmap click switches to the grid focused on that cell, and the
    flip audit's "open in augmentation QA" (or "open in Label QA") to that view on that row."""

    def __init__(self, store: Store, **params):
        super().__init__(**params)
        self.store = store
        self._makers: dict[str, Callable[[], pn.viewable.Viewer]] = {
            "Faces": lambda: FaceGrid(store, on_open_row=self._open_in_augment,
                                      on_detail=self._detail_shown),
            "Data": lambda: DataView(store),
            "Augment": lambda: AugmentView(store),
            "Flip audit": lambda: FlipAuditView(store, on_open=self._open_in_augment,
                                                on_label_qa=self._open_in_label_qa),
            "Activations": lambda: ActivationsView(store),
            "Label QA": lambda: LabelQAView(store),
            "Experiments": lambda: ExperimentsView(
                store, on_run=lambda run_id: self._open_cell(run_id, None)),
            "Photos": lambda: PhotosView(store),
        }
        self.leaderboard = Leaderboard(store, on_cell=self._open_cell)
        self._views: dict[str, pn.viewable.Viewer] = {"Leaderboard": self.leaderboard}
        self._slots = {name: pn.Column(sizing_mode="stretch_width") for name in TABS}
        self._slots["Leaderboard"].objects = [self.leaderboard]
        self.tabs = pn.Tabs(*((name, self._slots[name]) for name in TABS),
                            dynamic=False, css_classes=["fkd-tabs"])
        self.tabs.param.watch(self._tab_shown, "active")
        banner = pn.pane.Alert(
            f"**Could not load the data** — {markdown_text(store.data_error or '')}. "
            "The leaderboard still works; restart with a valid `--data PATH`.",
            alert_type="danger", visible=store.data_error is not None,
            css_classes=["fkd-data-error"],
        )
        header = pn.pane.HTML(
            f"<h2 style='margin:4px 0'>fkd — facial keypoints dashboard</h2>"
            f"<div style='color:#555'>data: <code>{html_text(store.data_path or '?')}</code> · "
            f"runs: <code>{html_text(store.models_dir)}</code></div>",
            margin=(5, 10),
        )
        self._layout = pn.Column(header, banner, self.tabs, sizing_mode="stretch_width")
        self._doc = session_doc()
        if self._doc is not None:
            pn.state.onload(lambda: self._prefetch("Faces"))

    def _prefetch(self, name: str, row: int | None = None) -> None:
        """Build tab ``name`` (on training row ``row``) ahead of need, once no other prefetch
        is in flight; nothing without a server, after the session closed or when the tab is
        built already."""
        if self._doc is None or self._doc.session_context.destroyed or name in self._views:
            return
        now = time.monotonic()
        if _IN_FLIGHT and now - _IN_FLIGHT[0] < PREFETCH_STALE_S:
            self._doc.add_timeout_callback(lambda: self._prefetch(name, row), PREFETCH_RETRY_MS)
            return
        _IN_FLIGHT[:] = [now]
        self._build(name, row)

    @in_document
    def _build(self, name: str, row: int | None) -> None:
        """Build one prefetched tab (its own turn of the event loop)."""
        try:
            if name in self._views:
                return
            view = self.view(name)
            if row is not None:
                view.show_row(row)
            if hasattr(view, "activate"):
                view.activate()
        finally:
            _IN_FLIGHT.clear()

    def _detail_shown(self, row: int) -> None:
        if self._doc is not None and "Augment" not in self._views:
            self._doc.add_timeout_callback(lambda: self._prefetch("Augment", row),
                                           AUGMENT_AFTER_DETAIL_MS)

    def view(self, name: str):
        """The tab's view, built (and put into its tab) the first time it is asked for."""
        if name not in self._views:
            with one_recompute():
                view = self._views[name] = self._makers[name]()
                self._slots[name].objects = [view]
        return self._views[name]

    @property
    def grid(self) -> FaceGrid:
        return self.view("Faces")

    @property
    def augment(self) -> AugmentView:
        return self.view("Augment")

    def _open_cell(self, run_id: str, keypoint: str) -> None:
        self.grid.focus(run_id, keypoint)
        self.tabs.active = TABS.index("Faces")

    @in_document
    def _tab_shown(self, event) -> None:
        view = self.view(TABS[event.new])
        if hasattr(view, "activate"):
            view.activate()

    def _open_in_augment(self, row: int) -> None:
        self.augment.show_row(row)
        self.tabs.active = TABS.index("Augment")

    def _open_in_label_qa(self, row: int) -> None:
        view = self.view("Label QA")
        view.activate()
        view.show_row(row)
        self.tabs.active = TABS.index("Label QA")

    def __panel__(self):
        return self._layout
