"""Augmentation QA: one face, the training transforms at chosen strengths, N augmented samples.

The samples come from :func:`fkd_core.augment.augment_samples`, the batched function whose
maths ``fkd train``'s ``tf.data`` map runs, with a configuration built from the page's values
by :class:`~fkd_core.augment.AugmentConfig` itself (its fields are the ``--aug KEY=VALUE``
settings, so the controls are generated from them and a bad value is the library's message).
Labels are moved into the pixel-index convention first, by the same estimated offset training
subtracts, so the preview is what the model is trained on.

TensorFlow is imported the first time the tab is opened (:meth:`AugmentView.activate`), off
the event loop: sessions that never look at augmentation never pay for it. Samples are made in
a worker thread too, and kept process-wide (:func:`augmented`, arrays only): a team looking at
the same face with the same settings pays for it once, and the event loop only draws.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, LabelSet

from app.background import (
    WORKERS,
    compute_then_update,
    in_document,
    in_parts,
    on_click,
    one_recompute,
)
from app.faces import COLOURS, NAMES, FaceCanvas
from app.state import Store, Unavailable, import_tensorflow
from app.untrusted import Message, html_text
from fkd_core.keypoints import KEYPOINT_NAMES, N_KEYPOINTS, as_points, side

SAMPLE_COUNTS = (4, 8, 12, 16, 24)
SAMPLE_SCALE = 1.4
FLIP_SCALE = 3.0
#: Usual ranges (param softbounds; typed values may go further: AugmentConfig decides).
SOFT_RANGES = {"rotate_deg": (0.0, 45.0), "scale": (0.0, 0.3), "shift_px": (0.0, 24.0),
               "brightness": (0.0, 0.5), "contrast": (0.0, 0.8), "noise_std": (0.0, 0.15),
               "blur_sigma": (0.0, 3.0)}
NO_RUN = "(choose a run)"
#: The six left/right keypoint pairs, left name first.
_SHORT = {"left": "L", "right": "R", "eyebrow": "brow"}
_DROPPED = {"center", "corner", "end", "tip", "mouth"}
PAIRS = tuple((n, n.replace("left", "right")) for n in KEYPOINT_NAMES if side(n) == "left")


@functools.cache
def settings_class():
    """A Parameterized class with one parameter per ``AugmentConfig`` field, same defaults."""
    from fkd_core.augment import AugmentConfig

    params = {}
    for f in dataclasses.fields(AugmentConfig):
        soft = (0.0, 1.0) if f.name.endswith("_prob") else SOFT_RANGES.get(
            f.name, (0.0, max(1.0, 2 * float(f.default))))
        params[f.name] = param.Number(default=float(f.default), softbounds=soft,
                                      step=0.01 if soft[1] <= 1 else 0.1,
                                      doc=f"AugmentConfig.{f.name} (fkd train --aug {f.name}=…)")
    return param.parameterized_class("AugmentSettings", params)


def transform_groups() -> list[tuple[str, str, list[str]]]:
    """(transform, probability field, strength fields) in AugmentConfig's field order."""
    from fkd_core.augment import AugmentConfig

    groups: list[tuple[str, str, list[str]]] = []
    for f in dataclasses.fields(AugmentConfig):
        if f.name.endswith("_prob"):
            groups.append((f.name[: -len("_prob")], f.name, []))
        elif groups:
            groups[-1][2].append(f.name)
    return groups


def cli_flags(values: dict[str, float]) -> str:
    """The ``fkd train`` options that give exactly these settings (the shorter of the two
    presets plus its overrides)."""
    from fkd_core.augment import AugmentConfig

    best = None
    for preset, base in (("default", AugmentConfig()), ("none", AugmentConfig.none())):
        diff = [f"--aug {k}={v:g}" for k, v in values.items() if v != getattr(base, k)]
        flags = ([] if preset == "default" else ["--augment none"]) + diff
        if best is None or len(flags) < len(best):
            best = flags
    return "fkd train … " + (" ".join(best) if best else "(the default augmentation)")


