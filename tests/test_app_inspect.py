"""Augmentation QA, flip audit and activation maps: in-process against the training code, then
in a real browser (the same harness as test_app.py) on the demo data and a tiny resnet run
trained with non-default augmentation settings.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from pathlib import Path

import browser_harness
import numpy as np
import pytest
from browser_harness import Session, expect_text

from app import screenshots as ui
from app.state import Settings, Store
from fkd_core.keypoints import FLIP_X_SUM, KEYPOINT_NAMES

pytestmark = pytest.mark.slow

RUN = "tiny-resnet"
#: Non-default training settings, so the preview can be seen to take the run's values.
RUN_AUGMENT = {"rotate_deg": 40.0, "shift_px": 3.0}
browser = browser_harness.browser
server = browser_harness.server
session = browser_harness.session


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_dir) -> Path:
    """A tiny real resnet (several conv layers) and a run whose model will not load."""
    out = tmp_path_factory.mktemp("models")
    aug = [a for k, v in RUN_AUGMENT.items() for a in ("--aug", f"{k}={v:g}")]
    browser_harness.train_run(demo_dir, out, RUN, "--arch", "resnet", "--head", "heatmap",
                              "--width", "0.125", "--epochs", "1", "--steps-per-epoch", "2",
                              "--batch-size", "16", *aug)
    unloadable = out / "unloadable"
    shutil.copytree(out / RUN, unloadable)
    with zipfile.ZipFile(unloadable / "model.keras", "w") as zf:
        # passes the registry's structural check, fails in Keras: a model with no layers
        zf.writestr("config.json", json.dumps({"class_name": "Functional",
                                               "config": {"layers": "nonsense"}}))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n garbage")
    m = json.loads((unloadable / "metrics.json").read_text())
    m["val_rmse"] = 130.0  # last in every run list, so never the default
    (unloadable / "metrics.json").write_text(json.dumps(m))
    return out


@pytest.fixture(scope="module")
def store(demo_dir, models) -> Store:
    return Store(Settings(str(demo_dir), str(models)))


# -- in process: the preview is the training code --------------------------------------


def test_preview_is_the_training_augmentation_of_a_run(store):
    """The run's stored settings, applied by the function training maps over each batch
    (make_augment_fn), give exactly the preview's samples."""
    import tensorflow as tf

    from app.augment_view import AugmentView, cli_flags
    from fkd_core.augment import AugmentConfig, make_augment_fn
    from fkd_core.training import training_targets

    view = AugmentView(store)
    view.activate()
    view.from_run = RUN
    run = store.run(RUN)
    config = AugmentConfig.from_dict(run.config["train"]["augment"])
    assert config.rotate_deg == RUN_AUGMENT["rotate_deg"]
    assert view.config() == config
    assert "--aug rotate_deg=40 --aug shift_px=3" in cli_flags(config.to_dict())

    train = store.train
    pos = int(np.flatnonzero(train.row_ids == view.row)[0])
    _, targets = training_targets(train, _train_config(run))  # what the model is fitted to
    n = view.n_samples
    images = tf.cast(np.repeat(train.images[pos:pos + 1], n, axis=0), tf.float32)[..., None]
    expected_images, expected_kp = make_augment_fn(config, base_seed=view.seed)(
        images / 255.0, np.repeat(targets[pos:pos + 1], n, axis=0), 0)
    shown_images, shown_kp = view.samples
    np.testing.assert_array_equal(shown_kp, expected_kp.numpy())
    np.testing.assert_array_equal(
        shown_images, np.rint(expected_images.numpy()[..., 0] * 255).astype(np.uint8))


def _train_config(run):
    from fkd_core.training import TrainConfig

    return TrainConfig(**run.config["train"])


def test_invalid_setting_is_the_librarys_message(store):
    from app.augment_view import AugmentView

    view = AugmentView(store)
    view.activate()
    before = view.samples
    view.settings.scale = 1.0
    assert "AugmentConfig.scale must be < 1.0" in view._message.text
    assert view.samples is before  # the last good samples stay
    view.settings.scale = 0.1
    assert not view._message.pane.visible


