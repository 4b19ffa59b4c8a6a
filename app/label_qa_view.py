"""Label QA: the suspicious labels of the training set, and an editor that fixes them.

The suspects are :func:`fkd_core.label_qa.find_suspects` on the labels as corrected so far,
judged by a run's predictions (in-sample: the run trained on most of these faces) or by the
labels alone (shape, order, duplicates); the store computes them once per run and log state
for every session. A face opens in the editor: drag a keypoint, accept the suggestion, swap
left and right (the whole face or one pair), mark a keypoint missing, undo. Each action is
appended at once to the corrections log (:mod:`fkd_core.corrections`), beside the data and
never inside it; the original labels stay visible as a faint ghost.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, NumberFormatter, PointDrawTool

from app.background import compute_then_update, in_document, on_click
from app.faces import COLOURS, NAMES, face_figure
from app.state import LabelState, Store, Unavailable
from app.untrusted import Message, html_text
from fkd_core.audit import swap_labels, swap_pair
from fkd_core.corrections import format_point
from fkd_core.keypoints import FLIP_PERMUTATION, FRAME, IMAGE_SIZE, KEYPOINT_NAMES, N_KEYPOINTS

NO_RUN = "(none: shape, order and duplicates only)"
ALL_REASONS = "every reason"
REASONS = ("residual", "swap", "shape", "order", "duplicate")
SCALE = 4
#: Height of the suspects list in pixels (about a dozen rows; the list scrolls).
TABLE_HEIGHT = 320
PAIRS = {f"{KEYPOINT_NAMES[i]} ⇄ {KEYPOINT_NAMES[j]}": KEYPOINT_NAMES[i]
         for i, j in enumerate(FLIP_PERMUTATION) if i < j}
MARK = "✎"


def suggested_labels(current: np.ndarray, suspect) -> np.ndarray | None:
    """The face's labels (30,) as the suspect proposes them, or None if it proposes nothing:
    a swap exchanges the names (whole face or the pair), a residual moves the keypoint to
    where the run puts it."""
    if suspect is None:
        return None
    reason, keypoint = str(suspect["reason"]), str(suspect["keypoint"] or "")
    if reason.startswith("swap") and not keypoint:
        return swap_labels(current)
    if reason.startswith("swap") and keypoint in KEYPOINT_NAMES:
        return swap_pair(current, keypoint)
    x, y = float(suspect["suggested_x"]), float(suspect["suggested_y"])
    if keypoint in KEYPOINT_NAMES and math.isfinite(x) and math.isfinite(y):
        out = np.array(current, np.float64, copy=True)
        k = KEYPOINT_NAMES.index(keypoint)
        out[2 * k:2 * k + 2] = x, y
        return out
    return None


def changes(row: int, before: np.ndarray, after: np.ndarray) -> list:
    """(row, keypoint, new x/y) for every keypoint whose value differs."""
    out = []
    for k, name in enumerate(KEYPOINT_NAMES):
        a, b = before[2 * k:2 * k + 2], after[2 * k:2 * k + 2]
        if not np.allclose(a, b, atol=1e-3, equal_nan=True):
            out.append((row, name, (float(b[0]), float(b[1]))))
    return out


class LabelQAView(pn.viewable.Viewer):
    """The suspect list (by a run or by the labels alone, filtered by reason) and the face
    editor; every edit is saved to the corrections log at once."""

    run = param.Selector(default=NO_RUN, objects=[NO_RUN],
                         doc="Run whose predictions judge the labels (or none).")
    reason = param.Selector(default=ALL_REASONS, objects=[ALL_REASONS, *REASONS])

    def __init__(self, store: Store, **params):
        super().__init__(**params)
        self.store = store
        self._pending: set[str] = set()
        self._started = False
        self._frame: pd.DataFrame | None = None  # the store's suspects (shared: never changed)
        self._judged: LabelState | None = None  # the labels those suspects judged
        self._shown_frame: pd.DataFrame | None = None  # this session's filtered copy
        self._row: int | None = None
        self._suspect = None  # the suspect the face was opened from (a row of the frame)
        self._shown: dict[str, tuple[float, float]] = {}  # the draggable points as drawn
        self._undo: list[list[tuple[int, str, tuple[float, float]]]] = []
        w = pn.widgets
        self._message = Message("fkd-lqa-message")
        self._log = pn.pane.HTML("", css_classes=["fkd-lqa-log"], margin=(0, 10))
        self._refresh = w.Button(label="refresh list", width=110, css_classes=["fkd-lqa-refresh"])
        on_click(self._refresh, self._load_suspects)
        self._row_input = w.IntInput(label="Open row", value=0, start=0, width=110,
                                     css_classes=["fkd-lqa-row"])
        self._open_row = w.Button(label="open", width=70, align="end",
                                  css_classes=["fkd-lqa-open"])
        on_click(self._open_row, lambda: self.show_row(int(self._row_input.value or 0)))
        self._table = w.DataFrame(  # Bokeh's table (its scripts are on every page anyway); "#"
            pd.DataFrame(columns=["row", "keypoint", "reason", "score", MARK]),  # is the rank
            editors={}, show_index=False, reorderable=False, height=TABLE_HEIGHT, row_height=26,
            width=660, autosize_mode="none",
            widths={"row": 60, "keypoint": 160, "reason": 300, "score": 60, MARK: 30},
            css_classes=["fkd-lqa-suspects"], visible=False,
            formatters={"score": NumberFormatter(format="0.00")},
        )
        self._table.param.watch(self._selected, "selection")
        self._list_header = pn.pane.HTML("", css_classes=["fkd-lqa-list-header"], margin=(0, 10))

        # -- the editor: this session's own figure and sources
        self._image = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self._ghost = ColumnDataSource({"x": [], "y": [], "colour": [], "name": []},
                                       name="fkd-lqa-ghost")
        self._moves = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": [], "colour": []})
        self._hint = ColumnDataSource({"x": [], "y": [], "colour": [], "name": []})
        self._hint_lines = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": []})
        self._pred = ColumnDataSource({"x": [], "y": [], "colour": [], "name": []})
        self._current = ColumnDataSource({"x": [], "y": [], "colour": [], "name": []},
                                         name="fkd-lqa-current")
        fig = face_figure(self._image, SCALE, "fkd-lqa-face")
        fig.name = "fkd-lqa-face"
        fig.segment("x0", "y0", "x1", "y1", source=self._moves, line_color="colour",
                    line_width=1.5, line_alpha=0.6, line_dash="dotted")
        fig.scatter("x", "y", source=self._ghost, size=13, fill_alpha=0, line_color="colour",
                    line_alpha=0.45, line_width=1.5)
        fig.segment("x0", "y0", "x1", "y1", source=self._hint_lines, line_color="#e0139b",
                    line_width=1.5, line_dash="dashed")
        fig.scatter("x", "y", source=self._hint, marker="x", size=14, line_color="#e0139b",
                    line_width=3)
        fig.scatter("x", "y", source=self._pred, size=6, fill_color="colour", fill_alpha=0.5,
                    line_color="#555", line_alpha=0.5)
        points = fig.scatter("x", "y", source=self._current, size=11, fill_color="colour",
                             line_color="black", line_width=1.2,
                             selection_line_color="#e0139b", selection_line_width=3,
                             nonselection_fill_alpha=1.0, nonselection_line_alpha=1.0)
        draw = PointDrawTool(renderers=[points], add=False, drag=True)
        fig.add_tools(draw, HoverTool(renderers=[points], tooltips=[
            ("keypoint", "@name"), ("x, y", "@x{0.0}, @y{0.0}")]))
        fig.toolbar.active_drag = draw
        fig.toolbar.active_tap = draw
        self.figure = fig
        self._current.on_change("data", self._points_changed)
        self._current.selected.on_change("indices", self._point_selected)

        self._heading = pn.pane.HTML("", css_classes=["fkd-lqa-heading"], margin=(0, 10))
        self._accept = w.Button(label="accept suggestion", button_type="primary", width=170,
                                css_classes=["fkd-lqa-accept"])
        on_click(self._accept, self.accept_suggestion)
        self._swap_face = w.Button(label="swap left/right (whole face)", width=220,
                                   css_classes=["fkd-lqa-swap-face"])
        on_click(self._swap_face, self.swap_face)
        self._pair = w.Select(options=PAIRS, width=330, css_classes=["fkd-lqa-pair"])
        self._swap_pair = w.Button(label="swap this pair", width=130,
                                   css_classes=["fkd-lqa-swap-pair"])
        on_click(self._swap_pair, lambda: self.swap_pair(self._pair.value))
        self._keypoint = w.Select(options=list(KEYPOINT_NAMES), width=220,
                                  css_classes=["fkd-lqa-keypoint"])
        self._missing = w.Button(label="mark missing", width=130, css_classes=["fkd-lqa-missing"])
        on_click(self._missing, lambda: self.mark_missing(self._keypoint.value))
        self._undo_button = w.Button(label="undo", width=90, disabled=True,
                                     css_classes=["fkd-lqa-undo"])
        on_click(self._undo_button, self.undo)
        self._note = w.TextInput(placeholder="note saved with each correction (optional)",
                                 width=360, css_classes=["fkd-lqa-note"])
        self._history = pn.pane.HTML("", css_classes=["fkd-lqa-history"], margin=(0, 10))
        legend = pn.pane.HTML(
            "filled: the labels as corrected — drag one to move it, click to select it · "
            "faint hollow: training.csv's label (ghost) · dotted: how far it moved · "
            "<span style='color:#e0139b'>✕</span>: the suggestion · small dots: the run's "
            "prediction", width=IMAGE_SIZE * SCALE, margin=(0, 10), styles={"font-size": "12px"})
        self._editor = pn.Row(
            pn.Column(pn.pane.Bokeh(fig), legend),
            pn.Column(
                self._heading,
                pn.Row(self._accept, self._swap_face),
                pn.Row(self._pair, self._swap_pair),
                pn.Row(self._keypoint, self._missing),
                pn.Row(self._note, self._undo_button),
                self._history,
            ),
            visible=False, css_classes=["fkd-lqa-editor"],
        )
        self._layout = pn.Column(
            pn.pane.Markdown(
                "### Label QA\nSuspicious training labels, most suspicious first — judged by a "
                "run's predictions (in-sample: the run trained on most of these faces) or by "
                "the labels alone (shape, order, duplicates). Click one to fix it below; every "
                "change is saved at once to the corrections log, never to training.csv "
                "(`fkd labels apply` writes a corrected copy, `fkd train --corrections` "
                "trains on it).", margin=(0, 10)),
            self._log,
            pn.Row(w.Select.from_param(self.param.run, label="Judge by", width=300,
                                       css_classes=["fkd-lqa-run"]),
                   w.Select.from_param(self.param.reason, label="Reason", width=150,
                                       css_classes=["fkd-lqa-reason"]),
                   self._refresh, self._row_input, self._open_row, align="end"),
            self._message.pane, self._list_header, self._table, self._editor,
            sizing_mode="stretch_width",
        )
        self.param.run.objects = [NO_RUN, *(r.id for r in store.ok_runs())]
        self._show_log_state()

    def _say(self, text: str, kind: str = "info") -> None:
        self._message.say(text, kind)

    def activate(self) -> None:
        """The tab is shown: find the suspects the first time."""
        if not self._started:
            self._started = True
            self._load_suspects()

    @property
    def _run_id(self) -> str | None:
        return None if self.run == NO_RUN else self.run

    # -- the suspect list ---------------------------------------------------------------

    @param.depends("run", watch=True)
    @in_document
    def _run_changed(self) -> None:
        self._load_suspects()

    def _load_suspects(self) -> None:
        """Suspects for the chosen run and the log as it is now (computed off the event loop
        by the first session that asks; the others reuse them)."""
        store, run_id = self.store, self._run_id
        if store.train is None:
            self._say(f"No training labels to check: "
                      f"{store.data_error or 'this data has no training.csv'}", "danger")
            return
        if store.suspects_current(run_id):
            self._suspects_done(run_id)
            return
        how = f"run {run_id}'s predictions" if run_id else "the labels alone"
        self._say(f"Finding suspicious labels by {how}…")
        key = run_id or ""
        if key in self._pending:
            return
        self._pending.add(key)
        compute_then_update(lambda: store.suspects(run_id), lambda: self._suspects_done(run_id))

    def _suspects_done(self, run_id: str | None) -> None:
        self._pending.discard(run_id or "")
        if run_id != self._run_id:
            return
        frame, judged, error = self.store.latest_suspects(run_id)
        if frame is None:
            self._say(error or "the suspects could not be found", "danger")
            self._table.visible = False
            return
        self._say("")
        self._frame, self._judged = frame, judged
        self._filter()
        if self._row is not None:  # a face opened meanwhile: this list's suspect for it
            found = frame[frame.row == self._row]
            self._suspect = found.iloc[0] if len(found) else None
            self._draw()

    @param.depends("reason", watch=True)
    @in_document
    def _filter(self) -> None:
        frame = self._frame
        if frame is None:
            return
        if self.reason != ALL_REASONS:
            frame = frame[frame.reason.str.startswith(self.reason)]
        corrected = self.store.labels().corrected_rows
        shown = pd.DataFrame({
            "row": frame.row.to_numpy(), "keypoint": frame.keypoint.to_numpy(),
            "reason": frame.reason.to_numpy(), "score": frame.score.to_numpy(),
            MARK: [MARK if int(r) in corrected else "" for r in frame.row],
        })
        self._shown_frame = frame.reset_index(drop=True)
        self._table.value = shown
        self._table.selection = []
        self._table.visible = True
        judged = (f"run <b>{html_text(self._run_id)}</b>'s predictions (in-sample)"
                  if self._run_id else "the labels alone")
        self._list_header.object = (
            f"<p>{len(shown)} suspect{'s' if len(shown) != 1 else ''}"
            f"{'' if self.reason == ALL_REASONS else ' (' + html_text(self.reason) + ')'} "
            f"judged by {judged} · {MARK}: the face has corrections · click a row to open "
            "its face</p>")

    @in_document
    def _selected(self, event) -> None:
        if not event.new or self._shown_frame is None:
            return
        index = int(event.new[0])
        if index < len(self._shown_frame):
            suspect = self._shown_frame.iloc[index]
            self.show_row(int(suspect.row), suspect)

    def _mark_corrected(self) -> None:
        """Update the list's ✎ column after an edit (cells only: page and order stay)."""
        shown = self._table.value
        if shown is None or not len(shown):
            return
        corrected = self.store.labels().corrected_rows
        marks = [MARK if int(r) in corrected else "" for r in shown.row]
        patch = [(i, m) for i, (m, old) in enumerate(zip(marks, shown[MARK])) if m != old]
        if patch:
            self._table.patch({MARK: patch})

    # -- the face editor ----------------------------------------------------------------

    def show_row(self, row: int, suspect=None) -> None:
        """Open training row ``row`` in the editor, with the suspect's suggestion (the first
        suspect listed for that row when none is given)."""
        state = self.store.labels()
        try:
            state.position(row)
        except Unavailable as exc:
            self._say(str(exc), "warning")
            return
        if suspect is None and self._frame is not None:
            found = self._frame[self._frame.row == row]
            suspect = found.iloc[0] if len(found) else None
        self._row, self._suspect = row, suspect
        self._row_input.value = row
        self._say("")
        self._draw(state)
        self._editor.visible = True

    def _draw(self, state: LabelState | None = None) -> None:
        state = state or self.store.labels()
        row = self._row
        if row is None:
            return
        pos = state.position(row)
        cur = state.keypoints[pos].astype(np.float64)
        orig = state.original[pos].astype(np.float64)
        cur_pts, orig_pts = cur.reshape(N_KEYPOINTS, 2), orig.reshape(N_KEYPOINTS, 2)
        self._image.data = {"image": [self.store.train.images[pos]], "x": [-0.5], "y": [-0.5],
                            "dw": [IMAGE_SIZE], "dh": [IMAGE_SIZE]}
        self._ghost.data = _points(orig_pts)
        moved = (np.isfinite(cur_pts).all(axis=1) & np.isfinite(orig_pts).all(axis=1)
                 & (np.abs(cur_pts - orig_pts).max(axis=1) > 1e-3))
        self._moves.data = {"x0": orig_pts[moved, 0], "y0": orig_pts[moved, 1],
                            "x1": cur_pts[moved, 0], "y1": cur_pts[moved, 1],
                            "colour": COLOURS[moved]}
        proposal = self._proposal(state, pos, cur)
        hint = np.full((N_KEYPOINTS, 2), np.nan)
        if proposal is not None:
            pts = proposal.reshape(N_KEYPOINTS, 2)
            differs = ~np.all(np.isclose(pts, cur_pts, atol=1e-3, equal_nan=True), axis=1)
            hint[differs] = pts[differs]
        self._hint.data = _points(hint)
        lines = np.isfinite(hint).all(axis=1) & np.isfinite(cur_pts).all(axis=1)
        self._hint_lines.data = {"x0": cur_pts[lines, 0], "y0": cur_pts[lines, 1],
                                 "x1": hint[lines, 0], "y1": hint[lines, 1]}
        run_id = self._run_id
        pred = np.full((N_KEYPOINTS, 2), np.nan)
        if run_id and self.store.predictions_ready(run_id):
            try:
                pred = self.store.predictions(run_id)["train"][pos].reshape(N_KEYPOINTS, 2)
            except Unavailable:
                pass
        self._pred.data = _points(np.clip(pred, *FRAME))
        current = _points(cur_pts)
        self._shown = dict(zip(current["name"], zip(current["x"], current["y"])))
        self._current.selected.indices = []
        self._current.data = current
        self._accept.disabled = proposal is None or not changes(row, cur, proposal)
        self._heading.object = self._heading_html(state, row)
        self._history.object = _history(state, row)
        self._show_log_state(state)

    def _proposal(self, state: LabelState, pos: int, cur: np.ndarray) -> np.ndarray | None:
        """The suspect's suggestion, while the face still has the labels it judged (after a
        fix, a swap suggestion would only swap back)."""
        judged = self._judged
        if self._suspect is None or judged is None:
            return None
        if not np.allclose(judged.keypoints[pos], cur, atol=1e-3, equal_nan=True):
            return None
        return suggested_labels(cur, self._suspect)

    def _heading_html(self, state: LabelState, row: int) -> str:
        mark = (f" <span class='fkd-lqa-corrected'>{MARK} corrected</span>"
                if row in state.corrected_rows else "")
        text = f"<h3 style='margin:4px 0'>training.csv row {row} (line {row + 2}){mark}</h3>"
        s = self._suspect
        if s is not None:
            where = f" · {html_text(s['keypoint'])}" if s["keypoint"] else ""
            text += (f"<div class='fkd-lqa-reason-text'>{html_text(s['reason'])}{where} · "
                     f"score {float(s['score']):.1f}</div>")
        return text

    def _show_log_state(self, state: LabelState | None = None) -> None:
        state = state or self.store.labels()
        if state.path is None:
            self._log.object = ""
            return
        if state.error:
            self._say(state.error, "danger")
        faces = len(state.corrected_rows)
        self._log.object = (
            f"<p>Corrections log: <code class='fkd-lqa-path'>{html_text(state.path)}</code> · "
            f"<b class='fkd-lqa-count'>{state.count} correction{'s' if state.count != 1 else ''}"
            f"</b> · {faces} face{'s' if faces != 1 else ''} corrected</p>")

    # -- actions --------------------------------------------------------------------------

    def _save(self, edits: list, reason: str) -> None:
        """Append ``edits`` to the log now; remember them for undo; redraw."""
        if not edits:
            return
        try:
            written = self.store.correct(edits, reason, self._note.value or "")
        except Unavailable as exc:
            self._say(str(exc), "danger")
            self._draw()
            return
        if written:
            self._undo.append([(c.row, c.keypoint, c.old) for c in written])
            self._undo_button.disabled = False
        self._draw()
        self._mark_corrected()

    def _current_labels(self) -> np.ndarray | None:
        if self._row is None:
            return None
        state = self.store.labels()
        return state.keypoints[state.position(self._row)].astype(np.float64)

    @in_document
    def _points_changed(self, attr, old, new) -> None:
        """A point dragged in the browser (a redraw from here changes nothing and saves
        nothing: only points that moved from where this session drew them count)."""
        if self._row is None:
            return
        names = {str(n) for n in new.get("name", [])}
        if not set(self._shown) <= names:  # PointDrawTool deletes a selected point on Backspace
            self._say("Use 'mark missing' to un-label a keypoint.", "warning")
            self._draw()
            return
        edits = []
        for name, x, y in zip(new.get("name", []), new.get("x", []), new.get("y", [])):
            drawn = self._shown.get(str(name))
            if drawn is None or str(name) not in KEYPOINT_NAMES:
                continue
            x, y = float(x), float(y)
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            if abs(x - drawn[0]) > 1e-3 or abs(y - drawn[1]) > 1e-3:
                x, y = (round(float(np.clip(v, *FRAME)), 2) for v in (x, y))  # on the image
                edits.append((self._row, str(name), (x, y)))
        self._save(edits, "moved in Label QA")

    @in_document
    def _point_selected(self, attr, old, new) -> None:
        names = self._current.data.get("name", [])
        if new and new[0] < len(names):
            self._keypoint.value = str(names[new[0]])

    def accept_suggestion(self) -> None:
        if self._row is None:
            return
        state = self.store.labels()
        pos = state.position(self._row)
        cur = state.keypoints[pos].astype(np.float64)
        proposal = self._proposal(state, pos, cur)
        if proposal is not None:
            self._save(changes(self._row, cur, proposal),
                       f"accepted suggestion ({str(self._suspect['reason']).split(':')[0]})")

    def swap_face(self) -> None:
        cur = self._current_labels()
        if cur is not None:
            self._save(changes(self._row, cur, swap_labels(cur)), "swap left/right (whole face)")

    def swap_pair(self, keypoint: str) -> None:
        cur = self._current_labels()
        if cur is not None and keypoint in KEYPOINT_NAMES:
            partner = KEYPOINT_NAMES[int(FLIP_PERMUTATION[KEYPOINT_NAMES.index(keypoint)])]
            self._save(changes(self._row, cur, swap_pair(cur, keypoint)),
                       f"swap {keypoint} and {partner}")

    def mark_missing(self, keypoint: str) -> None:
        if self._row is not None and keypoint in KEYPOINT_NAMES:
            self._save([(self._row, keypoint, (math.nan, math.nan))], "marked missing")

    def undo(self) -> None:
        """Restore what this session's last action changed: new log lines, as the log's
        rule says (nothing is ever removed from it)."""
        if not self._undo:
            return
        edits = self._undo.pop()
        self._undo_button.disabled = not self._undo
        try:
            self.store.correct(edits, "undo", self._note.value or "")
        except Unavailable as exc:
            self._say(str(exc), "danger")
            return
        row = edits[0][0]
        if row != self._row:
            self.show_row(row)
        else:
            self._draw()
        self._mark_corrected()

    def __panel__(self):
        return self._layout


