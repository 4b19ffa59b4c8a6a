"""The Experiments tab in a real browser: a real 2 × 2 ``fkd sweep`` of tiny runs, a run whose
history.csv is broken and a run whose config.json strings are hostile.

Assertions read the figures' data in the page (Bokeh's document) and the visible text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import browser_harness
import pytest
from browser_harness import Session, expect_text

from app import screenshots as ui

pytestmark = pytest.mark.slow

SWEEP = "tiny"
BAD = "bad-history"
EVIL = "evil"
EVIL_SWEEP = "<script>alert('sweep')</script>"
EVIL_VALUE = "<img src=x onerror=alert('value')>"
EVIL_ARCH = "<img src=x onerror=alert('arch')>"
BAD_CELL = "<img src=x onerror=alert(1)>"
browser = browser_harness.browser
server = browser_harness.server
session = browser_harness.session


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_dir) -> Path:
    out = tmp_path_factory.mktemp("models")
    subprocess.run(
        [sys.executable, "-m", "fkd_core.cli", "sweep", "--data", str(demo_dir), "--models",
         str(out), *browser_harness.TINY_RUN[:4], "--epochs", "2", "--steps-per-epoch", "2",
         "--batch-size", "16", "--augment", "none", "--grid", "lr=0.001,0.0003",
         "--grid", "width=0.25,0.5", "--sweep-id", SWEEP],
        check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True)
    trials = sorted(p for p in out.iterdir() if p.name.startswith(f"{SWEEP}-"))
    assert len(trials) == 4
    for name in (BAD, EVIL):
        shutil.copytree(trials[0], out / name)
        config = json.loads((out / name / "config.json").read_text())
        config["run_id"] = name
        config["created"] = "2000-01-01T00:00:00+00:00"  # never the newest sweep
        if name == BAD:
            del config["sweep"]
            (out / name / "history.csv").write_text(
                f"epoch,loss,val_loss\n0,0.5,0.4\n1,{BAD_CELL},0.3\n")
        else:
            config["arch"] = config["train"]["arch"] = EVIL_ARCH
            config["sweep"] = {"id": EVIL_SWEEP, "values": {"width": EVIL_VALUE}}
        (out / name / "config.json").write_text(json.dumps(config))
    return out


def _data(s: Session, name: str, column: str) -> list:
    """A column of the data of the renderer (or the figure's first renderer) named ``name``."""
    return s.page.evaluate("""([name, column]) => {
        const doc = Bokeh.documents[0];
        let m = doc.get_model_by_name(name);
        if (m === null) return null;
        if (m.renderers !== undefined) m = m.renderers[0];
        return Array.from(m.data_source.data[column] ?? []);
    }""", [name, column])


def _wait_for(s: Session, what: str, condition, timeout_s: float = 60.0):
    """Poll ``condition()`` until it is true; fail naming ``what`` and its last value."""
    value = None
    for _ in range(int(timeout_s * 5)):
        value = condition()
        if value:
            return value
        s.page.wait_for_timeout(200)
    pytest.fail(f"{what} never happened (last: {value!r}; {s.where()})")


def _injected(s: Session) -> int:
    return sum(s.page.locator(css).count()
               for css in ("img[src=x]", "[onerror]", "[onload]", "svg[onload]"))


def _bubble(s: Session, run: str) -> list[float]:
    """Page coordinates of a run's bubble (scrolled into view)."""
    s.page.locator(".fkd-exp-comparison").first.scroll_into_view_if_needed()
    return s.page.evaluate("""(run) => {
        const r = Bokeh.documents[0].get_model_by_name('fkd-exp-bubbles');
        const fig = Bokeh.documents[0].get_model_by_name('fkd-exp-comparison');
        const view = Bokeh.index.find_one(fig);
        const data = r.data_source.data;
        const i = Array.from(data.run).indexOf(run);
        const box = view.el.getBoundingClientRect();
        return [box.x + view.frame.x_scale.compute(data.x[i]),
                box.y + view.frame.y_scale.compute(data.rmse[i])];
    }""", run)


def _pick_run(s: Session, run: str) -> None:
    """Add a run in the Runs box (Choices.js: type, then Enter)."""
    box = s.page.locator(".fkd-exp-runs input.choices__input--cloned")
    box.click()
    box.fill(run)
    s.page.keyboard.press("Enter")
    s.page.keyboard.press("Escape")


def test_curves_sensitivity_and_one_bubble_per_run(session, models):
    s = session
    ui.goto_tab(s.page, "Experiments")
    browser_harness.choose(s.page, "fkd-exp-sweep", SWEEP)
    runs = _wait_for(s, "one validation curve per trial of the sweep",
                     lambda: len(_data(s, "fkd-exp-val-linear", "run") or []) == 4
                     and _data(s, "fkd-exp-val-linear", "run"))
    s.check(all(r.startswith(f"{SWEEP}-") for r in runs), f"the sweep's runs: {runs}")
    s.check(len(_data(s, "fkd-exp-linear", "run")) == 4, "one training curve per run")
    s.check(len(_data(s, "fkd-exp-val-linear", "xs")[0]) == 2, "two epochs per curve")
    best = _data(s, "fkd-exp-best-linear", "x")
    s.check(len(best) == 4 and set(best) <= {1, 2}, f"each run's best epoch marked: {best}")

    labels = _wait_for(s, "a sensitivity line per width",
                       lambda: sorted(set(_data(s, "fkd-exp-sensitivity", "label") or [])))
    s.check(labels == ["width = 0.25", "width = 0.5"], f"lines by width: {labels}")
    s.check(len(_data(s, "fkd-exp-sensitivity", "xs")) == 2, "two lines")
    factors = s.page.evaluate("() => Bokeh.documents[0].get_model_by_name("
                              "'fkd-exp-sensitivity').x_range.factors")
    s.check(factors == ["0.0003", "0.001"], f"lr values in order on the x axis: {factors}")
    browser_harness.choose(s.page, "fkd-exp-by", "— one line —")
    _wait_for(s, "one sensitivity line over lr",
              lambda: _data(s, "fkd-exp-sensitivity", "label") == ["all runs"])

    s.page.locator(".fkd-exp-log input").check()
    _wait_for(s, "the log-scale curves shown", lambda: s.page.evaluate(
        "() => Bokeh.documents[0].get_model_by_name('fkd-exp-log').visible"))

    _pick_run(s, BAD)
    expect_text(s, f"line 3, loss: '{BAD_CELL}' is not a number")
    s.check(len(_data(s, "fkd-exp-val-log", "run")) == 4, "no curve for the broken history")

    bubbles = _wait_for(s, "one bubble per run (inference timed)",
                        lambda: len(_data(s, "fkd-exp-bubbles", "run") or []) == 6
                        and _data(s, "fkd-exp-bubbles", "run"), timeout_s=120)
    s.check(sorted(bubbles) == sorted([*runs, BAD, EVIL]), f"every run: {bubbles}")
    for run in bubbles:  # measured once, kept in the run folder
        s.check(len(list((models / run).glob("inference-*.json"))) == 1, f"{run}'s cost file")
    s.check(all(x > 0 for x in _data(s, "fkd-exp-bubbles", "x")), "costs are positive")
    s.shot("experiments")
    s.check(_injected(s) == 0, "no injected element")
    s.check_console()


def test_hostile_sweep_stays_text_and_a_bubble_opens_its_faces(session, models):
    s = session
    ui.goto_tab(s.page, "Experiments")
    browser_harness.choose(s.page, "fkd-exp-sweep", EVIL_SWEEP)
    _wait_for(s, "the hostile sweep's value on the x axis", lambda: s.page.evaluate(
        "() => Bokeh.documents[0].get_model_by_name('fkd-exp-sensitivity').x_range.factors"
    ) == [EVIL_VALUE])
    _wait_for(s, "every bubble", lambda: len(_data(s, "fkd-exp-bubbles", "run") or []) == 6,
              timeout_s=120)
    point = _bubble(s, EVIL)
    s.page.mouse.move(point[0] - 3, point[1])
    s.page.mouse.move(*point)
    values = s.page.locator(".bk-tooltip-row-value")
    values.filter(has_text=EVIL_ARCH).first.wait_for()
    s.check(any(EVIL_SWEEP in v for v in values.all_inner_texts()), "the settings as text")
    s.shot("hostile-hover")
    s.check(_injected(s) == 0, "no injected element")

    target = next(r for r in _data(s, "fkd-exp-bubbles", "run") if r.startswith(SWEEP))
    s.page.mouse.click(*_bubble(s, target))
    s.page.locator(".bk-tab.bk-active", has_text="Faces").wait_for()
    ui.wait_for_faces(s.page)
    _wait_for(s, "the grid on the clicked run",
              lambda: s.page.locator(".fkd-run select").input_value() == target)
    s.shot("faces-of-bubble")
    s.check(_injected(s) == 0, "no injected element")
    s.check_console()
