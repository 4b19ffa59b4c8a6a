"""Photos: keypoints on the user's own photos — uploaded, or picked by name from the folder
the server was started with (``--photos DIR``).

Everything about a photo — decoding, the size limits, finding faces, cropping, predicting,
mapping back to photo pixels, the CSV's columns — is :mod:`fkd_core.photos`'. This view keeps
a session's uploads as bytes in memory (they are decoded from memory and never written
anywhere, so an upload never becomes a path), runs the prediction in a worker thread with the
run's model loaded once per process by the store, and shows the result: the photo with each
face's box and keypoints, the 96×96 crops the model saw, and a table of coordinates.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, Range1d
from bokeh.plotting import figure

from app.background import compute_then_update, in_document
from app.faces import COLOURS, NAMES, FaceCanvas
from app.state import Store, Unavailable
from app.untrusted import Message, html_text
from fkd_core.keypoints import N_KEYPOINTS
from fkd_core.photos import parse_box

log = logging.getLogger(__name__)

#: The largest photo a page may upload (the loader's pixel limit applies as well).
MAX_UPLOAD_BYTES = 20 * 2**20
#: A session keeps its latest uploads only (bytes in memory): at most this many, and this
#: many bytes in all.
MAX_UPLOADS = 20
MAX_KEPT_BYTES = 100 * 2**20
#: Results kept per session: (photo, run, options) → faces.
MAX_RESULTS = 16
#: The photo's figure at most, in screen pixels; the photo is sent to the browser downsized
#: to at most DISPLAY_OVERSAMPLE times that (sharp on high-density screens, never megabytes
#: more than that).
MAX_WIDTH, MAX_HEIGHT = 640, 520
DISPLAY_OVERSAMPLE = 1.5
CROP_SCALE = 2.0
FIND = {"find faces": "detector", "whole photo": "whole", "box": "box"}
UPLOADED = "u:"
FOLDER = "f:"
NO_PHOTO = "(upload a photo)"


def display_rgba(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The photo as Bokeh's packed RGBA (h, w) uint32, shrunk to fit ``width`` × ``height``
    if it is bigger (the figure stretches it back over the photo's own pixel extent)."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(1.0, width / w, height / h)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    rgba = np.empty(image.shape[:2] + (4,), np.uint8)
    rgba[..., :3] = image
    rgba[..., 3] = 255
    return rgba.view(np.uint32)[..., 0]


def download_name(photo_name: str) -> str:
    """``<photo>-keypoints.csv`` with only safe characters (the name came from a browser)."""
    base = re.split(r"[/\\]", photo_name)[-1]
    base = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
    return f"{stem[:80] or 'photo'}-keypoints.csv"


@dataclass
class Outcome:
    """One prediction's result, made in a worker thread: the faces, or why there are none."""

    name: str
    size: tuple[int, int] | None = None  # photo (w, h)
    shown: np.ndarray | None = None  # display_rgba of the photo
    faces: list | None = None  # fkd_core.photos.FaceResult
    error: str | None = None
    photo: str = ""  # the view's key of the photo