def _points(points: np.ndarray) -> dict:
    """(15, 2) points → scatter columns, missing points left out."""
    ok = np.isfinite(points).all(axis=1)
    return {"x": points[ok, 0].tolist(), "y": points[ok, 1].tolist(),
            "colour": COLOURS[ok].tolist(), "name": NAMES[ok].tolist()}


def _history(state: LabelState, row: int) -> str:
    """This face's lines of the log, oldest first (notes are the users' text: escaped)."""
    lines = [c for c in state.entries if c.row == row]
    if not lines:
        return "<p style='color:#555'>No corrections of this face yet.</p>"
    body = "".join(
        f"<tr><td>{html_text(c.time[:19].replace('T', ' '))}</td><td>{html_text(c.keypoint)}"
        f"</td><td>{format_point(c.old)}</td><td>{format_point(c.new)}</td>"
        f"<td>{html_text(c.reason)}</td><td>{html_text(c.note)}</td></tr>" for c in lines)
    return (
        "<table class='fkd-lqa-lines'><thead><tr><th>time (UTC)</th><th>keypoint</th>"
        "<th>before</th><th>after</th><th>reason</th><th>note</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
        "<style>.fkd-lqa-lines{border-collapse:collapse;font-size:12px}.fkd-lqa-lines td,"
        ".fkd-lqa-lines th{padding:1px 6px;border-bottom:1px solid #ddd;text-align:left}"
        "</style>")
