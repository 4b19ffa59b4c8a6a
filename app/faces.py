"""Drawing faces with keypoints in Bokeh: geometry and column data shared by the grid and detail.

Many faces are drawn in *one* figure, each at an offset, so a page switch replaces the data
of a handful of ``ColumnDataSource`` s instead of touching dozens of figures. The y range is
reversed so image rows and Kaggle's y (which grows downwards) both read top to bottom.
"""

from __future__ import annotations

import numpy as np
from bokeh.models import (
    ColumnDataSource,
    HTMLLabelSet,
    Image,
    LinearColorMapper,
    Quad,
    Range1d,
    Scatter,
    Segment,
    TapTool,
)
from bokeh.palettes import Greys256
from bokeh.plotting import figure

from fkd_core.keypoints import FRAME, IMAGE_SIZE, KEYPOINT_COLOURS, KEYPOINT_NAMES, N_KEYPOINTS

COLOURS = np.array([KEYPOINT_COLOURS[n] for n in KEYPOINT_NAMES])
NAMES = np.array(KEYPOINT_NAMES)
GAP = 8  # between faces, in image pixels
CAPTION = 16  # room under each face for its caption, in image pixels
SCALE = 1.25  # screen pixels per image pixel in the grid

_EMPTY_IMAGES = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
_EMPTY_POINTS = {"x": [], "y": [], "colour": [], "name": []}
_EMPTY_SEGMENTS = {"x0": [], "y0": [], "x1": [], "y1": [], "colour": []}


#: The grey value drawn transparent: the room between the faces of a :func:`mosaic` (a face's
#: white, 255, is drawn as 254, which no eye tells apart).
CLEAR = 255


def grey_mapper() -> LinearColorMapper:
    """A fresh grey colour mapper (Bokeh models may belong to one document only); values
    above 254 (:data:`CLEAR`) are transparent."""
    return LinearColorMapper(palette=Greys256, low=0, high=CLEAR - 1,
                             high_color=(0, 0, 0, 0))


def face_figure(source: ColumnDataSource, scale: float, css_class: str):
    """One bare face at ``scale`` screen pixels per image pixel, pixel centres on integers."""
    fig = figure(
        x_range=Range1d(*FRAME), y_range=Range1d(FRAME[1], FRAME[0]),
        frame_width=int(IMAGE_SIZE * scale), frame_height=int(IMAGE_SIZE * scale),
        toolbar_location=None, tools="", min_border=0, outline_line_color=None,
        css_classes=[css_class], x_axis_type=None, y_axis_type=None,
    )
    fig.add_glyph(source, Image(image="image", x="x", y="y", dw="dw", dh="dh",
                                color_mapper=grey_mapper()))
    return fig