def test_prepared_face_draws_the_samples_made_ahead(store):
    """A face's detail has the Augment tab make that face's samples in a worker; opening the
    face then draws exactly those samples, from the process-wide cache."""
    from app.augment_view import WORKERS, AugmentView, augmented

    view = AugmentView(store)
    view.activate()
    row = int(store.train.row_ids[-1])
    assert row != view.row
    key = view._key(row, view.config())
    assert augmented(key, None, None, None, compute=False) is None
    view.prepare(row)
    WORKERS.submit(lambda: None).result()  # the worker has had its turn
    for _ in range(200):
        made = augmented(key, None, None, None, compute=False)
        if made is not None:
            break
        time.sleep(0.05)
    assert made is not None
    view.show_row(row)
    assert view.samples[0] is made[0] and view.samples[1] is made[1]
    assert f"training.csv row {row}" in view._header.object


def test_augment_tab_is_whole_before_it_goes_into_a_page(store):
    """The dashboard runs the tab's build parts before it puts the view into the page (so the
    browser gets it in one message): after the parts, with no document anywhere, the view
    holds its controls, its samples drawn and its flip check drawn."""
    from bokeh.document import Document

    from app.augment_view import AugmentView, warm_up

    warm_up(store)
    view = AugmentView(store)
    steps = sum(1 for _ in view.build_parts())
    assert steps == 4  # five parts: four pauses between them
    assert list(view.build_parts()) == []  # built once
    view.activate()  # the page's activation then has nothing left to build
    body = view._body.objects
    assert len(body) == 4  # controls, samples and settings, flip heading, flip row
    assert len(view.samples[0]) == view.n_samples
    assert f"training.csv row {view.row}" in view._header.object
    assert "consistent" in view._flip_check.object or "changed side" in view._flip_check.object
    assert len(view._names.data["text"]) > 0
    doc = Document()
    root = view._layout.get_root(doc)
    doc.add_root(root)
    assert sum(type(m).__name__ == "Spinner" for m in doc.models) > 10  # the settings' boxes


def test_activation_tiles_per_layer_and_top_k(store):
    from app.activations_view import ActivationsView

    view = ActivationsView(store)
    view.activate()
    names = list(view.param.layer.names.values())
    assert len(names) > 5 and view.layer == names[0]
    for name in (names[0], names[-1]):
        view.layer = name
        channels = store.model(RUN).get_layer(name).output.shape[-1]
        assert view.tile_count == channels == len(view._tiles.data["channel"])
    view.top_k = 4
    assert view.tile_count == 4 and "4 tiles" in view._summary.object


# -- browser ---------------------------------------------------------------------------


def _table(s: Session, css: str) -> list[list[str]]:
    """A table's body rows as cell texts, read in one go (a redraw may replace it at any
    time, so reading row by row could mix two versions)."""
    return s.page.locator(f"table.{css} tbody").evaluate(
        "body => Array.from(body.rows, r => Array.from(r.cells, c => c.innerText.trim()))")


def _samples(s: Session) -> list[list[str]]:
    """The samples table: per sample, its left eye, right eye and nose tip 'x, y'."""
    if not s.page.locator("table.fkd-samples").count():
        return []
    return [r[1:] for r in _table(s, "fkd-samples")]


def _changed_samples(s: Session, old: list[list[str]]) -> list[list[str]]:
    for _ in range(100):
        now = _samples(s)
        if now and now != old:
            return now
        s.page.wait_for_timeout(100)
    pytest.fail(f"the samples did not change ({s.where()})")


def _set_number(s: Session, css_class: str, value) -> None:
    box = s.page.locator(f".{css_class} input").first
    box.fill(str(value))
    box.press("Enter")


def _xy(text: str) -> tuple[float, float]:
    x, y = text.split(",")
    return float(x), float(y)


