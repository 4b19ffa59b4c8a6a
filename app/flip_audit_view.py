"""Flip audit: every complete training row mirrored, predicted by a run, worst disagreement first.

A face whose mirrored prediction disagrees with its mirrored labels — and agrees much better
once the labels' left/right names are exchanged — most likely has swapped labels, which is
the quickest way to find them in a new data set. The maths is
:func:`fkd_core.audit.flip_audit`; the store computes it once per run and process.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import panel as pn
import param

from app.background import compute_then_update, in_document, on_click
from app.detail import FaceDetail
from app.faces import FaceCanvas
from app.state import Store, Unavailable
from app.untrusted import Message, html_text
from fkd_core.keypoints import flip_images

PAGE_SIZE = 12
COLUMNS = 6
SCALE = 1.4


class FlipAuditView(pn.viewable.Viewer):
    """One click audits the training set with a run; pages of the worst faces (mirrored, as
    the model saw them), a table of the same rows, and a face's detail on click."""

    run = param.Selector(default=None, objects=[], doc="Run that predicts the mirrored faces.")
    likely_swaps_only = param.Boolean(default=False)
    page = param.Integer(default=1, bounds=(1, None))

    def __init__(self, store: Store, on_open: Callable[[int], None] | None = None,
                 on_label_qa: Callable[[int], None] | None = None, **params):
        super().__init__(**params)
        self.store = store
        self.on_open = on_open
        self.on_label_qa = on_label_qa
        self._pending: set[str] = set()
        self._audit = None
        self._full = None  # the audit's table, worst first
        self._table = None  # the same, as filtered
        self._page_rows = None
        self._detail_row: int | None = None
        self.canvas = FaceCanvas(scale=SCALE, css_class="fkd-audit-faces", tap=True)
        self.canvas.cells.selected.on_change("indices", self._on_tap)
        self.detail = FaceDetail()
        w = pn.widgets
        self._start = w.Button(label="Run flip audit", button_type="primary", width=140,
                               css_classes=["fkd-audit-start"])
        on_click(self._start, self.start)
        self._prev = w.Button(label="◀ previous", width=110, css_classes=["fkd-audit-prev"])
        self._next = w.Button(label="next ▶", width=110, css_classes=["fkd-audit-next"])
        on_click(self._prev, lambda: self._step(-1))
        on_click(self._next, lambda: self._step(+1))
        self._open = w.Button(label="open in augmentation QA", width=200,
                              css_classes=["fkd-audit-open"])
        on_click(self._open, self._open_in_augment)
        self._to_label_qa = w.Button(label="open in Label QA", width=200,
                                     css_classes=["fkd-audit-label-qa"])
        on_click(self._to_label_qa, self._open_in_label_qa)
        self._message = Message("fkd-audit-message")
        self._summary = pn.pane.HTML("", css_classes=["fkd-audit-summary"], margin=(0, 10))
        self._header = pn.pane.HTML("", css_classes=["fkd-audit-header"], margin=(0, 10))
        self._rows_table = pn.pane.HTML("", css_classes=["fkd-audit-table"], margin=(0, 10))
        self._results = pn.Column(
            self._summary, pn.Row(self._prev, self._next, self._header, align="center"),
            pn.Row(pn.pane.Bokeh(self.canvas.figure), self._rows_table), visible=False)
        self._detail_box = pn.Column(pn.Row(self._open, self._to_label_qa), self.detail,
                                     visible=False,
                                     css_classes=["fkd-audit-detail"])
        self._layout = pn.Column(
            pn.pane.Markdown(
                "### Flip audit\nMirrors every complete training row with the training code's "
                "flip, predicts it with a run and lists the faces whose mirrored prediction "
                "disagrees most with the mirrored labels. ⇄ marks a likely left/right label "
                "swap: the labels fit at least twice as well with their names exchanged.",
                margin=(0, 10)),
            pn.Row(w.Select.from_param(self.param.run, label="Run", width=260,
                                       css_classes=["fkd-audit-run"]),
                   self._start,
                   w.Checkbox.from_param(self.param.likely_swaps_only,
                                         label="likely swaps only", align="end")),
            self._message.pane, self._results, self._detail_box, sizing_mode="stretch_width",
        )
        ids = [r.id for r in store.ok_runs()]
        self.param.run.objects = ids
        self.run = ids[0] if ids else None
        if self.run is None:
            self._say("No trained runs yet — the leaderboard tab says how to make one.")
            self._start.disabled = True

    def _say(self, text: str, kind: str = "info") -> None:
        self._message.say(text, kind)

    # -- computing ----------------------------------------------------------------------

    def start(self) -> None:
        """Audit with the chosen run (in a thread when served: a large set takes a while)."""
        run_id = self.run
        if run_id is None:
            return
        train = self.store.train
        if train is None or not len(train):
            self._say(f"No training faces to audit: "
                      f"{self.store.data_error or 'this data has no training.csv'}", "danger")
            return
        if self.store.audit_ready(run_id):
            self._finish(run_id)
            return
        n = int(train.complete.sum())
        self._say(f"Auditing {n} complete rows with run {run_id} (once per run)…")
        self._results.visible = self._detail_box.visible = False
        if run_id in self._pending:
            return
        self._pending.add(run_id)
        store = self.store
        compute_then_update(lambda: store.flip_audit(run_id), lambda: self._finish(run_id))

    def _finish(self, run_id: str) -> None:
        self._pending.discard(run_id)
        if run_id != self.run:
            return
        try:
            audit = self.store.flip_audit(run_id)
        except Unavailable as exc:
            self._say(str(exc), "danger")
            self._results.visible = False
            return
        self._say("")
        self._audit = audit
        self._full = audit.table(self.store.train.row_ids)
        self._filter()

    @param.depends("likely_swaps_only", watch=True)
    @in_document
    def _filter(self) -> None:
        if self._full is None:
            return
        table = self._full
        if self.likely_swaps_only:
            table = table[table.likely_swap].reset_index(drop=True)
        self._table = table
        swaps = int(self._full.likely_swap.sum())
        self._summary.object = (
            f"<p>Run <b>{html_text(self.run)}</b> on {len(self._full)} complete rows "
            f"mirrored · median flip RMSE {np.nanmedian(self._full.flip_rmse):.2f} px · "
            f"<b>{swaps} likely left/right swap{'s' if swaps != 1 else ''}</b></p>")
        self.param.page.bounds = (1, max(1, -(-len(table) // PAGE_SIZE)))
        if self.page != 1:
            self.page = 1
        else:
            self.show_page()
        self._results.visible = True

    @param.depends("run", watch=True)
    @in_document
    def _run_changed(self) -> None:
        self._full = self._table = None
        self._results.visible = self._detail_box.visible = False
        if self.run is not None and self.store.audit_ready(self.run):
            self._finish(self.run)
        else:
            self._say("")

    # -- paging -------------------------------------------------------------------------

    def _step(self, delta: int) -> None:
        lo, hi = self.param.page.bounds
        self.page = int(np.clip(self.page + delta, lo, hi))

    @param.depends("page", watch=True)
    @in_document
    def show_page(self) -> None:
        """Draw one page of the worst rows: the mirrored face, mirrored labels (hollow) and
        the prediction on the mirrored face (filled)."""
        table = self._table
        if table is None:
            return
        start = (self.page - 1) * PAGE_SIZE
        page = table.iloc[start:start + PAGE_SIZE]
        self._page_rows = page
        if not len(page):
            self.canvas.clear()
            self._header.object = "no rows"
            self._rows_table.object = ""
            return
        index = self._audit_index(page.position.to_numpy())
        images = flip_images(self.store.train.images[page.position.to_numpy()])
        captions = [f"line {line} · {err:.1f} px{' ⇄' if swap else ''}"
                    for line, err, swap in zip(page.line, page.flip_rmse, page.likely_swap)]
        self.canvas.resize(len(page), COLUMNS)
        self.canvas.show(images, self._audit.flipped_truth[index],
                         self._audit.flipped_pred[index], captions)
        pages = self.param.page.bounds[1]
        self._header.object = (
            f"rows {start + 1}–{start + len(page)} of {len(table)}, worst first "
            f"(screen {self.page}/{pages}) · click a face for its detail")
        self._rows_table.object = _rows_table(page, start)

    def _audit_index(self, positions: np.ndarray) -> np.ndarray:
        """Where data-set positions sit in the audit's arrays."""
        order = np.argsort(self._audit.rows)
        return order[np.searchsorted(self._audit.rows, positions, sorter=order)]

    # -- detail -------------------------------------------------------------------------

    @in_document  # one held update: the detail arrives as one message, not a dozen
    def _on_tap(self, attr, old, new) -> None:
        if not new:
            return
        self.canvas.cells.selected.indices = []
        self.open_detail(new[0])

    def open_detail(self, index_on_page: int) -> None:
        """The index-th face of the page in detail, as mirrored, with its two errors."""
        page = self._page_rows
        if page is None or index_on_page >= len(page):
            return
        entry = page.iloc[index_on_page]
        i = int(self._audit_index(np.array([entry.position]))[0])
        image = flip_images(self.store.train.images[int(entry.position)])
        self._detail_row = int(entry.row)
        self.detail.show(
            image, self._audit.flipped_truth[i],
            [(f"{self.run} on the mirrored face", self._audit.flipped_pred[i])],
            f"training.csv row {entry.row} (line {entry.line}), mirrored · flip RMSE "
            f"{entry.flip_rmse:.2f} px · with left/right names swapped {entry.swapped_rmse:.2f} px",
        )
        self._open.label = f"open row {entry.row} in augmentation QA"
        self._open.visible = self.on_open is not None
        self._to_label_qa.label = f"open row {entry.row} in Label QA"
        self._to_label_qa.visible = self.on_label_qa is not None
        self._detail_box.visible = True

    def _open_in_augment(self) -> None:
        if self._detail_row is not None and self.on_open is not None:
            self.on_open(self._detail_row)

    def _open_in_label_qa(self) -> None:
        if self._detail_row is not None and self.on_label_qa is not None:
            self.on_label_qa(self._detail_row)

    def __panel__(self):
        return self._layout


def _rows_table(page, start: int) -> str:
    body = "".join(
        f"<tr><td>{start + k + 1}</td><td>{r.row}</td><td>{r.line}</td>"
        f"<td>{r.flip_rmse:.2f}</td><td>{r.swapped_rmse:.2f}</td>"
        f"<td>{'⇄ yes' if r.likely_swap else ''}</td></tr>"
        for k, r in enumerate(page.itertuples()))
    return (
        '<table class="fkd-small fkd-audit-rows"><thead><tr><th>#</th><th>row</th>'
        "<th>csv line</th><th>flip RMSE px</th><th>names swapped px</th><th>likely swap</th>"
        f"</tr></thead><tbody>{body}</tbody></table>"
        "<style>.fkd-audit-rows{border-collapse:collapse;font-size:12px}.fkd-audit-rows td,"
        ".fkd-audit-rows th{padding:1px 8px;border-bottom:1px solid #ddd;text-align:right}"
        "</style>")
