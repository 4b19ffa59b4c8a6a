"""The face grid: a page of faces with true and predicted keypoints, worst faces first.

Sorting happens once per (run, subset, sort) choice; a page switch only slices that order
and replaces the data of the canvas' sources (:meth:`FaceGrid.show_page`), which is what
keeps paging instant on Kaggle-size data.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import panel as pn
import param

from app.background import compute_then_update, in_document, on_click
from app.detail import FaceDetail
from app.faces import FaceCanvas
from app.state import Store, Unavailable
from app.untrusted import Message, html_text
from fkd_core import metrics
from fkd_core.keypoints import KEYPOINT_NAMES

SORTS = ("worst first", "one keypoint's error", "row order", "random")
NO_COMPARE = "(none)"
COLUMNS = {12: 6, 24: 6, 48: 8, 96: 12}


class FaceGrid(pn.viewable.Viewer):
    """Pages of faces for one run (and optionally a second one beside it); a click on a face
    shows it in the detail panel beside them. Predictions are computed off the event loop the
    first time a run is shown, so a slow model never freezes other sessions."""

    run = param.Selector(default=None, objects=[], doc="Run whose predictions are shown.")
    compare = param.Selector(default=NO_COMPARE, objects=[NO_COMPARE],
                             doc="Second run, shown beside each face.")
    subset = param.Selector(default="validation", objects=["validation"])
    sort = param.Selector(default=SORTS[0], objects=list(SORTS))
    keypoint = param.Selector(default="nose_tip", objects=list(KEYPOINT_NAMES))
    page_size = param.Selector(default=24, objects=list(COLUMNS))
    page = param.Integer(default=1, bounds=(1, None))
    seed = param.Integer(default=0)

    def __init__(self, store: Store, on_open_row=None, on_detail=None, **params):
        super().__init__(**params)
        self.store = store
        self._on_open_row = on_open_row  # (training.csv row) -> None: open it elsewhere
        self._on_detail = on_detail  # (training.csv row) -> None: a training face was shown
        self._detail_row: int | None = None
        self._order = np.zeros(0, int)
        self._rows = np.zeros(0, int)
        self._err = np.zeros(0)
        self._kp_err = np.zeros((0, len(KEYPOINT_NAMES)))
        self._page_positions = np.zeros(0, int)
        self._pending: set[str] = set()
        self._quiet = False
        self._applied: tuple | None = None  # the choices last shown
        self.canvas = FaceCanvas(tap=True, css_class="fkd-grid-faces")
        self.canvas.cells.selected.on_change("indices", self._on_tap)
        self.detail = FaceDetail()
        self._to_augment = pn.widgets.Button(
            label="open this face in augmentation QA", visible=False,
            css_classes=["fkd-open-augment"],
        )
        on_click(self._to_augment, self._open_row_elsewhere)
        # Beside the faces and always on the page: opening a face only replaces the panel's
        # data, where a modal dialog made the browser restyle and lay out the whole page
        # (a quarter of a second with one session, more under load).
        self._detail_box = pn.Column(self.detail, self._to_augment, css_classes=["fkd-detail"],
                                     margin=(0, 0, 0, 10))
        self._message = Message("fkd-grid-message")
        self._header = pn.pane.HTML("", css_classes=["fkd-grid-header"], margin=(0, 10))
        self._legend = pn.pane.HTML("", margin=(0, 10), styles={"font-size": "12px"})
        w = pn.widgets
        self._prev = w.Button(label="◀ previous", width=110, css_classes=["fkd-prev"])
        self._next = w.Button(label="next ▶", width=110, css_classes=["fkd-next"])
        on_click(self._prev, lambda: self._step(-1))
        on_click(self._next, lambda: self._step(+1))
        self._shuffle = w.Button(label="shuffle", width=80, visible=False)
        on_click(self._shuffle, lambda: setattr(self, "seed", self.seed + 1))
        self._keypoint_select = w.Select.from_param(
            self.param.keypoint, label="Keypoint", width=200, visible=False,
            css_classes=["fkd-keypoint"])
        self._controls = pn.Row(
            w.Select.from_param(self.param.run, label="Run", width=260, css_classes=["fkd-run"]),
            w.Select.from_param(self.param.compare, label="Compare with", width=260,
                                css_classes=["fkd-compare"]),
            w.Select.from_param(self.param.subset, label="Faces", width=120,
                                css_classes=["fkd-subset"]),
            w.Select.from_param(self.param.sort, label="Sort", width=170,
                                css_classes=["fkd-sort"]),
            self._keypoint_select,
            w.Select.from_param(self.param.page_size, label="Per page", width=80,
                                css_classes=["fkd-page-size"]),
        )
        self._pager = pn.Row(
            self._prev, self._next,
            w.IntInput.from_param(self.param.page, label="", width=90, css_classes=["fkd-page"]),
            self._shuffle, self._header, align="center",
        )
        self._faces = pn.pane.Bokeh(self.canvas.figure)
        self._layout = pn.Column(
            self._controls, self._message.pane, self._pager, self._legend,
            pn.Row(self._faces, self._detail_box),
        )
        self.refresh_runs()

    # -- choices ------------------------------------------------------------------------

    def refresh_runs(self) -> None:
        """Offer the store's usable runs (by id: the page never names a path)."""
        ids = [r.id for r in self.store.ok_runs()]
        with self._batch():
            self.param.run.objects = ids
            self.param.compare.objects = [NO_COMPARE, *ids]
            if self.run not in ids:
                self.run = ids[0] if ids else None
            if self.compare not in self.param.compare.objects:
                self.compare = NO_COMPARE
        self._apply_choices()  # now, not queued: a new grid shows its first page in its build

    def focus(self, run_id: str, keypoint: str | None = None) -> None:
        """Show one run's validation faces sorted by one keypoint's error (heatmap click), or
        in the grid's order (a bubble click, ``keypoint`` None)."""
        if run_id not in self.param.run.objects:  # a run newer than this session's list
            self.refresh_runs()
        with self._batch():
            self.run = run_id
            if keypoint is not None:
                self.sort, self.keypoint = SORTS[1], keypoint
            subsets = self._subsets()
            self.param.subset.objects = subsets
            if "validation" in subsets:
                self.subset = "validation"
        self._apply_choices()

    @contextmanager
    def _batch(self):
        """Change several choices, then recompute once (the caller calls _choices_changed)."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _subsets(self) -> list[str]:
        if self.run is None:
            return ["all"]
        try:
            return self.store.subsets(self.run) or ["all"]
        except Unavailable:
            return ["all"]

    @param.depends("run", "compare", "subset", "sort", "keypoint", "seed", watch=True)
    @in_document
    def _choices_changed(self) -> None:
        # the choices a build or focus() set were shown by it already: no second page
        if self._choices() != self._applied:
            self._apply_choices()

    def _choices(self) -> tuple:
        return self.run, self.compare, self.subset, self.sort, self.keypoint, self.seed

    def _apply_choices(self) -> None:
        """Show the current choices (callers hold the session's document)."""
        if self._quiet:
            return
        subsets = self._subsets()
        if list(self.param.subset.objects) != subsets or self.subset not in subsets:
            with self._batch():
                self.param.subset.objects = subsets
                if self.subset not in subsets:
                    self.subset = subsets[0]
        self._keypoint_select.visible = self.sort == SORTS[1]
        self._shuffle.visible = self.sort == "random"
        self._applied = self._choices()
        self._recompute()

    def _say(self, text: str, kind: str = "info") -> None:
        self._message.say(text, kind)

    # -- order --------------------------------------------------------------------------

    def _runs_shown(self) -> list[str]:
        out = [self.run] if self.run else []
        if self.compare not in (NO_COMPARE, None, self.run):
            out.append(self.compare)
        return out

    def _recompute(self) -> None:
        """Order the subset's faces for the current choices, then show page 1."""
        self._order = np.zeros(0, int)
        if self.store.data is None:
            self._say(f"No data to show: {self.store.data_error}", "danger")
            self._blank()
            return
        if self.run is None:
            self._say("No trained runs yet — the leaderboard tab says how to make one.")
            self._blank()
            return
        waiting = [r for r in self._runs_shown() if not self.store.predictions_ready(r)]
        if waiting:
            self._compute_in_background(waiting)
            return
        try:
            for r in self._runs_shown():
                self.store.predictions(r)
            rows, err, kp_err = self.store.errors(self.run, self.subset)
        except Unavailable as exc:
            self._say(str(exc), "danger")
            self._blank()
            return
        self._rows, self._err, self._kp_err = rows, err, kp_err
        self._order = self._sorted(len(rows))
        self._say(self._note())
        pages = max(1, -(-len(rows) // self.page_size))
        self.param.page.bounds = (1, pages)
        with self._batch():
            self.page = 1
        self.show_page()

    def _sorted(self, n: int) -> np.ndarray:
        if self.subset == "test" or self.sort == "row order":
            return np.arange(n)
        if self.sort == "random":
            return np.random.default_rng(self.seed).permutation(n)
        key = self._err if self.sort == SORTS[0] else self._kp_err[:, self._kp_index]
        key = np.where(np.isnan(key), -np.inf, key)
        return np.argsort(-key, kind="stable")

    @property
    def _kp_index(self) -> int:
        return KEYPOINT_NAMES.index(self.keypoint)

    def _note(self) -> str:
        if self.subset == "test" and self.sort not in ("row order", "random"):
            return "Test faces have no labels, so they are shown in file order."
        return ""

    def _compute_in_background(self, run_ids: list[str]) -> None:
        """Run the model(s) off the event loop; the page shows a note meanwhile."""
        self._blank()
        todo = [r for r in run_ids if r not in self._pending]
        self._say(f"Computing predictions of {', '.join(run_ids)} for every face (once; "
                  "they are then cached in the run folder)…")
        if not todo:
            return
        self._pending.update(todo)
        store = self.store

        def work():
            for run_id in todo:
                try:
                    store.predictions(run_id)
                except Unavailable:
                    pass  # the store remembers the reason; _recompute shows it

        def done():
            self._pending.difference_update(todo)
            self._recompute()

        compute_then_update(work, done)

    # -- paging -------------------------------------------------------------------------

    def _step(self, delta: int) -> None:
        lo, hi = self.param.page.bounds
        self.page = int(np.clip(self.page + delta, lo, hi))

    @param.depends("page", watch=True)
    @in_document
    def _page_changed(self) -> None:
        if not self._quiet:
            self.show_page()

    @param.depends("page_size", watch=True)
    @in_document
    def _size_changed(self) -> None:
        if not self._quiet:
            self._recompute()

    def show_page(self) -> None:
        """Draw the current page: slices the order and replaces the canvas' source data."""
        n = len(self._order)
        if n == 0 or self.run is None:
            self._blank()
            return
        if not self._faces.visible:
            self._faces.visible = self._legend.visible = True
        size = self.page_size
        start = (self.page - 1) * size
        pos = self._rows[self._order[start:start + size]]
        self._page_positions = pos
        runs = self._runs_shown()
        part = "test" if self.subset == "test" else "train"
        source = self.store.test if part == "test" else self.store.train
        images = source.images[pos]
        truth = None if part == "test" else self.store.train.keypoints[pos]
        preds = [self.store.predictions(r)[part][pos] for r in runs]
        idx = self._order[start:start + size]
        if part == "test":
            names = [f"test image {i}" for i in self.store.test.image_ids[pos]]
            captions = [names]
            for _ in runs[1:]:
                captions.append(names)
        else:
            row_ids = self.store.train.row_ids[pos]
            if self.sort == SORTS[1]:
                first = self._kp_err[idx, self._kp_index]
                others = [metrics.per_keypoint_distance(p, truth)[:, self._kp_index]
                          for p in preds[1:]]
            else:
                first = self._err[idx]
                others = [metrics.per_image_rmse(p, truth) for p in preds[1:]]
            corrected = self.store.labels().corrected_rows
            captions = [_captions(row_ids, e, corrected) for e in (first, *others)]
        k = len(runs)
        columns = COLUMNS[size] + (2 if k > 1 else 0)
        self.canvas.resize(size * k, columns)
        self.canvas.show(
            _interleave([images] * k),
            None if truth is None else _interleave([truth] * k),
            _interleave(preds),
            [c for group in zip(*captions) for c in group],
        )
        pages = self.param.page.bounds[1]
        self._header.object = (
            f"<b>{self.subset}</b> faces {start + 1}–{start + len(pos)} of {n} · "
            f"page {self.page} of {pages} · {self._sort_text()}"
        )
        self._legend.object = self._legend_text(runs)

    def _blank(self) -> None:
        self.canvas.clear()
        self._header.object = ""
        self._faces.visible = self._legend.visible = False

    def _sort_text(self) -> str:
        if self.subset == "test":
            return "predictions only (no labels)"
        if self.sort == SORTS[0]:
            return "worst first by per-face RMSE (px under each face)"
        if self.sort == SORTS[1]:
            return f"worst first by {self.keypoint} error (px under each face)"
        return f"{self.sort} · per-face RMSE under each face"

    def _legend_text(self, runs: list[str]) -> str:
        text = "hollow circles: true keypoints · filled: predicted · line: truth → prediction" \
            " · ✎: labels corrected in Label QA (shown here as in training.csv)" \
            " · subject's left in warm colours, right in cool · click a face for detail"
        if len(runs) > 1:
            left, right = (html_text(r) for r in runs[:2])
            text = f"each pair: left <b>{left}</b>, right <b>{right}</b> · " + text
        return text

    # -- detail -------------------------------------------------------------------------

    @in_document  # one held update: the detail arrives as one message, not a dozen
    def _on_tap(self, attr, old, new) -> None:
        if not new:
            return
        slot = new[0]
        self.canvas.cells.selected.indices = []
        self.open_detail(slot // len(self._runs_shown()))

    def open_detail(self, index_on_page: int) -> None:
        """Open the detail panel for the index-th face of the current page."""
        if index_on_page >= len(self._page_positions):
            return
        pos = self._page_positions[index_on_page]
        runs = self._runs_shown()
        if self.subset == "test":
            image = self.store.test.images[pos]
            truth = None
            heading = f"test.csv image {self.store.test.image_ids[pos]}"
            preds = [(r, self.store.predictions(r)["test"][pos]) for r in runs]
        else:
            image = self.store.train.images[pos]
            truth = self.store.train.keypoints[pos]
            row = int(self.store.train.row_ids[pos])
            preds = [(r, self.store.predictions(r)["train"][pos]) for r in runs]
            scores = " · ".join(
                f"{r} {float(metrics.per_image_rmse(p[None], truth[None])[0]):.2f} px"
                for r, p in preds
            )
            heading = f"training.csv row {row} (line {row + 2}) · RMSE {scores}"
        self._detail_row = None if self.subset == "test" else row
        self._to_augment.visible = self._on_open_row is not None and self._detail_row is not None
        self.detail.show(image, truth, preds, heading)
        if self._on_detail is not None and self._detail_row is not None:
            self._on_detail(self._detail_row)

    def _open_row_elsewhere(self) -> None:
        if self._on_open_row is not None and self._detail_row is not None:
            self._on_open_row(self._detail_row)

    def __panel__(self):
        return self._layout


def _captions(row_ids: np.ndarray, errors: np.ndarray, corrected=frozenset()) -> list[str]:
    """"row R · E px", with ✎ where Label QA corrected the face (the grid still shows and
    scores training.csv's labels)."""
    return [(f"row {r} · {e:.2f} px" if np.isfinite(e) else f"row {r} · no labels")
            + (" ✎" if int(r) in corrected else "") for r, e in zip(row_ids, errors)]


def _interleave(arrays: list[np.ndarray]) -> np.ndarray:
    """[a, b] → a0, b0, a1, b1, … so each face's runs sit side by side."""
    if len(arrays) == 1:
        return arrays[0]
    stacked = np.stack(arrays, axis=1)
    return stacked.reshape(-1, *stacked.shape[2:])