def test_changing_a_transform_changes_the_samples(session):
    s = session
    ui.wait_for_augment(s.page)
    s.page.locator(".fkd-aug-all-off button").click()
    expect_text(s, "--augment none")
    plain = _changed_samples(s, [])
    s.check(len(plain) == 8, f"8 samples: {plain}")
    original = {name: xy for name, xy, _ in _table(s, "fkd-flip-positions")}
    s.check(all(r == plain[0] for r in plain), "all transforms off: 8 copies of the face")
    s.check(plain[0][0] == original["left_eye_center"], "… at the original positions")
    _set_number(s, "fkd-aug-rotate_prob", 1)
    _set_number(s, "fkd-aug-rotate_deg", 30)
    _changed_samples(s, plain)
    expect_text(s, "--augment none --aug rotate_prob=1 --aug rotate_deg=30")
    rotated = _samples(s)
    s.shot("augment-rotated")
    s.check(len({r[0] for r in rotated}) >= 6 and plain[0] not in rotated,
            f"eight rotations, by different angles: {rotated}")
    eyes = np.array([_xy(r[0]) + _xy(r[1]) for r in rotated if "–" not in r[0] + r[1]])
    before = np.array(_xy(plain[0][0]) + _xy(plain[0][1]))
    span = lambda e: np.hypot(e[..., 0] - e[..., 2], e[..., 1] - e[..., 3])  # noqa: E731
    np.testing.assert_allclose(span(eyes), span(before), atol=0.2,
                               err_msg=f"a rotation keeps the eyes' distance ({s.where()})")
    seed_box = s.page.locator(".fkd-aug-seed input").first
    seed = seed_box.input_value()
    s.page.locator(".fkd-aug-new-seed button").click()
    reseeded = _changed_samples(s, rotated)
    s.page.wait_for_function("([el, old]) => el.value != old", arg=[seed_box.element_handle(),
                                                                    seed])
    _set_number(s, "fkd-aug-seed", seed)
    again = _changed_samples(s, reseeded)
    s.check(again == rotated, "the same seed gives the same samples")
    s.check_console()


def test_flip_panel_names_left_and_right(session):
    s = session
    ui.wait_for_augment(s.page)
    table = {name: (_xy(original), _xy(flipped))
             for name, original, flipped in _table(s, "fkd-flip-positions")}
    s.page.locator(".fkd-flip-faces").scroll_into_view_if_needed()
    s.shot("flip-check")
    s.check(set(table) == set(KEYPOINT_NAMES), f"every keypoint named: {sorted(table)}")
    (ol, fl), (orr, fr) = table["left_eye_center"], table["right_eye_center"]
    s.check(fl[0] > fr[0], f"flipped: left eye {fl} at larger x than right eye {fr}")
    s.check(ol[0] > orr[0], f"original: left eye {ol} at larger x than right eye {orr}")
    s.check(abs(fl[0] - (FLIP_X_SUM - orr[0])) < 0.11 and abs(fl[1] - orr[1]) < 0.11,
            "the flipped left eye is the mirrored right eye")
    expect_text(s, "left and right labels are consistent after the flip")
    labels = s.page.evaluate("""() => {
        const fig = Bokeh.documents[0].get_model_by_name('fkd-flip-figure');
        const names = fig.center.find(a => a.type == 'LabelSet').source.data;
        return [Array.from(names.text), Array.from(names.x)];
    }""")
    s.check(len(labels[0]) == 30, f"15 names on each face: {labels[0]}")
    le, re_ = labels[0].index("L eye", 15), labels[0].index("R eye", 15)
    s.check(labels[1][le] > labels[1][re_], "the flipped face's 'L eye' label is right of 'R eye'")
    s.check_console()


def test_run_settings_show_in_the_preview(session):
    s = session
    ui.wait_for_augment(s.page)
    first = _samples(s)
    browser_harness.choose(s.page, "fkd-aug-from-run", RUN)
    _changed_samples(s, first)
    rotate = s.page.locator(".fkd-aug-rotate_deg input").first.input_value()
    s.check(float(rotate) == RUN_AUGMENT["rotate_deg"], f"rotate_deg of the run: {rotate}")
    expect_text(s, "--aug rotate_deg=40 --aug shift_px=3")
    s.check_console()