class PhotosView(pn.viewable.Viewer):
    """Upload photos or pick one from the server's folder, choose a run, and see every face's
    box, keypoints (hover names them, in photo pixels) and crop; download the CSV."""

    photo = param.Selector(default=None, objects=[], doc="Photo shown (key: upload or folder).")
    run = param.Selector(default=None, objects=[], doc="Run whose model predicts.")
    find = param.Selector(default="find faces", objects=list(FIND),
                          doc="Detect faces, use the whole photo as one face, or a given box.")
    box = param.String(default="", doc="x, y, w, h of a face in photo pixels (find = box).")
    tta = param.Boolean(default=False, doc="Average with the mirrored face's prediction.")
    refine = param.Boolean(default=True, doc="Re-crop aligned to the first pass and predict again.")

    def __init__(self, store: Store, **params):
        super().__init__(**params)
        self.store = store
        self._started = False
        self._uploads: list[tuple[int, str, bytes]] = []  # (number, name, bytes)
        self._upload_count = 0
        self._results: dict[tuple, Outcome] = {}
        self._token = 0
        self._shown: Outcome | None = None
        self._drawn_photo = ""
        self._broken: dict[str, str] = {}
        self.last_faces = 0
        self._message = Message("fkd-photo-message")
        self._refused = Message("fkd-photo-refused")  # until the next upload
        w = pn.widgets
        self._upload = w.FileInput(multiple=True, accept="image/*", width=260,
                                   css_classes=["fkd-photo-upload"])
        self._upload.param.watch(lambda _e: self._take_uploads(), "value")
        self._box_input = w.TextInput.from_param(
            self.param.box, name="", placeholder="box: x, y, w, h (photo px)",
            width=200, visible=False, css_classes=["fkd-photo-box"])
        self._download = w.FileDownload(callback=self._csv, filename="keypoints.csv",
                                        label="Download CSV", disabled=True, width=160,
                                        css_classes=["fkd-photo-csv"])
        self._photo_src = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self._boxes = ColumnDataSource({"left": [], "right": [], "top": [], "bottom": [],
                                        "face": []})
        self._box_labels = ColumnDataSource({"x": [], "y": [], "text": []})
        self._points = ColumnDataSource({"x": [], "y": [], "colour": [], "name": [],
                                         "face": []})
        self._photo_fig = self._photo_figure()
        self._crops = FaceCanvas(scale=CROP_SCALE, css_class="fkd-photo-crops")
        self._summary = pn.pane.HTML("", css_classes=["fkd-photo-summary"], margin=(0, 10))
        self._table = pn.pane.HTML("", css_classes=["fkd-photo-table"], margin=(0, 10),
                                   styles={"max-height": "420px", "overflow-y": "auto"})
        self._crops_column = pn.Column(
            pn.pane.Markdown("**what the model saw** (96×96 crops)", margin=(0, 10)),
            pn.pane.Bokeh(self._crops.figure, margin=(5, 10)))
        self._content = pn.Column(
            self._summary,
            pn.Row(pn.pane.Bokeh(self._photo_fig, margin=(5, 10)), self._crops_column),
            pn.Row(self._table, self._download),
            visible=False, sizing_mode="stretch_width",
        )
        self._layout = pn.Column(
            pn.pane.Markdown(
                "### Keypoints on photos\nUpload photos (JPEG, PNG, …, up to "
                f"{MAX_UPLOAD_BYTES // 2**20} MB each) or pick one from the server's photos "
                "folder; faces are found, cropped to 96×96 the way the training faces are "
                "framed, predicted by the chosen run and mapped back to the photo's pixels.",
                margin=(0, 10)),
            pn.Row(
                pn.Column(pn.pane.Markdown("Upload photos", margin=(0, 10)), self._upload),
                w.Select.from_param(self.param.photo, name="Photo", width=260,
                                    css_classes=["fkd-photo-choice"]),
                w.Select.from_param(self.param.run, name="Run", width=240,
                                    css_classes=["fkd-photo-run"]),
            ),
            pn.Row(
                w.RadioButtonGroup.from_param(self.param.find, name="Faces",
                                              css_classes=["fkd-photo-find"]),
                self._box_input,
                w.Checkbox.from_param(self.param.refine, name="refine (second pass)",
                                      css_classes=["fkd-photo-refine"], margin=(12, 10)),
                w.Checkbox.from_param(self.param.tta, name="flip-TTA",
                                      css_classes=["fkd-photo-tta"], margin=(12, 10)),
            ),
            self._refused.pane, self._message.pane, self._content, sizing_mode="stretch_width",
        )
        self._refresh_choices()

    # -- figures ------------------------------------------------------------------------

    def _photo_figure(self):
        fig = figure(
            x_range=Range1d(-0.5, 95.5), y_range=Range1d(95.5, -0.5),
            frame_width=MAX_WIDTH, frame_height=MAX_HEIGHT, tools="pan,wheel_zoom,reset",
            toolbar_location="right", min_border=0, css_classes=["fkd-photo-figure"],
            name="fkd-photo-figure", background_fill_color="#f4f4f4",
        )
        fig.image_rgba("image", x="x", y="y", dw="dw", dh="dh", source=self._photo_src)
        fig.quad(left="left", right="right", top="top", bottom="bottom", source=self._boxes,
                 fill_alpha=0, line_color="#ffffff", line_width=2.5)
        fig.quad(left="left", right="right", top="top", bottom="bottom", source=self._boxes,
                 fill_alpha=0, line_color="#222222", line_width=1, line_dash="dashed")
        fig.text("x", "y", "text", source=self._box_labels, text_font_size="12px",
                 text_color="#ffffff", text_baseline="bottom", background_fill_color="#222222",
                 background_fill_alpha=0.7)
        points = fig.scatter("x", "y", source=self._points, size=8, fill_color="colour",
                             line_color="black", line_width=0.8, name="fkd-photo-points")
        fig.add_tools(HoverTool(renderers=[points], tooltips=[
            ("keypoint", "@name"), ("face", "@face"), ("x", "@x{0.0}"), ("y", "@y{0.0}")]))
        fig.xaxis.axis_label = fig.yaxis.axis_label = "photo px"
        return fig

    # -- choices ------------------------------------------------------------------------

    def activate(self) -> None:
        """Re-list the runs and the photos folder (each time the tab is shown) and predict
        the first time."""
        self._refresh_choices()
        if not self._started:
            self._started = True
            self._choices_changed()

    def _refresh_choices(self) -> None:
        found = self.store.runs()
        ok = sorted((r for r in found if r.ok),
                    key=lambda r: (r.val_rmse is None, r.val_rmse or 0.0, r.id))
        self._broken = {r.id: r.error or "" for r in found if not r.ok}
        runs = {r.id: r.id for r in ok} | {f"{i} (broken)": i for i in sorted(self._broken)}
        photos = {f"{name} (uploaded)": f"{UPLOADED}{n}" for n, name, _ in self._uploads}
        try:
            photos |= {name: f"{FOLDER}{name}" for name in self.store.photo_files()}
        except Unavailable as exc:
            self._message.say(str(exc), "warning")
        self.param.run.objects = runs
        if self.run not in runs.values():
            self.run = next(iter(runs.values()), None)
        self.param.photo.objects = photos or {NO_PHOTO: None}
        if self.photo not in photos.values():
            self.photo = next(iter(photos.values()), None)

    @in_document
    def _take_uploads(self) -> None:
        """Keep the new uploads' bytes (refusing any over the limit) and show the first."""
        value, names = self._upload.value, self._upload.filename
        if not value:
            return
        if isinstance(value, bytes):
            value, names = [value], [names]
        refused, first = [], None
        for name, data in zip(names or [], value):
            name = str(name or "upload")[:200]
            if len(data) > MAX_UPLOAD_BYTES:
                refused.append(f"{name}: {len(data) / 2**20:.1f} MB is over the "
                               f"{MAX_UPLOAD_BYTES // 2**20} MB limit for an uploaded photo")
                continue
            self._upload_count += 1
            self._uploads.append((self._upload_count, name, data))
            first = first or self._upload_count
        del self._uploads[:-MAX_UPLOADS]
        while sum(len(data) for _, _, data in self._uploads) > MAX_KEPT_BYTES:
            del self._uploads[0]
        self._upload.value = None  # the bytes live in self._uploads only
        self._refresh_choices()
        self._refused.say("; ".join(refused), "danger")
        kept = [n for n, _, _ in self._uploads]
        if first is not None:
            self.photo = f"{UPLOADED}{max(first, kept[0])}"

    @param.depends("find", watch=True)
    def _find_changed(self) -> None:
        self._box_input.visible = self.find == "box"

    @param.depends("photo", "run", "find", "box", "tta", "refine", watch=True)
    @in_document
    def _choices_changed(self) -> None:
        if self._started:
            self._predict()

    # -- predicting ---------------------------------------------------------------------

    def _photo_source(self, key: str):
        """(bytes or the folder's own path for the photo, its name); Unavailable if gone."""
        if key.startswith(FOLDER):
            name = key[len(FOLDER):]
            path = self.store.photo_files().get(name)
            if path is None:
                raise Unavailable(f"{name} is no longer in the photos folder")
            return path, name
        number = int(key[len(UPLOADED):])
        for n, name, data in self._uploads:
            if n == number:
                return data, name
        raise Unavailable("that upload is no longer kept (upload it again)")

    def _predict(self) -> None:
        self._token += 1  # whatever is still being computed is no longer wanted
        self._content.loading = False
        if self.photo is None:
            self._content.visible = False
            folder = self.store.settings.photos
            self._message.say("Upload a photo to see its keypoints" + (
                "." if folder is None else f", or pick one from {folder}."))
            return
        if self.run is None:
            self._content.visible = False
            self._message.say("No trained runs yet — the leaderboard tab says how to make one.")
            return
        if self.run in self._broken:
            self._content.visible = False
            self._message.say(f"run {self.run} is broken: {self._broken[self.run]}", "danger")
            return
        box = None
        if self.find == "box":
            if not self.box.strip():
                self._message.say("Give the face's box as x, y, w, h in photo pixels.")
                return
            try:
                box = parse_box(self.box)
            except ValueError as exc:
                self._message.say(str(exc), "danger")
                return
        key = (self.photo, self.run, self.find, box, self.tta, self.refine)
        if key in self._results:
            self._show(self._results[key])
            return
        try:
            source, name = self._photo_source(self.photo)
        except Unavailable as exc:
            self._content.visible = False
            self._message.say(str(exc), "danger")
            return
        token = self._token
        loading = "" if self.store.model_ready(self.run) else (
            " (loading its model, once per server)")
        self._message.say(f"Working: finding faces in {name} and predicting with run "
                          f"{self.run}{loading}…")
        self._content.loading = True
        self._download.disabled = True
        done: list[Outcome] = []
        run_id, store = self.run, self.store
        options = {"tta": self.tta, "refine": self.refine, "box": box,
                   "whole": self.find == "whole photo"}
        compute_then_update(
            lambda: done.append(predict(store, source, name, run_id, **options)),
            lambda: self._done(key, token, done))

    def _done(self, key: tuple, token: int, done: list) -> None:
        if not done:  # predict() failed outside its own handling: logged by the worker
            done.append(Outcome(key[0], error="the prediction failed (the server's log "
                                              "says why)"))
        outcome = self._results[key] = done[0]
        outcome.photo = key[0]
        for other in self._results.values():  # one display copy per photo
            if other.photo == outcome.photo and other.shown is not None:
                outcome.shown = other.shown if outcome.shown is not None else None
                break
        while len(self._results) > MAX_RESULTS:
            self._results.pop(next(iter(self._results)))
        if token == self._token:  # else a later choice is being computed or shown
            self._show(done[0])

    # -- showing ------------------------------------------------------------------------

    def _show(self, outcome: Outcome) -> None:
        self._content.loading = False
        self._shown = outcome
        if outcome.error is not None:
            self._content.visible = False
            self._download.disabled = True
            self._message.say(outcome.error, "danger")
            return
        faces = outcome.faces
        self.last_faces = len(faces)
        self._draw_photo(outcome)
        self._draw_faces(faces)
        w, h = outcome.size
        self._summary.object = (
            f"<p><b>{html_text(outcome.name)}</b> · {w}×{h} px · run "
            f"<b>{html_text(self.run)}</b> · {len(faces)} face{'s' * (len(faces) != 1)}</p>")
        self._table.object = keypoint_table(faces)
        self._download.filename = download_name(outcome.name)
        self._download.disabled = not faces
        self._content.visible = True
        if faces:
            self._message.say("")
        elif self.find == "find faces":
            self._message.say(f"No face found in {outcome.name}. Choose 'whole photo' if "
                              "the photo is one face, or 'box' to give where the face is.",
                              "warning")
        else:
            self._message.say(f"No face to predict in {outcome.name}.", "warning")

    def _draw_photo(self, outcome: Outcome) -> None:
        """Send the photo and fit the figure to it, unless it is the one shown (another
        run or option on the same photo keeps its pixels and the user's zoom)."""
        if self._drawn_photo == outcome.photo:
            return
        self._drawn_photo = outcome.photo
        w, h = outcome.size
        scale = min(MAX_WIDTH / w, MAX_HEIGHT / h)
        fig = self._photo_fig
        fig.x_range.update(start=-0.5, end=w - 0.5)
        fig.y_range.update(start=h - 0.5, end=-0.5)
        fig.frame_width = max(50, int(round(w * scale)))
        fig.frame_height = max(50, int(round(h * scale)))
        self._photo_src.data = {"image": [outcome.shown], "x": [-0.5], "y": [-0.5],
                                "dw": [w], "dh": [h]}

    def _draw_faces(self, faces: list) -> None:
        n = len(faces)
        boxes = np.array([f.box for f in faces], float).reshape(n, 4)
        labels = [f"face {i + 1}" for i in range(n)]
        self._boxes.data = {"left": boxes[:, 0], "right": boxes[:, 0] + boxes[:, 2],
                            "top": boxes[:, 1], "bottom": boxes[:, 1] + boxes[:, 3],
                            "face": labels}
        self._box_labels.data = {"x": boxes[:, 0], "y": boxes[:, 1], "text": labels}
        points = np.array([f.keypoints for f in faces], float).reshape(n, N_KEYPOINTS, 2)
        keep = np.isfinite(points).all(axis=2).ravel()
        self._points.data = {
            "x": points[..., 0].ravel()[keep], "y": points[..., 1].ravel()[keep],
            "colour": np.tile(COLOURS, n)[keep], "name": np.tile(NAMES, n)[keep],
            "face": np.repeat(np.arange(1, n + 1), N_KEYPOINTS)[keep],
        }
        self._crops_column.visible = bool(n)
        if not n:
            self._crops.clear()
            return
        columns = min(n, 2) if n <= 4 else 3
        self._crops.resize(n, columns)
        crops = np.stack([np.asarray(f.crop, np.uint8) for f in faces])
        crop_points = np.stack([np.asarray(f.crop_keypoints, float) for f in faces])
        captions = [f"face {i + 1} · {found_by(f)}" for i, f in enumerate(faces)]
        self._crops.show(crops, None, crop_points, captions)

    def _csv(self):
        """The shown photo's faces as ``fkd predict`` writes them (same columns)."""
        outcome = self._shown
        if outcome is None or not outcome.faces:
            return io.StringIO("")
        from fkd_core import photos

        buffer = io.StringIO()
        photos.write_csv(buffer, [(outcome.name, outcome.faces)])
        buffer.seek(0)
        return buffer

    def __panel__(self):
        return self._layout