def short_name(name: str) -> str:
    """A figure label short enough to sit beside its point: 'L eye inner', 'mouth R', 'nose'."""
    words = [_SHORT.get(w, w) for w in name.split("_") if w not in _DROPPED]
    if name.startswith("mouth") and "lip" not in name:
        words.insert(0, "mouth")
    return " ".join(words)


def label_placement(name: str) -> tuple[str, int, int]:
    """(text align, x offset, y offset) of a keypoint's name in the flip panel: outer points
    labelled outwards (the subject's left is the larger x, before and after a correct flip),
    the rest above or below, so the crowded eye corners stay readable. Offsets are screen
    pixels, y up."""
    outward = {"left": ("left", 8), "right": ("right", -8)}
    if any(part in name for part in ("eye_outer", "eyebrow_outer", "mouth_left", "mouth_right")):
        align, dx = outward[side(name)]
        return align, dx, 0
    if name == "nose_tip":
        return "left", 9, 0
    below = any(part in name for part in ("eye_inner", "bottom_lip"))
    return "center", 0, -11 if below else 11


LABEL_ALIGN, LABEL_DX, LABEL_DY = (np.array(v) for v in zip(
    *(label_placement(n) for n in KEYPOINT_NAMES)))


_WARM_LOCK = threading.Lock()
_WARMING_LOCK = threading.Lock()
_WARM: set[int] = set()  # id() of the stores warmed up in this process
_WARMING: set[int] = set()


def warm_up(store: Store) -> None:
    """Once per process and store (callers wait for the one that runs): TensorFlow's import,
    the labels' offset and one augmentation batch — TensorFlow's first call of each op is
    slow — so that any session's Augment tab then opens at once. Blocks; call it off the
    event loop."""
    with _WARM_LOCK:
        if id(store) in _WARM:
            return
        train = store.train
        if train is not None and len(train):
            import_tensorflow()
            from fkd_core.augment import AugmentConfig, augment_samples

            store.label_offset()
            augment_samples(train.images[0], np.full(2 * N_KEYPOINTS, 40.0, np.float32),
                            SAMPLE_COUNTS[1], AugmentConfig())
        # What is loaded now (TensorFlow, the data) lives as long as the process: keep it
        # out of the collector's full passes, which Panel starts after sessions close and
        # which otherwise stop every session's event loop for a large fraction of a second.
        gc.collect()
        gc.freeze()
        _WARM.add(id(store))


#: Samples made for any session: (store id, row, n, settings, seed) → (images, keypoints, ms).
_SAMPLES: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, float]] = OrderedDict()
_SAMPLES_LOCK = threading.Lock()
SAMPLES_KEPT = 256  # 8 samples of a 96×96 face are 74 kB: at most ~20 MB