def _click_audit_face(s: Session, index: int) -> None:
    from app.faces import CAPTION, GAP
    from app.flip_audit_view import COLUMNS, SCALE

    box = s.page.locator(".fkd-audit-faces").bounding_box()
    col, row = index % COLUMNS, index // COLUMNS
    x = (col * (96 + GAP) + GAP / 2 + 48) * SCALE
    y = (row * (96 + GAP + CAPTION) + GAP / 2 + 48) * SCALE
    s.page.mouse.click(box["x"] + x, box["y"] + y)


def test_flip_audit_lists_faces_and_opens_one(session, demo_dir):
    from fkd_core import dataset

    s = session
    ui.run_flip_audit(s.page)
    complete = int(dataset.load(demo_dir).train.complete.sum())
    expect_text(s, f"on {complete} complete rows mirrored")
    rows = _table(s, "fkd-audit-rows")
    s.shot("flip-audit")
    s.check(len(rows) == min(12, complete), f"a page of audited faces: {rows}")
    s.check(all(int(line) == int(row) + 2 for _, row, line, *_ in rows),
            "csv line = row + 2 (header, 1-based)")
    errors = [float(r[3]) for r in rows]
    s.check(errors == sorted(errors, reverse=True), f"worst first: {errors}")
    expect_text(s, re.compile(rf"^line {rows[0][2]} · [\d.]+ px"))
    _click_audit_face(s, 0)
    expect_text(s, f"training.csv row {rows[0][1]} (line {rows[0][2]}), mirrored")
    s.page.locator(".fkd-audit-open button").click()
    s.page.locator(".bk-tab.bk-active", has_text="Augment").wait_for()
    expect_text(s, f"training.csv row {rows[0][1]} ·")
    s.check("Traceback" not in s.page.content(), "no traceback in the page")
    s.check_console()


def _layer_summary(s: Session, old: str = "") -> tuple[str, int, int]:
    """(summary text, channels, tiles) once the summary differs from ``old``."""
    box = s.page.locator(".fkd-act-summary p")
    for _ in range(150):
        text = box.inner_text()
        m = re.search(r"output \d+×\d+×(\d+) · (\d+) tiles", text)
        if m and text != old:
            return text, int(m.group(1)), int(m.group(2))
        s.page.wait_for_timeout(100)
    pytest.fail(f"no new activation maps ({s.where()})")


def _tiles_drawn(s: Session) -> int:
    return s.page.evaluate("""() => Bokeh.documents[0].get_model_by_name('fkd-act-tile-rects')
        .data_source.data.channel.length""")


def test_activation_maps_for_two_layers(session):
    s = session
    ui.wait_for_activations(s.page)
    text, channels, tiles = _layer_summary(s)
    s.check(tiles == channels == _tiles_drawn(s), f"one tile per channel: {text}")
    s.check(s.page.locator(".fkd-act-tiles canvas").first.is_visible(), "maps drawn")
    s.shot("activations-first")
    options = s.page.locator(".fkd-act-layer option").all_text_contents()
    s.page.locator(".fkd-act-layer select").select_option(label=options[-1])
    text2, channels2, tiles2 = _layer_summary(s, text)
    s.check(options[-1].split(" — ")[0] in text2, f"the chosen layer: {text2}")
    s.check(tiles2 == channels2 == _tiles_drawn(s), f"one tile per channel: {text2}")
    s.check(channels2 != channels, "the two layers differ in channels")
    browser_harness.choose(s.page, "fkd-act-top-k", "4")
    text3, _, tiles3 = _layer_summary(s, text2)
    s.check(tiles3 == 4 == _tiles_drawn(s), f"top 4 channels: {text3}")
    s.shot("activations-top4")
    s.check_console()


def test_unloadable_run_is_a_message(session):
    s = session
    ui.wait_for_activations(s.page)
    browser_harness.choose(s.page, "fkd-act-run", "unloadable")
    expect_text(s, "run unloadable could not be loaded", timeout=60_000)
    ui.goto_tab(s.page, "Flip audit")
    browser_harness.choose(s.page, "fkd-audit-run", "unloadable")
    s.page.locator(".fkd-audit-start button").click()
    s.page.locator(".fkd-audit-message", has_text="could not be loaded").wait_for()
    s.shot("unloadable")
    s.check("Traceback" not in s.page.content(), "no traceback in the page")
    s.check_console()