class FaceCanvas:
    """One figure showing ``slots`` faces in ``columns`` columns, all data in five sources."""

    def __init__(self, scale: float = SCALE, css_class: str = "fkd-faces", captions=True,
                 tap=False):
        self.scale = scale
        self.images = ColumnDataSource(dict(_EMPTY_IMAGES))
        self.truth = ColumnDataSource(dict(_EMPTY_POINTS))
        self.pred = ColumnDataSource(dict(_EMPTY_POINTS))
        self.segments = ColumnDataSource(dict(_EMPTY_SEGMENTS))
        self.labels = ColumnDataSource({"x": [], "y": [], "text": []})
        self.cells = ColumnDataSource({"left": [], "right": [], "top": [], "bottom": []})
        fig = figure(
            x_range=Range1d(0, 1), y_range=Range1d(1, 0), toolbar_location=None, tools="",
            min_border=0, outline_line_color=None, css_classes=[css_class],
            background_fill_color="#f4f4f4", border_fill_color=None,
            x_axis_type=None, y_axis_type=None,
        )
        # add_glyph, not fig.scatter & co.: those add selection, non-selection and muted
        # copies of every glyph, models a session's server builds and sends for nothing.
        fig.add_glyph(self.images, Image(image="image", x="x", y="y", dw="dw", dh="dh",
                                         color_mapper=grey_mapper()))
        fig.add_glyph(self.segments, Segment(x0="x0", y0="y0", x1="x1", y1="y1",
                                             line_color="colour", line_width=1.2,
                                             line_alpha=0.85))
        fig.add_glyph(self.truth, Scatter(x="x", y="y", size=7 * scale, fill_alpha=0,
                                          line_color="colour", line_width=1.6))
        fig.add_glyph(self.pred, Scatter(x="x", y="y", size=4.5 * scale, fill_color="colour",
                                         line_color="black", line_width=0.5))
        cells = fig.add_glyph(self.cells, Quad(left="left", right="right", top="top",
                                               bottom="bottom", fill_alpha=0, line_alpha=0))
        if tap:
            tool = TapTool(renderers=[cells])
            fig.add_tools(tool)
            fig.toolbar.active_tap = tool
        if captions:
            fig.add_layout(HTMLLabelSet(
                x="x", y="y", text="text", source=self.labels, text_font_size="11px",
                text_color="#222", text_align="center", text_baseline="top",
                css_classes=["fkd-caption"],
            ))
        self.figure = fig
        self.columns = 1
        self.resize(1, 1)

    def resize(self, slots: int, columns: int) -> None:
        """Fit the figure to ``slots`` faces in ``columns`` columns (property changes only)."""
        self.columns = columns
        rows = max(1, -(-slots // columns))
        width = columns * (IMAGE_SIZE + GAP)
        height = rows * (IMAGE_SIZE + GAP + CAPTION)
        fig = self.figure
        fig.x_range.update(start=-GAP / 2 - 0.5, end=width - GAP / 2 - 0.5)
        fig.y_range.update(start=height - GAP / 2 - 0.5, end=-GAP / 2 - 0.5)
        fig.frame_width = int(round(width * self.scale))
        fig.frame_height = int(round(height * self.scale))

    def offsets(self, slots: int) -> tuple[np.ndarray, np.ndarray]:
        s = np.arange(slots)
        return (s % self.columns) * (IMAGE_SIZE + GAP), (s // self.columns) * (
            IMAGE_SIZE + GAP + CAPTION)

    def show(self, images, truth, pred, captions) -> None:
        """Draw faces in slot order.

        ``images`` (n, 96, 96) uint8; ``truth`` and ``pred`` (n, 30) pixels with NaN where
        missing (``truth`` may be None: test faces); ``captions`` n strings.
        """
        n = len(images)
        ox, oy = self.offsets(n)
        sheet = mosaic(images, ox, oy)
        self.images.data = {"image": [sheet], "x": [-0.5], "y": [-0.5],
                            "dw": [sheet.shape[1]], "dh": [sheet.shape[0]]}
        pred_pts = in_frame(pred.reshape(n, N_KEYPOINTS, 2))
        self.pred.data = _points(pred_pts, ox, oy)
        if truth is None:
            self.truth.data = dict(_EMPTY_POINTS)
            self.segments.data = dict(_EMPTY_SEGMENTS)
        else:
            truth_pts = truth.reshape(n, N_KEYPOINTS, 2)
            self.truth.data = _points(truth_pts, ox, oy)
            self.segments.data = _segments(truth_pts, pred_pts, ox, oy)
        self.labels.data = {"x": ox + IMAGE_SIZE / 2 - 0.5, "y": oy + IMAGE_SIZE,
                            "text": list(captions)}
        self.cells.data = {"left": ox - 0.5, "right": ox + IMAGE_SIZE - 0.5,
                           "top": oy - 0.5, "bottom": oy + IMAGE_SIZE - 0.5}

    def clear(self) -> None:
        for source, empty in ((self.images, _EMPTY_IMAGES), (self.truth, _EMPTY_POINTS),
                              (self.pred, _EMPTY_POINTS), (self.segments, _EMPTY_SEGMENTS)):
            source.data = dict(empty)
        self.labels.data = {"x": [], "y": [], "text": []}
        self.cells.data = {"left": [], "right": [], "top": [], "bottom": []}


def mosaic(images: np.ndarray, ox: np.ndarray, oy: np.ndarray) -> np.ndarray:
    """The faces of a canvas as one image, each at its offset, :data:`CLEAR` between them.

    One image instead of one per face: the browser colour-maps and draws a page in one go
    (and the page's pixels travel as one buffer), which made a page turn cheaper for it."""
    if not len(images):
        return np.full((1, 1), CLEAR, np.uint8)
    h = int(oy.max()) + IMAGE_SIZE
    w = int(ox.max()) + IMAGE_SIZE
    sheet = np.full((h, w), CLEAR, np.uint8)
    for image, x, y in zip(images, ox.astype(int), oy.astype(int)):
        sheet[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE] = np.minimum(image, CLEAR - 1)
    return sheet


def in_frame(points: np.ndarray) -> np.ndarray:
    """Predictions far off the face are drawn on its border (the frame every part of fkd
    uses), not over the neighbouring face."""
    return np.clip(points, *FRAME)


def _points(points: np.ndarray, ox: np.ndarray, oy: np.ndarray) -> dict:
    """(n, 15, 2) points at per-face offsets → scatter columns, missing points left out."""
    n = len(points)
    keep = np.isfinite(points).all(axis=2).ravel()
    xs = (points[..., 0] + ox[:, None]).ravel()
    ys = (points[..., 1] + oy[:, None]).ravel()
    return {"x": xs[keep], "y": ys[keep], "colour": np.tile(COLOURS, n)[keep],
            "name": np.tile(NAMES, n)[keep]}


def _segments(truth: np.ndarray, pred: np.ndarray, ox: np.ndarray, oy: np.ndarray) -> dict:
    keep = (np.isfinite(truth).all(axis=2) & np.isfinite(pred).all(axis=2)).ravel()
    n = len(truth)
    return {
        "x0": (truth[..., 0] + ox[:, None]).ravel()[keep],
        "y0": (truth[..., 1] + oy[:, None]).ravel()[keep],
        "x1": (pred[..., 0] + ox[:, None]).ravel()[keep],
        "y1": (pred[..., 1] + oy[:, None]).ravel()[keep],
        "colour": np.tile(COLOURS, n)[keep],
    }
