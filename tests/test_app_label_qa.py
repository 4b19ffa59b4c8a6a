"""Label QA in a real browser: the real server with a corrections log of its own, the demo data
with known mistakes planted (so the list has suspects), one tiny run (the Faces grid needs one
to draw faces), real mouse drags on the editor's canvas.

The log is emptied before each test, so each test starts from training.csv's labels; what the
page shows is checked against the log file's own lines.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import browser_harness
import numpy as np
import pytest
from browser_harness import Session, expect_text

from app import screenshots as ui
from app.label_qa_view import NO_RUN
from app.serve import Server
from fkd_core import corrections
from fkd_core.keypoints import FLIP_PERMUTATION, KEYPOINT_NAMES

RUN = "tiny"
browser = browser_harness.browser


@pytest.fixture(scope="module")
def planted(tmp_path_factory, demo_dir) -> Path:
    """A copy of the demo set whose training.csv has mistakes planted by
    :func:`fkd_core.label_qa.plant_errors` (swapped faces and pairs, moved points, duplicates)."""
    from fkd_core import dataset, label_qa
    from fkd_core.kaggle_write import write_training_csv

    out = tmp_path_factory.mktemp("planted")
    for f in demo_dir.iterdir():
        shutil.copy(f, out / f.name)
    train = dataset.load(demo_dir).train
    truth, images, _ = label_qa.plant_errors(train.keypoints, train.images, train.complete,
                                             seed=0, n=2)
    write_training_csv(out / "training.csv", images, truth)
    return out


@pytest.fixture(scope="module")
def data(planted):
    from fkd_core import dataset

    return dataset.load(planted)


@pytest.fixture(scope="module")
def models(tmp_path_factory, planted) -> Path:
    out = tmp_path_factory.mktemp("models")
    browser_harness.train_run(planted, out, RUN)
    return out


@pytest.fixture(scope="module")
def served(planted, models, tmp_path_factory):
    """(url, corrections log path, server log) of a server writing corrections to a log in a
    temporary folder."""
    folder = tmp_path_factory.mktemp("label-qa")
    log, path = folder / "server.log", folder / "corrections.csv"
    srv = Server(planted, models, log=log, corrections=path)
    try:
        srv.start()
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}; server log:\n{log.read_text()[-3000:]}")
    yield srv.url, path, log
    srv.stop()


@pytest.fixture
def log_path(served) -> Path:
    """The server's corrections log, emptied: each test starts from training.csv's labels."""
    _, path, _ = served
    path.unlink(missing_ok=True)
    return path


def _check_server_log(served) -> None:
    problems = [line for line in served[2].read_text(errors="replace").splitlines()
                if re.search(r"Traceback|Error|ERROR|Exception", line)]
    assert not problems, "server log:\n" + "\n".join(problems[:20])


def _row(data) -> tuple[int, int]:
    """(row id, position) of a complete face among the first 24 rows whose nose tip is at
    least 6 px from every other point (a drag there grabs the nose tip)."""
    train = data.train
    for pos in range(24):
        pts = train.keypoints[pos].reshape(15, 2)
        if not np.isfinite(pts).all():
            continue
        nose = pts[KEYPOINT_NAMES.index("nose_tip")]
        others = np.delete(pts, KEYPOINT_NAMES.index("nose_tip"), axis=0)
        if np.linalg.norm(others - nose, axis=1).min() > 6 and 20 < nose[0] < 76:
            return int(train.row_ids[pos]), pos
    pytest.fail("no suitable face in the demo data's first 24 rows")


def _open_row(s: Session, row: int) -> None:
    ui.goto_tab(s.page, "Label QA")
    box = s.page.locator(".fkd-lqa-row input")
    box.fill(str(row))
    box.press("Enter")
    s.page.locator(".fkd-lqa-open button").click()
    s.page.locator(".fkd-lqa-heading", has_text=f"training.csv row {row} ").wait_for()
    s.page.locator(".fkd-lqa-face").scroll_into_view_if_needed()


def _points(s: Session, source: str = "fkd-lqa-current") -> dict[str, tuple[float, float]]:
    """The editor's points as the browser holds them, by keypoint name."""
    data = s.page.evaluate("""(name) => {
        const src = Bokeh.documents[0].get_model_by_name(name);
        return [Array.from(src.data.name), Array.from(src.data.x), Array.from(src.data.y)];
    }""", source)
    return {n: (x, y) for n, x, y in zip(*data)}


