"""Experiments: learning curves of chosen runs, a sweep's sensitivity, every run's cost.

Three figures, each drawn from :mod:`fkd_core.experiments` (which reads and checks the run
folders' ``history.csv``, groups runs by their sweep tag and measures inference cost); the
view only keeps the choices and fills Bokeh sources. Inference cost is measured once per run
and machine by the store, one run after another in a worker thread, and the bubbles appear
as their runs are timed. Clicking a bubble calls ``on_run(run_id)``: the page opens that
run's faces.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import panel as pn
import param
from bokeh.models import BasicTicker, ColumnDataSource, FactorRange, HoverTool, TapTool
from bokeh.palettes import Category10_10, Category20_20
from bokeh.plotting import figure
from bokeh.transform import factor_cmap

from app.background import compute_then_update, in_document
from app.state import Store, Unavailable
from app.untrusted import Message
from fkd_core import experiments

NO_SWEEP = "— none: pick runs —"
NO_LINES = "— one line —"
COST_AXES = {"ms per face": "ms", "GFLOPs": "gflops"}
#: Runs whose curves are shown when no sweep is chosen: the best ones.
DEFAULT_CURVES = 5
#: Bubble diameter (screen px) of the run with the most parameters; area ∝ parameters.
MAX_BUBBLE = 60
MIN_BUBBLE = 8


def _palette(n: int) -> list[str]:
    colours = Category10_10 if n <= 10 else Category20_20
    return [colours[i % len(colours)] for i in range(n)]


class ExperimentsView(pn.viewable.Viewer):
    """Learning curves, sweep sensitivity and the architecture comparison."""

    sweep = param.Selector(default=NO_SWEEP, objects=[NO_SWEEP],
                           doc="A sweep: its runs' curves and its sensitivity plot.")
    runs = param.ListSelector(default=[], objects=[], doc="Runs whose curves are drawn.")
    metric = param.Selector(default="RMSE (px)", objects=list(experiments.CURVES))
    log_scale = param.Boolean(default=False, doc="Logarithmic y axis for the curves.")
    x_option = param.Selector(default=None, objects=[], doc="Swept option on the x axis.")
    by_option = param.Selector(default=NO_LINES, objects=[NO_LINES],
                               doc="Swept option whose values get a line each.")
    cost_axis = param.Selector(default="ms per face", objects=list(COST_AXES))

    def __init__(self, store: Store, on_run: Callable[[str], None] | None = None, **params):
        super().__init__(**params)
        self.store = store
        self.on_run = on_run
        self._started = False
        self._timing: str | None = None
        self._tried: set[str] = set()
        self._ok: list = []
        self._sweeps: dict[str, list] = {}
        self._keys: list[str] = []
        self._curve_message = Message("fkd-exp-curves-message")
        self._sweep_message = Message("fkd-exp-sweep-message")
        self._cost_message = Message("fkd-exp-cost-message")
        self._train = ColumnDataSource({"xs": [], "ys": [], "run": [], "colour": []})
        self._val = ColumnDataSource({"xs": [], "ys": [], "run": [], "colour": []})
        self._best = ColumnDataSource({"x": [], "y": [], "run": [], "colour": []})
        self._lines = ColumnDataSource({"xs": [], "ys": [], "label": [], "colour": []})
        self._points = ColumnDataSource({"x": [], "y": [], "label": [], "colour": [],
                                         "best": [], "count": [], "best_run": []})
        self._bubbles = ColumnDataSource({k: [] for k in (
            "run", "arch", "x", "ms", "gflops", "params", "rmse", "size", "settings")})
        self._curves_linear = self._curves_figure("linear")
        self._curves_log = self._curves_figure("log")
        self._curves_log.visible = False
        self._sensitivity = self._sensitivity_figure()
        self._comparison = self._comparison_figure()
        self._bubbles.selected.on_change("indices", self._on_tap)
        w = pn.widgets
        self._sweep_box = pn.Column(
            pn.pane.Markdown("### Sensitivity\nValidation RMSE of the chosen sweep against "
                             "one swept option (the mean over the other options' values; "
                             "the hover names the best run).", margin=(0, 10)),
            pn.Row(w.Select.from_param(self.param.x_option, label="x axis", width=200,
                                       css_classes=["fkd-exp-x"]),
                   w.Select.from_param(self.param.by_option, label="one line per", width=200,
                                       css_classes=["fkd-exp-by"])),
            pn.pane.Bokeh(self._sensitivity),
        )
        self._layout = pn.Column(
            pn.pane.Markdown("### Learning curves\nPer epoch, solid: validation, dashed: "
                             "training; ● the best epoch (the weights the run kept).",
                             margin=(0, 10)),
            pn.Row(
                w.Select.from_param(self.param.sweep, label="Sweep", width=260,
                                    css_classes=["fkd-exp-sweep"]),
                w.MultiChoice.from_param(self.param.runs, label="Runs", width=520,
                                         css_classes=["fkd-exp-runs"]),
            ),
            pn.Row(w.RadioButtonGroup.from_param(self.param.metric, css_classes=[
                "fkd-exp-metric"]),
                   w.Checkbox.from_param(self.param.log_scale, label="log scale",
                                         css_classes=["fkd-exp-log"])),
            self._curve_message.pane,
            pn.pane.Bokeh(self._curves_linear), pn.pane.Bokeh(self._curves_log),
            self._sweep_message.pane, self._sweep_box,
            pn.pane.Markdown("### Architecture comparison\nEvery run: validation RMSE against "
                             "its measured inference cost on this machine (or FLOPs); bubble "
                             "area ∝ parameters, colour = architecture. Click a bubble to "
                             "see that run's faces.", margin=(0, 10)),
            w.RadioButtonGroup.from_param(self.param.cost_axis, css_classes=["fkd-exp-axis"]),
            self._cost_message.pane,
            pn.pane.Bokeh(self._comparison),
            sizing_mode="stretch_width",
        )

    # -- figures ------------------------------------------------------------------------

    def _curves_figure(self, scale: str):
        fig = figure(width=1150, height=360, y_axis_type=scale, tools="pan,wheel_zoom,reset",
                     toolbar_location="right", x_axis_label="epoch", name=f"fkd-exp-{scale}",
                     css_classes=["fkd-exp-curves"])
        fig.multi_line("xs", "ys", source=self._train, line_color="colour", line_dash="dashed",
                       line_alpha=0.7, line_width=1.5)
        val = fig.multi_line("xs", "ys", source=self._val, line_color="colour", line_width=2.5,
                             name=f"fkd-exp-val-{scale}", legend_field="run")
        fig.scatter("x", "y", source=self._best, color="colour", size=11,
                    line_color="black", name=f"fkd-exp-best-{scale}")
        fig.add_tools(HoverTool(renderers=[val], tooltips=[
            ("run", "@run"), ("epoch", "$x{0}"), ("value", "$y{0.000}")]))
        fig.add_layout(fig.legend[0], "right")
        fig.xaxis.ticker = BasicTicker(min_interval=1)
        return fig

    def _sensitivity_figure(self):
        fig = figure(x_range=FactorRange(factors=[]), width=800, height=320, tools="",
                     toolbar_location=None, y_axis_label="validation RMSE (px)",
                     name="fkd-exp-sensitivity", css_classes=["fkd-exp-sensitivity"])
        fig.multi_line("xs", "ys", source=self._lines, line_color="colour", line_width=2)
        dots = fig.scatter("x", "y", source=self._points, color="colour", size=9,
                           legend_field="label")
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[
            ("", "@label"), ("value", "@x"), ("mean RMSE", "@y{0.000} px"),
            ("best", "@best{0.000} px (@best_run)"), ("runs", "@count")]))
        fig.y_range.range_padding = 0.2
        fig.add_layout(fig.legend[0], "right")
        return fig

    def _comparison_figure(self):
        fig = figure(width=1150, height=440, x_axis_type="log", tools="pan,wheel_zoom,reset",
                     toolbar_location="right", y_axis_label="validation RMSE (px)",
                     x_axis_label="ms per face", name="fkd-exp-comparison",
                     css_classes=["fkd-exp-comparison"])
        self._colours = factor_cmap("arch", palette=Category10_10, factors=[])
        dots = fig.scatter("x", "rmse", size="size", source=self._bubbles, fill_alpha=0.55,
                           color=self._colours, line_color="black", legend_field="arch",
                           name="fkd-exp-bubbles", nonselection_fill_alpha=0.55)
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[
            ("run", "@run"), ("architecture", "@arch"), ("settings", "@settings"),
            ("val RMSE", "@rmse{0.000} px"), ("ms per face", "@ms{0.000}"),
            ("GFLOPs", "@gflops{0.000}"), ("parameters", "@params{0,0}")]))
        tap = TapTool(renderers=[dots])
        fig.add_tools(tap)
        fig.toolbar.active_tap = tap
        fig.x_range.range_padding = fig.y_range.range_padding = 0.25  # room for the bubbles
        fig.add_layout(fig.legend[0], "right")
        return fig

    # -- choices ------------------------------------------------------------------------

    def activate(self) -> None:
        """Read the runs (again: new ones show when the tab is shown) and start timing."""
        self._started = True
        self.refresh()

    def refresh(self) -> None:
        self._ok = self.store.ok_runs()
        self._sweeps = experiments.sweeps_of(self._ok)
        ids = [r.id for r in self._ok]
        self.param.runs.objects = ids
        self.param.sweep.objects = [NO_SWEEP, *self._sweeps]
        first = not self.runs and self.sweep == NO_SWEEP
        if self.sweep not in self.param.sweep.objects:
            self.sweep = NO_SWEEP
        if first and self._sweeps:
            self.sweep = self._newest_sweep()
        else:
            kept = [r for r in self.runs if r in ids]
            self.runs = kept if kept or not first else ids[:DEFAULT_CURVES]
            self._sweep_changed()
        self.draw_curves()
        self._next_cost()
        self.draw_comparison()

    def _newest_sweep(self) -> str:
        return max(self._sweeps, key=lambda s: max(
            str(r.config.get("created", "")) for r in self._sweeps[s]))

    @param.depends("sweep", watch=True)
    @in_document
    def _sweep_changed(self) -> None:
        chosen = self._sweeps.get(self.sweep)
        if chosen is not None and self._started:
            self.runs = [r.id for r in chosen]
        if not self._sweeps:
            self._sweep_message.say(
                "No sweeps in this models folder yet: `fkd sweep --grid lr=1e-3,3e-4 --grid "
                "dropout=0.1,0.3 …` trains one (the README has the commands).")
            self._sweep_box.visible = False
            return
        if chosen is None:
            self._sweep_message.say("Choose a sweep above to see its sensitivity.")
            self._sweep_box.visible = False
            return
        self._sweep_message.say("")
        self._sweep_box.visible = True
        keys = experiments.swept_keys(chosen)
        self.param.x_option.objects = keys
        self.param.by_option.objects = [NO_LINES, *keys]
        if keys != self._keys:  # another sweep's options: its first two, as in its command
            self._keys = keys
            self.x_option = keys[0] if keys else None
            self.by_option = keys[1] if len(keys) > 1 else NO_LINES
        self.draw_sensitivity()

    # -- learning curves ----------------------------------------------------------------

    @param.depends("runs", "metric", "log_scale", watch=True)
    @in_document
    def draw_curves(self) -> None:
        train_col, val_col = experiments.CURVES[self.metric]
        colours = _palette(len(self.runs))
        train = {"xs": [], "ys": [], "run": [], "colour": []}
        val = {"xs": [], "ys": [], "run": [], "colour": []}
        best = {"x": [], "y": [], "run": [], "colour": []}
        problems = []
        for run_id, colour in zip(self.runs, colours):
            run = next((r for r in self._ok if r.id == run_id), None)
            if run is None:
                continue
            try:
                history = experiments.read_history(run.path)
            except experiments.HistoryError as exc:
                problems.append(f"{run_id}: {exc}")
                continue
            x = history.epochs.astype(float)
            for column, out in ((train_col, train), (val_col, val)):
                y = history.curve(column)
                if y is None:
                    continue
                if self.log_scale:
                    y = np.where(y > 0, y, np.nan)
                out["xs"].append(x)
                out["ys"].append(y)
                out["run"].append(run_id)
                out["colour"].append(colour)
            epoch = history.best_epoch
            y = history.curve(val_col)
            if epoch is not None and y is not None:
                at = int(np.flatnonzero(history.epochs == epoch)[0])
                if np.isfinite(y[at]) and (y[at] > 0 or not self.log_scale):
                    best["x"].append(float(epoch))
                    best["y"].append(float(y[at]))
                    best["run"].append(run_id)
                    best["colour"].append(colour)
        if problems:
            self._curve_message.say("No curve for these runs:\n" + "\n".join(problems),
                                    "warning")
        elif not self.runs:
            self._curve_message.say("Choose runs (or a sweep) to see their curves.")
        else:
            self._curve_message.say("")
        self._train.data, self._val.data, self._best.data = train, val, best
        for fig in (self._curves_linear, self._curves_log):
            fig.yaxis.axis_label = self.metric
        self._curves_linear.visible = not self.log_scale
        self._curves_log.visible = self.log_scale

    # -- sensitivity --------------------------------------------------------------------

    @param.depends("x_option", "by_option", watch=True)
    @in_document
    def draw_sensitivity(self) -> None:
        chosen = self._sweeps.get(self.sweep)
        if not chosen or self.x_option is None:
            self._lines.data = {"xs": [], "ys": [], "label": [], "colour": []}
            self._points.data = {k: [] for k in self._points.data}
            return
        by = None if self.by_option in (NO_LINES, self.x_option) else self.by_option
        factors, lines = experiments.sensitivity(chosen, self.x_option, by)
        colours = _palette(len(lines))
        points = {k: [] for k in ("x", "y", "label", "colour", "best", "count", "best_run")}
        for line, colour in zip(lines, colours):
            points["x"] += line.x
            points["y"] += line.mean.tolist()
            points["label"] += [line.label] * len(line.x)
            points["colour"] += [colour] * len(line.x)
            points["best"] += line.best.tolist()
            points["count"] += line.count.tolist()
            points["best_run"] += line.best_run
        self._sensitivity.x_range.factors = factors
        self._sensitivity.xaxis.axis_label = self.x_option
        self._lines.data = {"xs": [line.x for line in lines],
                            "ys": [line.mean.tolist() for line in lines],
                            "label": [line.label for line in lines], "colour": colours}
        self._points.data = points

    # -- architecture comparison -----------------------------------------------------------

    def _next_cost(self) -> None:
        """Time the next run without a known cost (one at a time: the bubbles fill in)."""
        if not self._started or self._timing is not None:
            return
        todo = [r.id for r in self._ok
                if not self.store.cost_ready(r.id) and r.id not in self._tried]
        if not todo:
            self._say_costs()
            return
        run_id = self._timing = todo[0]
        self._tried.add(run_id)  # a run that vanished meanwhile is not tried again and again
        self._cost_message.say(f"Measuring inference cost: {len(self._ok) - len(todo)} of "
                               f"{len(self._ok)} runs done, now {run_id} (once per run and "
                               "machine, kept in the run folder)…")
        store = self.store
        compute_then_update(lambda: store.inference_cost(run_id), self._cost_measured)

    def _cost_measured(self) -> None:
        self._timing = None
        self.draw_comparison()
        self._next_cost()

    def _say_costs(self) -> None:
        failed = []
        for r in self._ok:
            try:
                self.store.inference_cost(r.id)
            except Unavailable as exc:
                failed.append(str(exc))
        if failed:
            self._cost_message.say("Not shown (cannot be timed):\n" + "\n".join(failed),
                                   "warning")
        elif not self._ok:
            self._cost_message.say("No trained runs yet — the leaderboard tab says how to "
                                   "make one.")
        else:
            self._cost_message.say("")

    @param.depends("cost_axis", watch=True)
    @in_document
    def draw_comparison(self) -> None:
        rows = []
        for r in self._ok:
            if r.val_rmse is None or self._timing == r.id or not self.store.cost_ready(r.id):
                continue
            try:
                cost = self.store.inference_cost(r.id)
            except Unavailable:
                continue
            rows.append((r, cost))
        params = np.array([float(r.config.get("model", {}).get("params") or 0)
                           for r, _ in rows])
        top = params.max() if len(params) and params.max() > 0 else 1.0
        size = np.maximum(MIN_BUBBLE, MAX_BUBBLE * np.sqrt(params / top))
        ms = [c.ms_per_image for _, c in rows]
        gflops = [max(c.flops, 1) / 1e9 for _, c in rows]  # > 0 on the log axis
        archs = sorted({r.arch for r, _ in rows})
        self._colours.transform.factors = archs
        self._colours.transform.palette = _palette(max(1, len(archs)))
        axis = COST_AXES[self.cost_axis]
        self._comparison.xaxis.axis_label = self.cost_axis
        self._bubbles.selected.indices = []
        self._bubbles.data = {
            "run": [r.id for r, _ in rows], "arch": [r.arch for r, _ in rows],
            "x": ms if axis == "ms" else gflops, "ms": ms, "gflops": gflops,
            "params": params.tolist(), "rmse": [r.val_rmse for r, _ in rows],
            "size": size.tolist(), "settings": [experiments.settings_text(r) for r, _ in rows],
        }

    @in_document
    def _on_tap(self, attr, old, new) -> None:
        if not new:
            return
        run_id = self._bubbles.data["run"][new[0]]
        self._bubbles.selected.indices = []
        if self.on_run is not None:
            self.on_run(run_id)

    def __panel__(self):
        return self._layout
