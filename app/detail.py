"""One face in detail: drawn large, with every keypoint's true and predicted position and error."""

from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool, Scatter, Segment

from app.faces import COLOURS, NAMES, face_figure, in_frame
from app.untrusted import html_text
from fkd_core.keypoints import IMAGE_SIZE, KEYPOINT_NAMES, N_KEYPOINTS

SCALE = 3
#: Shown until a face is clicked.
HINT = "<p>Click a face to see it here, large, with every keypoint's error.</p>"


class FaceDetail(pn.viewable.Viewer):
    """A large face (runs A and B as filled circles and triangles) above a 15-row table."""

    def __init__(self, **params):
        super().__init__(**params)
        self._image = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self._points = ColumnDataSource(_empty_points())
        self._segments = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": [], "colour": []})
        fig = face_figure(self._image, SCALE, "fkd-detail-face")
        fig.add_glyph(self._segments, Segment(x0="x0", y0="y0", x1="x1", y1="y1",
                                              line_color="colour", line_width=2,
                                              line_alpha=0.85))
        points = fig.add_glyph(self._points, Scatter(
            x="x", y="y", marker="marker", size="size", fill_color="fill",
            fill_alpha="fill_alpha", line_color="colour", line_width=2))
        fig.add_tools(HoverTool(renderers=[points], tooltips=[
            ("keypoint", "@name"), ("", "@what"), ("x, y", "@x{0.0}, @y{0.0}"),
        ]))
        self._figure = fig
        self._heading = pn.pane.HTML(HINT, css_classes=["fkd-detail-title"], margin=(0, 10),
                                     width=IMAGE_SIZE * SCALE)
        self._table = pn.pane.HTML("", css_classes=["fkd-detail-table"], margin=(0, 10))
        self._legend = pn.pane.HTML("", margin=(0, 10), width=IMAGE_SIZE * SCALE,
                                    styles={"font-size": "12px"})
        self._layout = pn.Column(self._heading, pn.pane.Bokeh(fig), self._legend, self._table)

    def show(self, image, truth, runs: list[tuple[str, np.ndarray]], heading: str) -> None:
        """Draw one face; ``runs`` is [(run id, (30,) prediction)], one or two of them."""
        self._image.data = {"image": [image], "x": [-0.5], "y": [-0.5],
                            "dw": [IMAGE_SIZE], "dh": [IMAGE_SIZE]}
        tp = None if truth is None else truth.reshape(N_KEYPOINTS, 2)
        pts = _empty_points()
        seg = {"x0": [], "y0": [], "x1": [], "y1": [], "colour": []}
        if tp is not None:
            _add_points(pts, tp, "circle", 13, 0.0, "true position")
        markers = ("circle", "triangle")
        errors = []
        for (run_id, pred), marker in zip(runs, markers):
            pp = pred.reshape(N_KEYPOINTS, 2)
            _add_points(pts, in_frame(pp), marker, 9, 1.0,
                        f"predicted by {run_id}")
            if tp is not None:
                ok = np.isfinite(tp).all(axis=1)
                clipped = in_frame(pp)
                seg["x0"] += list(tp[ok, 0])
                seg["y0"] += list(tp[ok, 1])
                seg["x1"] += list(clipped[ok, 0])
                seg["y1"] += list(clipped[ok, 1])
                seg["colour"] += list(COLOURS[ok])
                errors.append(np.sqrt(((pp - tp) ** 2).sum(axis=1)))
        self._points.data = pts
        self._segments.data = seg
        self._heading.object = f"<h3>{html_text(heading)}</h3>"
        self._table.object = _table(tp, runs, errors)
        shapes = ["filled circle", "filled triangle"]
        self._legend.object = (
            ("hollow circle: true position · " if tp is not None else "")
            + " · ".join(f"{s}: {html_text(r)}" for s, (r, _) in zip(shapes, runs))
            + " · subject's left warm, right cool"
        )

    def __panel__(self):
        return self._layout


def _empty_points() -> dict:
    return {k: [] for k in ("x", "y", "marker", "size", "fill", "fill_alpha", "colour",
                            "name", "what")}


def _add_points(pts: dict, points: np.ndarray, marker: str, size: float, fill_alpha: float,
                what: str) -> None:
    ok = np.isfinite(points).all(axis=1)
    n = int(ok.sum())
    pts["x"] += list(points[ok, 0])
    pts["y"] += list(points[ok, 1])
    pts["marker"] += [marker] * n
    pts["size"] += [size] * n
    pts["fill"] += list(COLOURS[ok])
    pts["fill_alpha"] += [fill_alpha] * n
    pts["colour"] += list(COLOURS[ok]) if fill_alpha == 0 else ["black"] * n
    pts["name"] += list(NAMES[ok])
    pts["what"] += [what] * n


def _fmt(v: float, digits: int = 1) -> str:
    return "–" if not np.isfinite(v) else f"{v:.{digits}f}"


def _table(truth, runs, errors) -> str:
    """15 rows: keypoint, true x/y, then per run predicted x/y and error (px)."""
    head = "<th>keypoint</th>" + ("<th>true x, y</th>" if truth is not None else "")
    for run_id, _ in runs:
        name = html_text(run_id)
        head += f"<th>{name}<br>x, y</th>"
        if truth is not None:
            head += f"<th>{name}<br>error px</th>"
    body = []
    for i, kp in enumerate(KEYPOINT_NAMES):
        swatch = (f'<span style="display:inline-block;width:10px;height:10px;'
                  f'background:{COLOURS[i]};border:1px solid #555;margin-right:4px"></span>')
        cells = f"<td>{swatch}{kp}</td>"
        if truth is not None:
            cells += f"<td>{_fmt(truth[i, 0])}, {_fmt(truth[i, 1])}</td>"
        for k, (_, pred) in enumerate(runs):
            cells += f"<td>{_fmt(pred[2 * i])}, {_fmt(pred[2 * i + 1])}</td>"
            if truth is not None:
                cells += f"<td>{_fmt(errors[k][i], 2)}</td>"
        body.append(f"<tr>{cells}</tr>")
    return (
        '<table class="fkd-keypoints" style="border-collapse:collapse;font-size:12px">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        "<style>.fkd-keypoints td,.fkd-keypoints th{padding:2px 8px;border-bottom:1px solid #ddd;"
        "text-align:right}.fkd-keypoints td:first-child{text-align:left}</style>"
    )