def _screen(s: Session, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image point (x, y) in the editor's face."""
    return tuple(s.page.evaluate("""([x, y]) => {
        const fig = Bokeh.documents[0].get_model_by_name('fkd-lqa-face');
        const view = Bokeh.index.find_one(fig);
        const box = view.el.getBoundingClientRect();
        return [box.x + view.frame.x_scale.compute(x), box.y + view.frame.y_scale.compute(y)];
    }""", [float(x), float(y)]))


def _wait_count(s: Session, n: int) -> None:
    text = f"{n} correction{'s' if n != 1 else ''}"
    try:
        s.page.locator(".fkd-lqa-count", has_text=re.compile(rf"^{text}$")).wait_for()
    except browser_harness.sync_api.TimeoutError:
        pytest.fail(f"the page never said {text!r} ({s.where()})")


def _drag(s: Session, start: tuple[float, float], end: tuple[float, float]) -> None:
    mouse = s.page.mouse
    mouse.move(*start)
    mouse.down()
    mouse.move(*end, steps=8)
    mouse.up()


@pytest.mark.slow
def test_a_dragged_keypoint_is_saved_persists_and_marks_the_grid(browser, served, log_path,
                                                                 data, tmp_path):
    url, _, _ = served
    row, pos = _row(data)
    truth = data.train.keypoints[pos].reshape(15, 2)
    k = KEYPOINT_NAMES.index("nose_tip")
    other = Session(browser, url, tmp_path / "other")  # opened before the correction
    _open_row(other, row)
    s = Session(browser, url, tmp_path)
    _open_row(s, row)
    expect_text(s, str(log_path))  # the page says where the log is
    _wait_count(s, 0)
    before = _points(s)
    np.testing.assert_allclose(before["nose_tip"], truth[k], atol=1e-4)
    _drag(s, _screen(s, *truth[k]), _screen(s, truth[k][0] + 10, truth[k][1] + 6))
    _wait_count(s, 1)
    lines = corrections.read(log_path)
    assert [(c.row, c.keypoint) for c in lines] == [(row, "nose_tip")]
    np.testing.assert_allclose(lines[0].old, truth[k], atol=1e-4)
    np.testing.assert_allclose(lines[0].new, truth[k] + (10, 6), atol=0.6)
    assert lines[0].reason == "moved in Label QA"
    assert lines[0].data == data.train.fingerprint
    moved = lines[0].new
    # after a reload (a new session) the face shows the move, the ghost training.csv's label
    s.page.reload()
    s.page.locator(".bk-tab", has_text="Leaderboard").wait_for(timeout=ui.TIMEOUT_MS)
    _open_row(s, row)
    expect_text(s, "✎ corrected")
    np.testing.assert_allclose(_points(s)["nose_tip"], moved, atol=1e-3)
    np.testing.assert_allclose(_points(s, "fkd-lqa-ghost")["nose_tip"], truth[k], atol=1e-4)
    others = {n: p for n, p in _points(s).items() if n != "nose_tip"}
    np.testing.assert_allclose([others[n] for n in sorted(others)],
                               [before[n] for n in sorted(others)], atol=1e-4)
    # the Faces grid still shows training.csv's labels and marks the corrected face
    ui.goto_tab(s.page, "Faces")
    ui.wait_for_faces(s.page)
    browser_harness.choose(s.page, "fkd-subset", "all")
    browser_harness.choose(s.page, "fkd-sort", "row order")
    s.page.get_by_text(re.compile(rf"^row {row} · [\d.]+ px ✎$")).wait_for()
    marked = [c for c in ui.captions(s.page) if c.endswith("✎")]
    s.check(len(marked) == 1, f"only row {row} is marked, got {marked}")
    s.shot("grid-marked")
    # the session opened before the correction sees it after a reload
    other.page.reload()
    other.page.locator(".bk-tab", has_text="Leaderboard").wait_for(timeout=ui.TIMEOUT_MS)
    _open_row(other, row)
    _wait_count(other, 1)
    np.testing.assert_allclose(_points(other)["nose_tip"], moved, atol=1e-3)
    s.check_console()
    other.check_console()
    for x in (s, other):
        x.page.context.close()
    _check_server_log(served)


@pytest.mark.slow
def test_swap_left_right_then_undo(browser, served, log_path, data, tmp_path):
    url, _, _ = served
    row, pos = _row(data)
    truth = data.train.keypoints[pos]
    s = Session(browser, url, tmp_path)
    _open_row(s, row)
    note = s.page.locator(".fkd-lqa-note input")
    note.fill("mirrored <b>labeller</b>")
    note.press("Enter")
    s.page.locator(".fkd-lqa-swap-face button").click()
    _wait_count(s, 12)  # six pairs, both keypoints of each
    shown = _points(s)
    for i, j in enumerate(FLIP_PERMUTATION):
        np.testing.assert_allclose(shown[KEYPOINT_NAMES[i]], truth[2 * j:2 * j + 2], atol=1e-4,
                                   err_msg=KEYPOINT_NAMES[i])
    lines = corrections.read(log_path)
    assert {c.reason for c in lines} == {"swap left/right (whole face)"}
    assert {c.note for c in lines} == {"mirrored <b>labeller</b>"}
    assert all(c.row == row for c in lines)
    swapped = {KEYPOINT_NAMES[i] for i, j in enumerate(FLIP_PERMUTATION) if i != j}
    assert {c.keypoint for c in lines} == swapped
    for c in lines:
        j = int(FLIP_PERMUTATION[KEYPOINT_NAMES.index(c.keypoint)])
        np.testing.assert_allclose(c.new, truth[2 * j:2 * j + 2], atol=1e-4)
    expect_text(s, "mirrored <b>labeller</b>")  # the note, shown as text
    s.page.locator(".fkd-lqa-undo button").click()
    _wait_count(s, 24)
    np.testing.assert_allclose([_points(s)[n] for n in KEYPOINT_NAMES],
                               truth.reshape(15, 2), atol=1e-4)
    undo = corrections.read(log_path)[12:]
    assert {c.reason for c in undo} == {"undo"} and {c.keypoint for c in undo} == swapped
    fixed, count = corrections.apply(data.train.keypoints, data.train.row_ids, log_path,
                                     data.train.fingerprint)
    assert count == 24
    np.testing.assert_array_equal(fixed, data.train.keypoints)
    # one pair, then a keypoint marked missing
    s.page.locator(".fkd-lqa-pair select").select_option(
        label="mouth_left_corner ⇄ mouth_right_corner")
    s.page.locator(".fkd-lqa-swap-pair button").click()
    _wait_count(s, 26)
    # a click on a point selects it for "mark missing"; Backspace does not un-label it
    nose = _points(s)["nose_tip"]
    s.page.mouse.click(*_screen(s, *nose))
    browser_harness.sync_api.expect(s.page.locator(".fkd-lqa-keypoint select")).to_have_value(
        "nose_tip")
    s.page.keyboard.press("Backspace")  # Bokeh's PointDrawTool drops the selected point…
    expect_text(s, "Use 'mark missing' to un-label a keypoint.")  # …and the page puts it back
    s.check("nose_tip" in _points(s), "Backspace does not remove a point")
    _wait_count(s, 26)
    s.page.locator(".fkd-lqa-missing button").click()
    _wait_count(s, 27)
    s.check("nose_tip" not in _points(s), "a missing keypoint is not drawn")
    last = corrections.read(log_path)[-3:]
    assert [c.keypoint for c in last] == ["mouth_left_corner", "mouth_right_corner",
                                          "nose_tip"]
    assert all(math.isnan(v) for v in last[2].new)
    s.shot("label-qa")
    s.check_console()
    s.page.context.close()
    _check_server_log(served)


@pytest.mark.slow
def test_a_suspect_opens_its_face(browser, served, log_path, tmp_path):
    """Judged by a run, then by the labels alone: the list's first row opens its face with
    the suspect's reason (the planted swaps break the face's left/right order)."""
    url, _, _ = served
    s = Session(browser, url, tmp_path)
    ui.goto_tab(s.page, "Label QA")
    s.page.locator(".fkd-lqa-list-header", has_text="judged by the labels alone").wait_for(
        timeout=ui.TIMEOUT_MS)
    browser_harness.choose(s.page, "fkd-lqa-run", RUN)
    s.page.locator(".fkd-lqa-list-header", has_text=f"run {RUN}'s predictions").wait_for(
        timeout=ui.TIMEOUT_MS)
    browser_harness.choose(s.page, "fkd-lqa-run", NO_RUN)
    s.page.locator(".fkd-lqa-list-header", has_text="judged by the labels alone").wait_for()
    table = s.page.locator(".fkd-lqa-suspects")
    first = table.locator(".slick-row").first  # Bokeh's DataTable: #, row, keypoint, reason…
    first.wait_for(timeout=ui.TIMEOUT_MS)
    row = int(first.locator(".slick-cell.l1").inner_text())
    reason = first.locator(".slick-cell.l3").inner_text()
    first.locator(".slick-cell.l3").click()
    expect_text(s, f"training.csv row {row} (line {row + 2})")
    s.page.locator(".fkd-lqa-heading", has_text=reason).wait_for()
    if reason.startswith("residual"):  # the suggestion is drawn: where the run puts it
        s.page.wait_for_function("""() => Bokeh.documents[0].get_model_by_name(
            'fkd-lqa-face').renderers.some(r => r.glyph.marker && r.glyph.marker.value === 'x'
            && r.data_source.data.x.length === 1)""")
    s.check_console()
    s.page.context.close()


# -- without a browser -------------------------------------------------------------------


def test_the_default_log_is_the_clis(demo_dir, monkeypatch, tmp_path):
    """No --corrections: the data's log in the per-user folder, the path `fkd labels` uses."""
    from app.state import Settings, Store

    monkeypatch.setenv("FKD_HOME", str(tmp_path / "home"))
    store = Store(Settings.from_args(["--data", str(demo_dir)]))
    assert store.corrections_path() == corrections.default_path(store.train.fingerprint)
    assert str(store.corrections_path()).startswith(str(tmp_path / "home"))
    given = Settings.from_args(["--data", str(demo_dir), "--corrections", "c.csv"])
    assert given.corrections == str(Path("c.csv").absolute())


def test_serve_passes_the_log_on():
    """`fkd serve --corrections PATH` reaches the page as `panel serve app/ --args ...` does."""
    from app.serve import panel_args, serve_command

    args = panel_args("data", "models", corrections="/tmp/log.csv")
    assert args[args.index("--args"):][-2:] == ["--corrections", "/tmp/log.csv"]
    assert serve_command(corrections="x.csv")[-2:] == ["--corrections", "x.csv"]
    assert "--corrections" not in panel_args("data", "models")


def test_a_second_store_sees_corrections_and_a_broken_log_blocks_edits(demo_dir, tmp_path):
    from app.state import Settings, Store, Unavailable

    path = tmp_path / "log.csv"
    a = Store(Settings(str(demo_dir), "models", str(path)))
    b = Store(Settings(str(demo_dir), "models", str(path)))
    row = int(a.train.row_ids[3])
    assert b.labels().corrected_rows == frozenset()
    written = a.correct([(row, "nose_tip", (40.0, 50.0))], "moved", "n")
    assert [(c.row, c.keypoint, c.new) for c in written] == [(row, "nose_tip", (40.0, 50.0))]
    assert a.correct([(row, "nose_tip", (40.0, 50.0))], "moved") == []  # no change, no line
    assert b.labels().point(row, "nose_tip") == (40.0, 50.0)
    assert b.labels().corrected_rows == {row}
    with path.open("a") as f:
        f.write("garbage\n")
    assert "2 fields" in b.labels().error or "line 3" in b.labels().error
    with pytest.raises(Unavailable, match="log is broken"):
        b.correct([(row, "nose_tip", (41.0, 50.0))], "moved")
    assert len(path.read_text().splitlines()) == 3


def test_flip_audit_rows_open_in_label_qa(demo_dir, tmp_path):
    from app.dashboard import TABS, Dashboard
    from app.flip_audit_view import FlipAuditView
    from app.state import Settings, Store

    store = Store(Settings(str(demo_dir), str(tmp_path / "models"), str(tmp_path / "c.csv")))
    opened = []
    audit = FlipAuditView(store, on_label_qa=opened.append)
    audit._detail_row = 7
    audit._open_in_label_qa()
    assert opened == [7]
    board = Dashboard(store)
    row = int(store.train.row_ids[5])
    board._open_in_label_qa(row)
    assert board.tabs.active == TABS.index("Label QA")
    assert f"training.csv row {row} " in board.view("Label QA")._heading.object


def test_a_suggestion_is_accepted_once(planted, tmp_path):
    """Accepting a swap suggestion swaps the face once; the fixed face offers it no more (it
    would only swap back). A residual's suggestion moves the point where the run put it."""
    import pandas as pd

    from app.label_qa_view import LabelQAView
    from app.state import Settings, Store
    from fkd_core.audit import swap_labels

    path = tmp_path / "c.csv"
    store = Store(Settings(str(planted), str(tmp_path / "models"), str(path)))
    view = LabelQAView(store)
    view.activate()  # no server: the suspects (by the labels alone) are found at once
    assert view._table.value is not None and len(view._table.value)
    row, truth = int(store.train.row_ids[4]), store.train.keypoints[4]
    whole = pd.Series({"row": row, "keypoint": "", "score": 9.0, "suggested_x": math.nan,
                       "suggested_y": math.nan,
                       "reason": "swap: the whole face's left and right"})
    view.show_row(row, whole)
    assert not view._accept.disabled
    view.accept_suggestion()
    np.testing.assert_allclose(store.labels().keypoints[4], swap_labels(truth), atol=1e-4)
    lines = len(corrections.read(path))
    assert view._accept.disabled
    view.accept_suggestion()
    assert len(corrections.read(path)) == lines
    other = int(store.train.row_ids[5])
    residual = pd.Series({"row": other, "keypoint": "nose_tip", "score": 5.0,
                          "suggested_x": 40.0, "suggested_y": 50.0,
                          "reason": "residual: 9.0 px from the prediction"})
    view.show_row(other, residual)
    view.accept_suggestion()
    assert store.labels().point(other, "nose_tip") == (40.0, 50.0)
    assert corrections.read(path)[-1].reason == "accepted suggestion (residual)"
    assert store.labels().corrected_rows == {row, other}