def augmented(key: tuple, image: np.ndarray, keypoints: np.ndarray, config,
              compute: bool = True) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``augment_samples`` for ``key`` = (store id, row, n, settings items, seed), from the
    process-wide cache or made now (None when not cached and ``compute`` is false)."""
    with _SAMPLES_LOCK:
        found = _SAMPLES.get(key)
        if found is not None:
            _SAMPLES.move_to_end(key)
            return found
    if not compute:
        return None
    from fkd_core.augment import augment_samples

    t0 = time.perf_counter()
    images, kps = augment_samples(image, keypoints, key[2], config, key[4])
    made = images, kps, 1000 * (time.perf_counter() - t0)
    with _SAMPLES_LOCK:
        _SAMPLES[key] = made
        while len(_SAMPLES) > SAMPLES_KEPT:
            _SAMPLES.popitem(last=False)
    return made


def is_warm(store: Store) -> bool:
    return id(store) in _WARM


def warm_up_in_background(store: Store) -> None:
    """Start :func:`warm_up` in a worker thread, the first time this is called for a store
    (every session calls it; the server's own warm-up run of the page calls it first)."""
    with _WARMING_LOCK:  # not _WARM_LOCK: the event loop must never wait for TensorFlow
        if id(store) in _WARMING:
            return
        _WARMING.add(id(store))
    WORKERS.submit(warm_up, store)


class AugmentView(pn.viewable.Viewer):
    """Pick a face and transform settings; see N samples and the flip check."""

    row = param.Integer(default=0, doc="training.csv row of the face.")
    n_samples = param.Selector(default=8, objects=list(SAMPLE_COUNTS))
    seed = param.Integer(default=0, bounds=(0, 2**31 - 1))
    same_seed = param.Boolean(default=True, doc="Keep the seed when a setting changes, so only "
                              "that setting's effect changes.")
    from_run = param.Selector(default=NO_RUN, objects=[NO_RUN],
                              doc="Copy a finished run's training augmentation.")

    def __init__(self, store: Store, **params):
        super().__init__(**params)
        self.store = store
        self._started = False
        self._ready = False
        self._quiet = False
        self.settings = None
        self._flip: FaceCanvas | None = None
        self.last_draw_ms = float("nan")
        self.samples: tuple[np.ndarray, np.ndarray] | None = None  # the last drawn (images, kp)
        self._wanted: tuple | None = None  # the samples last asked for (only they are drawn)
        train = store.train
        if train is not None and len(train):
            complete = np.flatnonzero(train.complete)
            self.row = int(train.row_ids[complete[0] if len(complete) else 0])
        self._message = Message("fkd-aug-message")
        self._body = pn.Column()
        self._layout = pn.Column(
            pn.pane.Markdown(
                "### Augmentation QA\nThe training code's own transforms "
                "(`fkd_core.augment`, the `fkd train --aug KEY=VALUE` settings) applied to one "
                "face. Keypoints pushed out of the frame are dropped, as in training.",
                margin=(0, 10)),
            self._message.pane, self._body, sizing_mode="stretch_width")

    # -- start-up -----------------------------------------------------------------------

    def activate(self) -> None:
        """Build the controls and draw, the first time the tab is shown (imports TensorFlow
        off the event loop when served), unless :meth:`build_parts` has run already."""
        if not self._started:
            in_parts(self.build_parts())

    def build_parts(self) -> Iterator[None]:
        """The whole tab, built in five parts of the build lane — the samples, the controls'
        objects, their layout, the flip check's objects, its layout — so that another
        session's click waits for a short part of this build, never for the whole of it.

        The dashboard runs the parts before it puts the view into the page, so the browser
        gets the tab in one message and lays the page out once, not once per part (a third
        of a second of the browser's time each, measured). Before TensorFlow is warm, the
        parts run later, in the page, under a "Loading" message."""
        if self._started:
            return
        self._started = True
        train = self.store.train
        if train is None or not len(train):
            self._say(f"No training faces to augment: "
                      f"{self.store.data_error or 'this data has no training.csv'}", "danger")
            return
        if not is_warm(self.store):
            self._say("Loading the augmentation code (TensorFlow)…")
            store = self.store
            compute_then_update(lambda: warm_up(store),
                                lambda: in_parts(self._build_parts()))
            return
        yield from self._build_parts()

    def _build_parts(self) -> Iterator[None]:
        with one_recompute():
            self._build_samples()
        self._ready = True
        self._say("")
        self.redraw()
        yield
        controls, transforms = self._build_controls()
        yield
        with one_recompute():
            self._settings_column.objects = [transforms, self._cli]
            self._body.objects = [controls, *self._body.objects]
        yield
        canvas = self._build_flip()
        yield
        self._show_flip(canvas)

    def _build_samples(self) -> None:
        self.settings = settings_class()()
        self.settings.param.watch(self._settings_changed, list(self._fields()))
        runs = [r.id for r in self.store.ok_runs() if r.config.get("train", {}).get("augment")]
        self.param.from_run.objects = [NO_RUN, *runs]
        self._samples = FaceCanvas(scale=SAMPLE_SCALE, css_class="fkd-aug-samples")
        _hover_names(self._samples)
        self._header = pn.pane.HTML("", css_classes=["fkd-aug-header"], margin=(0, 10))
        self._table = pn.pane.HTML("", css_classes=["fkd-aug-table"], margin=(0, 10))
        self._cli = pn.pane.HTML("", css_classes=["fkd-aug-cli"], margin=(0, 10))
        self._settings_column = pn.Column(self._cli, width=470)
        self._body.objects = [pn.Row(
            self._settings_column,
            pn.Column(self._header, pn.pane.Bokeh(self._samples.figure), self._table),
        )]

    def _build_controls(self):
        """The controls' objects: (the row of choices, the transforms' grid)."""
        w = pn.widgets
        random_face = w.Button(label="random face", width=110, css_classes=["fkd-aug-random"])
        on_click(random_face, self._random_face)
        new_seed = w.Button(label="new seed", width=90, css_classes=["fkd-aug-new-seed"])
        on_click(new_seed, self._new_seed)
        defaults = w.Button(label="training defaults", width=140,
                            css_classes=["fkd-aug-defaults"])
        on_click(defaults, lambda: self.apply_settings(self._defaults(False)))
        all_off = w.Button(label="all off", width=80, css_classes=["fkd-aug-all-off"])
        on_click(all_off, lambda: self.apply_settings(self._defaults(True)))
        controls = pn.Row(
            w.IntInput.from_param(self.param.row, label="Face (training.csv row)",
                                  width=150, css_classes=["fkd-aug-row"]),
            random_face,
            w.Select.from_param(self.param.n_samples, label="Samples", width=80,
                                css_classes=["fkd-aug-n"]),
            w.IntInput.from_param(self.param.seed, label="Seed", width=110,
                                  css_classes=["fkd-aug-seed"]),
            new_seed,
            w.Checkbox.from_param(self.param.same_seed, label="same seed",
                                  css_classes=["fkd-aug-same-seed"], align="end"),
            w.Select.from_param(self.param.from_run, label="Settings of run", width=220,
                                css_classes=["fkd-aug-from-run"]),
            pn.Column(defaults, all_off, margin=0),
        )
        return controls, self._transform_widgets()

    def _build_flip(self) -> FaceCanvas:
        """The flip check's objects."""
        canvas = FaceCanvas(scale=FLIP_SCALE, css_class="fkd-flip-faces")
        canvas.figure.name = "fkd-flip-figure"
        _hover_names(canvas)
        self._names = ColumnDataSource({"x": [], "y": [], "text": [], "align": [],
                                        "dx": [], "dy": [], "colour": []})
        canvas.figure.add_layout(LabelSet(
            x="x", y="y", text="text", source=self._names, text_align="align",
            x_offset="dx", y_offset="dy", text_font_size="9px", text_baseline="middle",
            text_color="black", background_fill_color="colour",
            background_fill_alpha=0.7))
        self._flip_table = pn.pane.HTML("", css_classes=["fkd-flip-table"], margin=(0, 10))
        self._flip_check = pn.pane.HTML("", css_classes=["fkd-flip-check"], margin=(0, 10))
        return canvas

    def _show_flip(self, canvas: FaceCanvas) -> None:
        with one_recompute():
            self._body.objects = [*self._body.objects, pn.pane.HTML(
                "<h3>Flip check</h3>The face and its mirror image by the training code's flip "
                "(<code>flip_pair</code>). A flip must also swap the names: the subject's left "
                "keypoints (warm colours) stay at the larger x in both.", margin=(0, 10)),
                pn.Row(pn.pane.Bokeh(canvas.figure),
                       pn.Column(self._flip_check, self._flip_table))]
        self._flip = canvas
        try:
            self._draw_flip(*self.face())
        except ValueError:
            pass  # a row that is not in the file: the message says so already

    def _fields(self) -> list[str]:
        return [name for name in self.settings.param if name != "name"]

    def _defaults(self, all_off: bool) -> dict[str, float]:
        from fkd_core.augment import AugmentConfig

        return (AugmentConfig.none() if all_off else AugmentConfig()).to_dict()

    def _transform_widgets(self):
        """One number box per setting, a transform's probability and strength side by side in
        one grid: a single Bokeh model per setting and one layout (editable sliders in a row
        per transform were five times as many models), so the tab opens in well under a
        second."""
        cells = []
        for label, prob, strengths in transform_groups():
            for name in (prob, *strengths)[:2]:
                caption = f"{label} probability" if name == prob else name
                # No tooltip (two more models per box): the CLI line below names each flag.
                cells.append(pn.widgets.FloatInput.from_param(
                    self.settings.param[name], name=caption, width=150, start=0.0,
                    description=None, css_classes=[f"fkd-aug-{name}"], margin=(0, 10)))
            if not strengths:
                cells.append(pn.Spacer(width=150))
        return pn.GridBox(*cells, ncols=2, margin=0)

    # -- choices ------------------------------------------------------------------------

    def apply_settings(self, values: dict[str, float]) -> None:
        """Set every transform at once (one redraw)."""
        if self.settings is None:
            return
        known = {k: float(v) for k, v in values.items() if k in self._fields()}
        with self._batch():
            self.settings.param.update(**known)
        self.redraw(new_seed=not self.same_seed)

    def show_row(self, row: int) -> None:
        """Show one training.csv row (the flip audit's 'open in augmentation QA')."""
        self.row = int(row)

    def _random_face(self) -> None:
        train = self.store.train
        if train is not None and len(train):
            self.row = int(np.random.default_rng().choice(train.row_ids))

    def _new_seed(self) -> None:
        self.seed = int(np.random.default_rng().integers(0, 2**31 - 1))

    @contextmanager
    def _batch(self):
        """Change several values, then redraw once (the caller redraws)."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    @in_document
    def _settings_changed(self, *events) -> None:
        if not self._quiet:
            self.redraw(new_seed=not self.same_seed)

    @param.depends("row", "n_samples", "seed", watch=True)
    @in_document
    def _choices_changed(self) -> None:
        if not self._quiet:
            self.redraw()

    @param.depends("from_run", watch=True)
    @in_document
    def _from_run_changed(self) -> None:
        if self.from_run == NO_RUN or self.settings is None:
            return
        from fkd_core.augment import AugmentConfig

        try:
            stored = self.store.run(self.from_run).config.get("train", {}).get("augment") or {}
            values = AugmentConfig.from_dict(stored).to_dict()  # missing keys: defaults
        except (Unavailable, ValueError, TypeError) as exc:
            self._say(f"run {self.from_run}'s augmentation settings: {exc}", "danger")
            return
        self.apply_settings(values)

    def _say(self, text: str, kind: str = "info") -> None:
        self._message.say(text, kind)

    # -- drawing ------------------------------------------------------------------------

    def config(self):
        """The page's settings as the training code's AugmentConfig (ValueError if invalid)."""
        from fkd_core.augment import AugmentConfig

        return AugmentConfig.from_dict({k: getattr(self.settings, k) for k in self._fields()})

    def face(self, row: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The chosen face (or training.csv row ``row``) and its labels in the pixel-index
        convention (as training sees them); raises ValueError for a row not in the file."""
        row = self.row if row is None else row
        train = self.store.train
        found = np.flatnonzero(train.row_ids == row)
        if not len(found):
            lo, hi = int(train.row_ids.min()), int(train.row_ids.max())
            raise ValueError(f"there is no training.csv row {row} (rows {lo}–{hi})")
        pos = int(found[0])
        keypoints = train.keypoints[pos].astype(np.float32)
        keypoints[0::2] -= self.store.label_offset()
        return train.images[pos], keypoints

    def redraw(self, new_seed: bool = False) -> None:
        """Augment the face (in a worker, unless these samples were made already) and replace
        the samples' and the flip panel's source data; only the latest request is drawn."""
        if not self._ready:
            return
        if new_seed:
            with self._batch():
                self._new_seed()
        try:
            config = self.config()
            image, keypoints = self.face()
        except ValueError as exc:
            self._say(str(exc), "danger")
            return
        self._say("")
        key = self._key(self.row, config)
        if key == self._wanted:  # asked for again (a row set to the row shown): drawn already
            return
        self._wanted = key
        if augmented(key, image, keypoints, config, compute=False) is not None:
            self._draw(key, image, keypoints, config)
            return
        compute_then_update(lambda: augmented(key, image, keypoints, config),
                            lambda: self._draw(key, image, keypoints, config))

    def _key(self, row: int, config) -> tuple:
        return (id(self.store), row, self.n_samples, tuple(sorted(config.to_dict().items())),
                self.seed)

    def prepare(self, row: int) -> None:
        """Make ``row``'s samples with the current settings in a worker, drawing nothing, so
        that opening that face here (the grid's next step after its detail) draws at once."""
        if not self._ready:
            return
        try:
            config = self.config()
            image, keypoints = self.face(row)
        except ValueError:
            return
        key = self._key(row, config)
        if augmented(key, image, keypoints, config, compute=False) is None:
            WORKERS.submit(augmented, key, image, keypoints, config)

    def _draw(self, key: tuple, image, keypoints, config) -> None:
        if key != self._wanted:  # the user asked for something else meanwhile
            return
        images, kps, self.last_draw_ms = augmented(key, image, keypoints, config)
        self.samples = images, kps
        n = len(images)
        labelled = int(np.isfinite(as_points(keypoints)).all(axis=1).sum())
        inside = np.isfinite(as_points(kps)).all(axis=2).sum(axis=1)
        self._samples.resize(n, 4)
        self._samples.show(images, None, kps,
                           [f"#{i + 1} · {k}/{labelled} in frame" for i, k in enumerate(inside)])
        offset = self.store.label_offset()
        self._header.object = (
            f"<b>training.csv row {self.row}</b> · {n} samples · seed {self.seed}"
            f"{' (kept when settings change)' if self.same_seed else ''} · "
            f"augmented in {self.last_draw_ms:.0f} ms"
            + (f" · labels moved {-offset:+.2f} px in x to pixel indices, as training does"
               if offset else ""))
        self._table.object = _samples_table(kps)
        self._cli.object = f"<p>Same as <code>{html_text(cli_flags(config.to_dict()))}</code></p>"
        self._draw_flip(image, keypoints)

    def _draw_flip(self, image, keypoints) -> None:
        from fkd_core.augment import flip_pair

        if self._flip is None:  # built in the next turn, which draws it
            return
        flipped_image, flipped_kp = flip_pair(image, keypoints)
        both = np.stack([keypoints, flipped_kp])
        self._flip.resize(2, 2)
        self._flip.show(np.stack([image, flipped_image]), None, both,
                        ["original", "flipped by the training code"])
        ox, oy = self._flip.offsets(2)
        pts = as_points(both)
        keep = np.isfinite(pts).all(axis=2)
        short = np.array([short_name(n) for n in KEYPOINT_NAMES])
        self._names.data = {
            "x": (pts[..., 0] + ox[:, None])[keep], "y": (pts[..., 1] + oy[:, None])[keep],
            "text": np.tile(short, 2)[keep.ravel()],
            "align": np.tile(LABEL_ALIGN, 2)[keep.ravel()],
            "dx": np.tile(LABEL_DX, 2)[keep.ravel()], "dy": np.tile(LABEL_DY, 2)[keep.ravel()],
            "colour": np.tile(COLOURS, 2)[keep.ravel()],
        }
        self._flip_table.object = _flip_table(keypoints, flipped_kp)
        self._flip_check.object = _flip_check(keypoints, flipped_kp)

    def __panel__(self):
        return self._layout


def _hover_names(canvas: FaceCanvas) -> None:
    """Keypoint names on hover over the canvas' filled points."""
    points = [r for r in canvas.figure.renderers
              if getattr(r, "data_source", None) is canvas.pred]
    canvas.figure.add_tools(HoverTool(renderers=points, tooltips=[("", "@name")]))


def _xy(kp: np.ndarray, name: str) -> str:
    i = KEYPOINT_NAMES.index(name)
    x, y = kp[2 * i], kp[2 * i + 1]
    return "–" if not (np.isfinite(x) and np.isfinite(y)) else f"{x:.1f}, {y:.1f}"


_TABLE_STYLE = (
    "<style>.fkd-small{border-collapse:collapse;font-size:12px}.fkd-small td,.fkd-small th"
    "{padding:1px 8px;border-bottom:1px solid #ddd;text-align:right}"
    ".fkd-small td:first-child,.fkd-small th:first-child{text-align:left}</style>")


def _samples_table(kps: np.ndarray) -> str:
    """Per sample, where three keypoints went (pixel-index x, y; – where unlabelled or pushed
    out of the frame): the numbers behind the pictures."""
    names = ("left_eye_center", "right_eye_center", "nose_tip")
    head = "".join(f"<th>{n}</th>" for n in names)
    body = "".join(
        f"<tr><td>#{i + 1}</td>" + "".join(f"<td>{_xy(kp, n)}</td>" for n in names) + "</tr>"
        for i, kp in enumerate(kps))
    return (f'<table class="fkd-small fkd-samples"><thead><tr><th>sample</th>{head}</tr>'
            f"</thead><tbody>{body}</tbody></table>{_TABLE_STYLE}")


def _flip_table(original: np.ndarray, flipped: np.ndarray) -> str:
    body = []
    for i, name in enumerate(KEYPOINT_NAMES):
        swatch = (f'<span style="display:inline-block;width:10px;height:10px;'
                  f'background:{COLOURS[i]};border:1px solid #555;margin-right:4px"></span>')
        body.append(f"<tr><td>{swatch}{NAMES[i]}</td><td>{_xy(original, name)}</td>"
                    f"<td>{_xy(flipped, name)}</td></tr>")
    return ('<table class="fkd-small fkd-flip-positions"><thead><tr><th>keypoint</th>'
            "<th>original x, y</th><th>flipped x, y</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{_TABLE_STYLE}")


def _flip_check(original: np.ndarray, flipped: np.ndarray) -> str:
    """Per left/right pair, how far right of its partner the left keypoint sits, before and
    after the flip: the sign must not change (it would if a flip forgot to swap names)."""
    lines, bad = [], 0
    for left, right in PAIRS:
        i, j = KEYPOINT_NAMES.index(left), KEYPOINT_NAMES.index(right)
        before = original[2 * i] - original[2 * j]
        after = flipped[2 * i] - flipped[2 * j]
        if not (np.isfinite(before) and np.isfinite(after)):
            continue
        ok = np.sign(before) == np.sign(after)
        bad += not ok
        lines.append(f"<li>{left.replace('left_', '')}: left − right x {before:+.1f} → "
                     f"{after:+.1f} {'✓' if ok else '✗ swapped'}</li>")
    if not lines:
        return "<p>This row labels no left/right pair.</p>"
    verdict = ("left and right labels are consistent after the flip" if not bad
               else f"{bad} pair(s) changed side: the flip did not swap their names")
    return f"<p><b>{verdict}</b></p><ul style='margin:0;font-size:12px'>{''.join(lines)}</ul>"
