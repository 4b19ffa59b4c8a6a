"""Activation maps: one convolution layer's feature maps for one face, tiled, with the face beside.

The run's model is loaded once per process by the store (off the event loop) and kept, so the
sub-model from the input to a layer (:func:`fkd_core.activations.submodel`) is built once per
(run, layer) and a face or layer change only runs it. All the maths — maps, per-channel means,
top-k, normalising and tiling — is :mod:`fkd_core.activations`'.
"""

from __future__ import annotations

import time

import numpy as np
import panel as pn
import param
from bokeh.models import BasicTicker, ColumnDataSource, HoverTool, LinearColorMapper, Range1d
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from app.background import compute_then_update, in_document, on_click
from app.faces import face_figure
from app.state import Store, Unavailable
from app.untrusted import Message, html_text
from fkd_core.keypoints import IMAGE_SIZE

TOP_K = ("all", 4, 8, 16, 32, 64)
MAX_WIDTH, MAX_HEIGHT, MAX_SCALE = 640, 560, 6.0  # the tiled maps' frame, screen px
FACE_SCALE = 2.5
BAR = "#7f9fbf"
TOP_BAR = "#ff7f0e"


def layer_label(name: str, shape: tuple) -> str:
    """'conv1 — 96×96×32': a layer as the page lists it."""
    return f"{name} — {'×'.join(str(d) for d in shape[1:])}"