def found_by(face) -> str:
    """How a face was found, as a caption: "detector 0.93", "box", "whole photo"."""
    if face.source == "detector":
        return f"detector {face.score:.2f}" if np.isfinite(face.score) else "detector"
    return "whole photo" if face.source == "whole" else "given box"


def keypoint_table(faces: list) -> str:
    """An HTML table: each face's box, then its keypoints in photo pixels."""
    if not faces:
        return ""
    rows = []
    for i, face in enumerate(faces, 1):
        x, y, w, h = (float(v) for v in face.box)
        rows.append(f"<tr class='fkd-photo-face'><th colspan='3'>face {i} · "
                    f"{html_text(found_by(face))} · box {x:.0f}, {y:.0f}, {w:.0f}×{h:.0f}"
                    "</th></tr>")
        points = np.asarray(face.keypoints, float).reshape(N_KEYPOINTS, 2)
        for name, (px, py) in zip(NAMES, points):
            cells = (f"{px:.1f}", f"{py:.1f}") if np.isfinite([px, py]).all() else ("–", "–")
            rows.append(f"<tr><td>{name}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    return (
        '<table class="fkd-photo-keypoints" style="border-collapse:collapse;font-size:12px">'
        "<thead><tr><th>keypoint</th><th>x (px)</th><th>y (px)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        "<style>.fkd-photo-keypoints td,.fkd-photo-keypoints th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}.fkd-photo-keypoints td:first-child,"
        ".fkd-photo-face th{text-align:left}</style>"
    )


def predict(store: Store, source, name: str, run_id: str, *, tta: bool, refine: bool, box,
            whole: bool) -> Outcome:
    """Decode the photo (its bytes, or its path in the photos folder) and predict its faces,
    in a worker thread: an :class:`Outcome`, with a message for the page instead of faces
    when anything is wrong."""
    try:
        from fkd_core import photos

        image = photos.load_image(source, name)
        model = store.model(run_id)
        faces = photos.predict_photo(image, store.run(run_id), model=model, tta=tta,
                                     refine=refine, box=box, whole=whole)
    except (ValueError, Unavailable) as exc:  # PhotoError and RunError are ValueErrors
        return Outcome(name, error=str(exc))
    except Exception as exc:  # noqa: BLE001 — any failure is a message in the page
        log.exception("predicting on a photo failed")
        return Outcome(name, error=f"{name}: could not predict: {type(exc).__name__}: "
                                   f"{exc}".splitlines()[0][:400])
    h, w = image.shape[:2]
    shown = display_rgba(image, int(MAX_WIDTH * DISPLAY_OVERSAMPLE),
                         int(MAX_HEIGHT * DISPLAY_OVERSAMPLE))
    return Outcome(name, (w, h), shown, faces)
