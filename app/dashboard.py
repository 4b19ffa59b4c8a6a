"""The page: a header and tabs — leaderboard, face grid, data overview, augmentation QA, flip
audit, activation maps, label QA and keypoints on photos.

A new session builds only the header and the leaderboard, so the first paint costs one light
view. Every other tab's view is built the first time that tab is shown (or another view sends
the user there), in the process's build lane (:func:`app.background.build_later`: one build
part at a time for all sessions, so a burst of users opening tabs never holds up another
user's page turn by more than one part) — and two are built ahead of need, as the user goes:

- Faces, once the page has painted, as if the user had asked (it is the tab people go to
  first): it reaches the browser while the user reads the leaderboard, and switching to it is
  a browser-side switch (tens of milliseconds instead of a second);
- Augment, once Faces is shown, at the lane's low priority (the user then pages through faces
  for a while; built right after Faces instead, its models reached the browser as the user
  switched to Faces, and held that switch up by half a second). It is built in parts
  (:meth:`AugmentView.build_parts`) before it goes into the page, so the browser gets it in
  one message and lays the page out once. A face's detail then makes that face's
  augmentation samples in a worker (:meth:`AugmentView.prepare`), so its "open this face in
  augmentation QA" draws at once.

A tab waiting for its build shows Panel's loading spinner.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import panel as pn

from app.activations_view import ActivationsView
from app.augment_view import AugmentView
from app.background import build_later, in_document, in_parts, one_recompute, session_doc
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
#: The tab built ahead of need once the page has painted, and those built once a tab is shown.
PREFETCH_FIRST = "Faces"
PREFETCH_AFTER = {"Faces": "Augment"}


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
        #: What to do with a tab's view once built (a row to show, a cell to focus on).
        self._waiting: dict[str, list[Callable]] = {}
        self._made: dict[str, pn.viewable.Viewer] = {}  # built, not yet in the page
        #: Tabs being built in the lane now, and how to rush each build (in_parts).
        self._building: dict[str, Callable[[], None]] = {}
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
            # Faces as if asked for: it is the next click, a second from now.
            pn.state.onload(lambda: self.ensure(PREFETCH_FIRST))

    def ensure(self, name: str, then: Callable | None = None, urgent: bool = True) -> None:
        """Tab ``name``'s view handed to ``then``, then activated: at once when it is built
        already, else after its build in the lane."""
        if then is not None:
            self._waiting.setdefault(name, []).append(then)
        if name in self._views:
            self._ready(name)
            return
        if urgent:  # a prefetch goes to a hidden tab: no spinner to send
            self._slots[name].loading = True
        if name not in self._building:
            build_later(functools.partial(self._ready, name), urgent)
        elif urgent:  # a prefetch being built: the user waits for it now
            self._building[name]()  # its last part does what waits

    def _ready(self, name: str) -> None:
        """Build tab ``name`` if it is not yet — its objects in parts of the lane (the view's
        ``build_parts``, if it has them), their Bokeh models in the page in one more part,
        so each part is short and the browser gets the tab in one message — then do what
        waits for it and activate it."""
        if name in self._building:
            return  # asked again while being built: the build's last part comes back here
        if name not in self._views and name not in self._made:
            view = self._made[name] = self._makers[name]()
            parts = view.build_parts() if hasattr(view, "build_parts") else iter(())
            rush = in_parts(parts, functools.partial(self._built, name))
            if name not in self._views:  # (without a server the build is over already)
                self._building[name] = rush
            return
        view = self.view(name)
        for then in self._waiting.pop(name, []):
            then(view)
        if hasattr(view, "activate"):
            view.activate()

    def _built(self, name: str) -> None:
        self._building.pop(name, None)
        self._ready(name)

    def _detail_shown(self, row: int) -> None:
        if "Augment" in self._views:
            self._views["Augment"].prepare(row)

    def view(self, name: str):
        """The tab's view, built (and put into its tab) the first time it is asked for."""
        if name not in self._views:
            with one_recompute():
                made = self._made.pop(name, None)
                view = self._views[name] = made if made is not None else self._makers[name]()
                self._slots[name].objects = [view]
                self._slots[name].loading = False
        return self._views[name]

    @property
    def grid(self) -> FaceGrid:
        return self.view("Faces")

    def _open_cell(self, run_id: str, keypoint: str) -> None:
        self.ensure("Faces", lambda grid: grid.focus(run_id, keypoint))
        self.tabs.active = TABS.index("Faces")

    @in_document
    def _tab_shown(self, event) -> None:
        self.ensure(TABS[event.new])
        after = PREFETCH_AFTER.get(TABS[event.new])
        if after is not None and self._doc is not None:
            self.ensure(after, urgent=False)

    def _open_in_augment(self, row: int) -> None:
        self.ensure("Augment", lambda view: view.show_row(row))
        self.tabs.active = TABS.index("Augment")

    def _open_in_label_qa(self, row: int) -> None:
        def show(view) -> None:
            view.activate()
            view.show_row(row)

        self.ensure("Label QA", show)
        self.tabs.active = TABS.index("Label QA")

    def __panel__(self):
        return self._layout