class ActivationsView(pn.viewable.Viewer):
    """Pick a run, a convolution layer and a face; see the layer's normalised feature maps
    (all channels or the top k by mean activation) and a bar chart of every channel's mean."""

    run = param.Selector(default=None, objects=[], doc="Run whose model is inspected.")
    layer = param.Selector(default=None, objects=[], doc="Convolution layer (output shape).")
    row = param.Integer(default=0, doc="training.csv row of the face.")
    top_k = param.Selector(default="all", objects=list(TOP_K),
                           doc="Show every channel, or the k with the highest mean activation.")

    def __init__(self, store: Store, **params):
        super().__init__(**params)
        self.store = store
        self._started = False
        self._loading: set[str] = set()
        self._quiet = False
        self.last_ms = float("nan")
        self.tile_count = 0
        ids = [r.id for r in store.ok_runs()]
        self.param.run.objects = ids
        self.run = ids[0] if ids else None
        train = store.train
        if train is not None and len(train):
            self.row = int(train.row_ids[0])
        self._message = Message("fkd-act-message")
        self._summary = pn.pane.HTML("", css_classes=["fkd-act-summary"], margin=(0, 10))
        self._face = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self._maps = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self._tiles = ColumnDataSource({"x": [], "y": [], "w": [], "h": [], "channel": [],
                                        "mean": []})
        self._bars = ColumnDataSource({"channel": [], "mean": [], "colour": []})
        self._tiles_fig = self._tiles_figure()
        self._bars_fig = self._bars_figure()
        w = pn.widgets
        random_face = w.Button(label="random face", width=110, css_classes=["fkd-act-random"])
        on_click(random_face, self._random_face)
        self._content = pn.Row(
            pn.Column(pn.pane.Markdown("**input face**", margin=(0, 10)),
                      pn.pane.Bokeh(self._face_figure())),
            pn.Column(self._summary, pn.pane.Bokeh(self._tiles_fig, margin=(5, 10)),
                      pn.pane.Markdown("**mean activation per channel** (top k highlighted)",
                                       margin=(0, 10)),
                      pn.pane.Bokeh(self._bars_fig)),
            visible=False,
        )
        self._layout = pn.Column(
            pn.pane.Markdown(
                "### Activation maps\nA convolution layer's feature maps for one face, each "
                "channel scaled to its own range so weak filters stay visible.", margin=(0, 10)),
            pn.Row(
                w.Select.from_param(self.param.run, label="Run", width=240,
                                    css_classes=["fkd-act-run"]),
                w.Select.from_param(self.param.layer, label="Layer (output shape)", width=300,
                                    css_classes=["fkd-act-layer"]),
                w.IntInput.from_param(self.param.row, label="Face (training.csv row)",
                                      width=150, css_classes=["fkd-act-row"]),
                random_face,
                w.Select.from_param(self.param.top_k, label="Channels", width=90,
                                    css_classes=["fkd-act-top-k"]),
            ),
            self._message.pane, self._content, sizing_mode="stretch_width",
        )

    # -- figures ------------------------------------------------------------------------

    def _face_figure(self):
        return face_figure(self._face, FACE_SCALE, "fkd-act-face")

    def _tiles_figure(self):
        fig = figure(
            x_range=Range1d(0, 1), y_range=Range1d(1, 0), toolbar_location=None, tools="",
            min_border=0, outline_line_color=None, css_classes=["fkd-act-tiles"],
            name="fkd-act-tiles", frame_width=MAX_WIDTH, frame_height=200,
            x_axis_type=None, y_axis_type=None, frame_align=False,
        )  # not aligned with the bar chart's frame below, whose axis labels need a border
        mapper = LinearColorMapper(palette=Viridis256, low=0, high=1, nan_color="white")
        fig.image("image", x="x", y="y", dw="dw", dh="dh", source=self._maps,
                  color_mapper=mapper)
        tiles = fig.rect("x", "y", "w", "h", source=self._tiles, fill_alpha=0, line_alpha=0,
                         name="fkd-act-tile-rects")
        fig.add_tools(HoverTool(renderers=[tiles], tooltips=[
            ("channel", "@channel"), ("mean activation", "@mean{0.000}")]))
        return fig

    def _bars_figure(self):
        fig = figure(
            x_range=Range1d(-0.5, 0.5), width=MAX_WIDTH, height=170, tools="",
            toolbar_location=None, css_classes=["fkd-act-bars"], x_axis_label="channel",
            min_border_left=40,
        )
        bars = fig.vbar(x="channel", top="mean", width=0.8, color="colour", source=self._bars)
        fig.add_tools(HoverTool(renderers=[bars], tooltips=[
            ("channel", "@channel"), ("mean activation", "@mean{0.000}")]))
        fig.xaxis.ticker = BasicTicker(min_interval=1)
        fig.xgrid.visible = False
        return fig

    # -- model loading ------------------------------------------------------------------

    def activate(self) -> None:
        """Load the chosen run's model the first time the tab is shown."""
        if self._started:
            return
        self._started = True
        self._run_changed()

    def _say(self, text: str, kind: str = "info") -> None:
        self._message.say(text, kind)

    @param.depends("run", watch=True)
    @in_document
    def _run_changed(self) -> None:
        if not self._started:
            return
        self._content.visible = False
        if self.store.train is None or not len(self.store.train):
            self._say(f"No training faces to show: "
                      f"{self.store.data_error or 'this data has no training.csv'}", "danger")
            return
        if self.run is None:
            self._say("No trained runs yet — the leaderboard tab says how to make one.")
            return
        run_id = self.run
        if self.store.model_ready(run_id):
            self._model_loaded(run_id)
            return
        self._say(f"Loading the model of run {run_id} (once per server)…")
        if run_id in self._loading:
            return
        self._loading.add(run_id)
        store = self.store
        compute_then_update(lambda: store.model(run_id), lambda: self._model_loaded(run_id))

    def _model_loaded(self, run_id: str) -> None:
        from fkd_core.activations import conv_layer_names

        self._loading.discard(run_id)
        if run_id != self.run:
            return
        try:
            model = self.store.model(run_id)
        except Unavailable as exc:
            self._say(str(exc), "danger")
            self._content.visible = False
            return
        found = conv_layer_names(model)
        if not found:
            self._say(f"run {run_id}'s model has no convolution layers", "warning")
            return
        labels = {layer_label(name, shape): name for name, shape in found}
        self._quiet = True
        try:
            self.param.layer.objects = labels
            if self.layer not in labels.values():
                self.layer = found[0][0]
        finally:
            self._quiet = False
        self._say("")
        self.redraw()

    # -- drawing ------------------------------------------------------------------------

    def _random_face(self) -> None:
        train = self.store.train
        if train is not None and len(train):
            self.row = int(np.random.default_rng().choice(train.row_ids))

    @param.depends("layer", "row", "top_k", watch=True)
    @in_document
    def _choices_changed(self) -> None:
        if not self._quiet and self._started:
            self.redraw()

    def redraw(self) -> None:
        """Run the cached sub-model on the face and replace the three figures' data."""
        from fkd_core import activations

        if self.run is None or self.layer is None or not self.store.model_ready(self.run):
            return
        train = self.store.train
        found = np.flatnonzero(train.row_ids == self.row)
        if not len(found):
            lo, hi = int(train.row_ids.min()), int(train.row_ids.max())
            self._say(f"there is no training.csv row {self.row} (rows {lo}–{hi})", "danger")
            return
        try:
            model = self.store.model(self.run)
        except Unavailable as exc:
            self._say(str(exc), "danger")
            return
        image = train.images[int(found[0])]
        t0 = time.perf_counter()
        maps = activations.feature_maps(model, self.layer, image)
        h, w, c = maps.shape
        channels = (np.arange(c) if self.top_k == "all"
                    else activations.top_channels(maps, int(self.top_k)))
        n = len(channels)
        columns = max(1, min(n, int(np.ceil(np.sqrt(n * 1.5)))))
        tiled = activations.tile(maps, channels, columns)
        means = activations.channel_means(maps)
        self.last_ms = 1000 * (time.perf_counter() - t0)
        self._show(image, tiled, channels, means, columns, (h, w))
        self.tile_count = n
        which = ("every channel" if n == c
                 else f"the {n} most active of {c} channels, strongest first")
        names = list(self.param.layer.names.values())
        index = names.index(self.layer) + 1 if self.layer in names else 0
        self._summary.object = (
            f"<p>convolution layer {index} of {len(names)}: <b>{html_text(self.layer)}</b>"
            f" · output {h}×{w}×{c} · <b>{n} tiles</b> ({which}) · training.csv row "
            f"{self.row} · computed in {self.last_ms:.0f} ms</p>")
        self._say("")
        self._content.visible = True

    def _show(self, image, tiled, channels, means, columns: int, size: tuple[int, int]) -> None:
        h, w = size
        height, width = tiled.shape
        scale = min(MAX_WIDTH / width, MAX_HEIGHT / height, MAX_SCALE)
        fig = self._tiles_fig
        fig.x_range.update(start=-0.5, end=width - 0.5)
        fig.y_range.update(start=height - 0.5, end=-0.5)
        fig.frame_width = max(1, int(round(width * scale)))
        fig.frame_height = max(1, int(round(height * scale)))
        self._face.data = {"image": [image], "x": [-0.5], "y": [-0.5], "dw": [IMAGE_SIZE],
                           "dh": [IMAGE_SIZE]}
        self._maps.data = {"image": [tiled], "x": [-0.5], "y": [-0.5], "dw": [width],
                           "dh": [height]}
        slot = np.arange(len(channels))
        self._tiles.data = {
            "x": (slot % columns) * (w + 1) + (w - 1) / 2,
            "y": (slot // columns) * (h + 1) + (h - 1) / 2,
            "w": np.full(len(slot), w), "h": np.full(len(slot), h),
            "channel": np.asarray(channels), "mean": means[channels],
        }
        colours = np.full(len(means), BAR, dtype=object)
        if len(channels) < len(means):
            colours[channels] = TOP_BAR
        self._bars_fig.x_range.update(start=-0.5, end=len(means) - 0.5)
        self._bars.data = {"channel": np.arange(len(means)), "mean": means,
                           "colour": list(colours)}

    def __panel__(self):
        return self._layout
