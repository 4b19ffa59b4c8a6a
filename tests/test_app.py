"""The dashboard in a real browser: the real server, the demo data, a tiny trained run.

Headless Debian Chromium driven by Playwright (no browser download). Every test saves a
screenshot of what it saw under its tmp dir and names it in the failure message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import browser_harness
import numpy as np
import pytest
from browser_harness import Session, expect_text

from app import screenshots as ui
from app.serve import Server
from fkd_core import metrics
from fkd_core.keypoints import KEYPOINT_NAMES

pytestmark = pytest.mark.slow

RUN = "tiny"
OTHER = "tiny-seed1"  # the same recipe, another seed: other weights, other predictions
browser = browser_harness.browser
server = browser_harness.server
session = browser_harness.session


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_dir) -> Path:
    """Two tiny real runs (to compare), a corrupt folder and an unloadable model."""
    out = tmp_path_factory.mktemp("models")
    for run_id, seed in ((RUN, 0), (OTHER, 1)):
        browser_harness.train_run(demo_dir, out, run_id, "--arch", "simple", "--head",
                                  "regression", "--epochs", "1", "--steps-per-epoch", "3",
                                  "--seed", str(seed))
    _set_val_rmse(out / OTHER, json.loads((out / RUN / "metrics.json").read_text())["val_rmse"]
                  + 0.5)  # second on the leaderboard: RUN stays every view's default
    broken = out / "broken-model"
    shutil.copytree(out / RUN, broken)
    (broken / "model.keras").write_bytes(b"this is not a zip file")
    unloadable = out / "unloadable-weights"
    shutil.copytree(out / RUN, unloadable)
    with zipfile.ZipFile(unloadable / "model.keras", "w") as zf:
        # passes the registry's structural check, fails in Keras: a model with no layers
        zf.writestr("config.json", json.dumps({"class_name": "Functional",
                                               "config": {"layers": "nonsense"}}))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n garbage")
    _set_val_rmse(unloadable, 130.0)  # last on the leaderboard, so never the default run
    return out


def _set_val_rmse(run: Path, value: float) -> None:
    m = json.loads((run / "metrics.json").read_text())
    m["val_rmse"] = value
    (run / "metrics.json").write_text(json.dumps(m))


def _caption_values(captions: list[str]) -> tuple[list[int], list[float]]:
    rows, values = [], []
    for c in captions:
        m = re.match(r"row (\d+) · ([\d.]+) px", c)
        assert m, c
        rows.append(int(m.group(1)))
        values.append(float(m.group(2)))
    return rows, values


def _val_predictions(models: Path) -> dict:
    with np.load(models / RUN / "val_predictions.npz") as z:
        return {k: z[k] for k in z.files}


def _wait_for_new_captions(s: Session, old: list[str]) -> list[str]:
    for _ in range(100):
        now = ui.captions(s.page)
        if now and now != old:
            return now
        s.page.wait_for_timeout(100)
    pytest.fail(f"the faces did not change ({s.where()})")


# -- leaderboard ------------------------------------------------------------------------


def test_leaderboard_lists_runs_heatmap_and_broken_folders(session, models):
    s = session
    table = s.page.locator(".fkd-leaderboard")
    table.get_by_text(RUN, exact=True).wait_for()
    s.check(table.get_by_text(OTHER, exact=True).is_visible(), "second run listed")
    expect_text(s, "broken-model")
    expect_text(s, "model.keras is not a valid Keras file")
    cells = s.page.locator("table.fkd-heat td[data-i]")
    cells.first.wait_for()
    s.check(cells.count() == 3 * len(KEYPOINT_NAMES),
            f"heatmap has 3 runs × 15 cells, got {cells.count()}")
    for run in (RUN, OTHER):  # each cell: that run's RMSE for that keypoint, in its hover
        per_kp = json.loads((models / run / "metrics.json").read_text())["per_keypoint"]
        for k in ("nose_tip", "left_eye_center"):
            cell = browser_harness.heatmap_cell(s.page, run, k)
            s.check(cell.inner_text() == f"{per_kp[k]:.1f}", f"{run} {k}: {cell.inner_text()}")
            s.check(cell.get_attribute("title") == f"{run} · {k} · {per_kp[k]:.3f} px",
                    f"{run} {k} hover: {cell.get_attribute('title')}")
    s.shot("leaderboard")
    s.check_console()


def test_heatmap_cell_opens_grid_sorted_by_that_keypoint(session, models):
    s = session
    s.page.locator(".fkd-leaderboard").get_by_text(RUN, exact=True).wait_for()
    browser_harness.heatmap_cell(s.page, RUN, "nose_tip").click()
    s.page.locator(".bk-tab.bk-active", has_text="Faces").wait_for()
    captions = ui.wait_for_faces(s.page)
    s.shot("grid-nose-tip")
    s.check(s.page.locator(".fkd-keypoint select").input_value() == "nose_tip",
            "keypoint chosen")
    expect_text(s, "worst first by nose_tip error")
    val = _val_predictions(models)
    k = KEYPOINT_NAMES.index("nose_tip")
    dist = metrics.per_keypoint_distance(val["pred"], val["truth"])[:, k]
    expected = np.sort(dist[np.isfinite(dist)])[::-1]
    _, values = _caption_values(captions)
    np.testing.assert_allclose(values, expected[:len(values)], atol=0.011,
                               err_msg=s.where())
    s.check_console()


# -- face grid --------------------------------------------------------------------------


def test_grid_shows_worst_faces_first(session, models):
    s = session
    ui.goto_tab(s.page, "Faces")
    captions = ui.wait_for_faces(s.page)
    s.shot("grid-worst-first")
    val = _val_predictions(models)
    err = metrics.per_image_rmse(val["pred"], val["truth"])
    order = np.argsort(-err, kind="stable")
    rows, values = _caption_values(captions)
    s.check(len(rows) == min(24, len(err)), f"a full page of validation faces: {captions}")
    np.testing.assert_allclose(values, err[order][:len(values)], atol=0.011, err_msg=s.where())
    s.check(set(rows) == set(val["row_ids"][order][:len(rows)].tolist()),
            "the worst faces of the run's validation predictions")
    s.check_console()


def test_grid_pages_through_all_faces(session, demo_dir):
    s = session
    ui.goto_tab(s.page, "Faces")
    ui.wait_for_faces(s.page)
    first = ui.captions(s.page)
    browser_harness.choose(s.page, "fkd-subset", "all")
    page1 = _wait_for_new_captions(s, first)
    s.check(len(page1) == 24, f"a full page of 24 faces, got {len(page1)}")
    expect_text(s, "page 1 of 5")
    s.page.locator(".fkd-next button").click()
    page2 = _wait_for_new_captions(s, page1)
    s.shot("grid-page-2")
    s.check(len(page2) == 24, f"page 2 has 24 faces, got {len(page2)}")
    s.check(not set(_caption_values(page1)[0]) & set(_caption_values(page2)[0]),
            "page 2 shows other faces")
    expect_text(s, "page 2 of 5")
    browser_harness.choose(s.page, "fkd-sort", "row order")
    rows, _ = _caption_values(_wait_for_new_captions(s, page2))
    s.check(rows == list(range(24)), f"row order starts at row 0: {rows}")
    s.check_console()


def test_clicking_a_face_opens_its_detail(session):
    s = session
    ui.goto_tab(s.page, "Faces")
    captions = ui.wait_for_faces(s.page)
    row = _caption_values(captions)[0][0]
    ui.click_face(s.page, 0)
    table = s.page.locator("table.fkd-keypoints")
    table.wait_for()
    s.shot("detail")
    s.check(table.locator("tbody tr").count() == 15, "one table row per keypoint")
    expect_text(s, f"training.csv row {row} (line {row + 2})")
    s.check(table.get_by_text("nose_tip").is_visible(), "keypoint names listed")
    faces = s.page.locator(".fkd-grid-faces").first.bounding_box()
    panel = s.page.locator(".fkd-detail .fkd-detail-face").first.bounding_box()
    s.check(panel["x"] >= faces["x"] + faces["width"], "the detail is beside the faces")
    s.check(s.page.locator(".fkd-grid-faces").first.is_visible(), "the faces stay visible")
    s.check_console()


def test_detail_opens_the_face_in_augmentation_qa(session):
    s = session
    ui.goto_tab(s.page, "Faces")
    captions = ui.wait_for_faces(s.page)
    row = _caption_values(captions)[0][2]
    ui.click_face(s.page, 2)
    s.page.locator(".fkd-open-augment button").click()
    ui.wait_for_augment(s.page)
    expect_text(s, f"training.csv row {row} ·")
    s.shot("augment-from-detail")
    s.check_console()


def _whole_data_predictions(models: Path, run_id: str) -> np.ndarray:
    """The training-set predictions the server computed and cached in the run folder."""
    (cached,) = (models / run_id).glob("predictions-*.npz")
    with np.load(cached) as z:
        return z["train"]


def test_compare_runs_and_test_faces(session, models, demo_dir):
    from fkd_core import dataset

    s = session
    ui.goto_tab(s.page, "Faces")
    single = ui.wait_for_faces(s.page)
    browser_harness.choose(s.page, "fkd-compare", OTHER)
    expect_text(s, f"each pair: left {RUN}, right {OTHER}")
    paired = _wait_for_new_captions(s, single)
    s.shot("compare")
    s.check(len(paired) == 2 * len(single), "each face shown for both runs")
    rows, values = _caption_values(paired)
    s.check(rows[0::2] == rows[1::2], f"each pair is one face: {rows}")
    s.check(paired[0::2] == single, "the left faces are the first run's, as before")
    train = dataset.load(demo_dir, parts=("training",)).train
    pos = [int(np.flatnonzero(train.row_ids == r)[0]) for r in rows[1::2]]
    other = metrics.per_image_rmse(_whole_data_predictions(models, OTHER)[pos],
                                   train.keypoints[pos])
    np.testing.assert_allclose(values[1::2], other, atol=0.011,
                               err_msg=f"the right faces show {OTHER}'s errors ({s.where()})")
    s.check(values[0::2] != values[1::2], "two different runs, two different errors")
    browser_harness.choose(s.page, "fkd-compare", "(none)")
    browser_harness.choose(s.page, "fkd-subset", "test")
    expect_text(s, re.compile(r"^test image \d+$"))
    test_captions = ui.captions(s.page)
    s.check(len(test_captions) == 24, f"a page of test faces: {test_captions}")
    s.shot("test-faces")
    s.check_console()


def test_unloadable_model_shows_a_message_and_the_rest_works(session):
    s = session
    ui.goto_tab(s.page, "Faces")
    ui.wait_for_faces(s.page)
    browser_harness.choose(s.page, "fkd-run", "unloadable-weights")
    expect_text(s, "run unloadable-weights could not be loaded", timeout=60_000)
    s.shot("unloadable")
    s.check(not ui.captions(s.page), "no faces for a run that will not load")
    s.check("Traceback" not in s.page.content(), "no traceback in the page")
    browser_harness.choose(s.page, "fkd-run", RUN)
    ui.wait_for_faces(s.page)
    s.check_console()


# -- data overview ----------------------------------------------------------------------


def test_data_view(session):
    s = session
    ui.goto_tab(s.page, "Data")
    expect_text(s, "120 training rows")
    expect_text(s, "Labelled rows per keypoint")
    s.check(s.page.locator(".fkd-counts canvas").first.is_visible(), "counts chart drawn")
    s.check(s.page.locator(".fkd-positions canvas").first.is_visible(), "positions drawn")
    expect_text(s, re.compile(r"^nose_tip — complete rows: \d+ labels"))
    browser_harness.choose(s.page, "fkd-data-keypoint", "left_eye_center")
    expect_text(s, re.compile(r"^left_eye_center — complete rows"))
    s.shot("data")
    s.check_console()


# -- servers with problems --------------------------------------------------------------


def test_missing_data_path_shows_a_message_and_the_leaderboard(browser, models, tmp_path):
    missing = tmp_path / "no-such-data"
    with Server(missing, models, log=tmp_path / "server.log") as url:
        s = Session(browser, url, tmp_path)
        expect_text(s, "Could not load the data")
        expect_text(s, str(missing))
        s.page.locator(".fkd-leaderboard").get_by_text(RUN, exact=True).wait_for()
        s.shot("missing-data")
        ui.goto_tab(s.page, "Faces")
        expect_text(s, "No data to show")
        ui.goto_tab(s.page, "Data")
        expect_text(s, "No training data to show")
        s.check("Traceback" not in s.page.content(), "no traceback in the page")
        s.check_console()


def test_no_runs_says_how_to_make_one(browser, demo_dir, tmp_path):
    empty = tmp_path / "no-runs"
    with Server(demo_dir, empty, log=tmp_path / "server.log") as url:
        s = Session(browser, url, tmp_path)
        expect_text(s, "No trained runs yet")
        expect_text(s, f"fkd train --data {demo_dir} --epochs 5 --models {empty}")
        s.shot("no-runs")
        ui.goto_tab(s.page, "Faces")
        expect_text(s, "No trained runs yet — the leaderboard tab says how to make one")
        s.check_console()


# -- real faces -------------------------------------------------------------------------


@pytest.mark.faces15
def test_real_faces15_data(browser, faces15, tmp_path):
    """The dashboard on the real faces15 set with a tiny run trained on it."""
    models = tmp_path / "models"
    subprocess.run(
        [sys.executable, "-m", "fkd_core.cli", "train", "--data", str(faces15), "--arch",
         "simple", "--head", "regression", "--epochs", "1", "--steps-per-epoch", "3",
         "--models", str(models), "--run-id", "faces15-tiny"],
        check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True,
    )
    with Server(faces15, models, log=tmp_path / "server.log") as url:
        s = Session(browser, url, tmp_path)
        s.page.locator(".fkd-leaderboard").get_by_text("faces15-tiny", exact=True).wait_for()
        ui.goto_tab(s.page, "Faces")
        ui.wait_for_faces(s.page)
        s.check(len(ui.captions(s.page)) == 24, "a full page of faces15 validation faces")
        s.shot("faces15-grid")
        ui.goto_tab(s.page, "Data")
        expect_text(s, "3372 training rows")
        s.shot("faces15-data")
        s.check_console()
