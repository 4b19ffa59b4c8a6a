"""The dashboard's store and views without a browser: settings, cached predictions, sorting."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.state import Settings, Store, Unavailable, train_command
from fkd_core import metrics, runs
from fkd_core.keypoints import KEYPOINT_NAMES
from fkd_core.targets import normalise_keypoints


class ConstantModel:
    """Stands in for a Keras model: predicts the same keypoints for every face."""

    def __init__(self, keypoints):
        self.keypoints = np.asarray(keypoints, np.float32)
        self.calls = 0

    def predict(self, x, batch_size=None, verbose=0):
        self.calls += 1
        return np.repeat(normalise_keypoints(self.keypoints)[None], len(x), axis=0)


def test_settings_from_args_and_environment():
    assert Settings.from_args([], {}) == Settings(None, "models")
    assert Settings.from_args([], {"FKD_DATA": "/d", "FKD_MODELS": "/m"}) == Settings("/d", "/m")
    args = ["--data", "x", "--models", "y"]
    assert Settings.from_args(args, {"FKD_DATA": "/d"}) == Settings("x", "y")


def test_train_command_names_data_and_models():
    assert train_command(Settings(None, "models"), "/data/demo") == (
        "fkd train --data /data/demo --epochs 5")
    assert train_command(Settings("a b", "/tmp/m"), "a b") == (
        "fkd train --data 'a b' --epochs 5 --models /tmp/m")


def test_missing_data_is_a_message_not_an_exception(tmp_path):
    store = Store(Settings(str(tmp_path / "nowhere"), str(tmp_path / "models")))
    assert store.data is None
    assert "nowhere" in store.data_error
    assert store.runs() == []
    assert "--data" in store.train_command()


def _fake_run(models: Path, run_id: str, data, val_rows: np.ndarray, pred) -> runs.Run:
    """A run folder with real metadata files; its model is never loaded in these tests."""
    folder = models / run_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "kind": "single", "train": {"arch": "simple", "head": "regression"},
        "data": {"fingerprint": data.fingerprint},
    }))
    truth = data.keypoints[val_rows]
    p = np.asarray(pred, np.float32)[val_rows]
    per_keypoint = dict(zip(KEYPOINT_NAMES, metrics.per_keypoint_rmse(p, truth).tolist()))
    (folder / "metrics.json").write_text(json.dumps({"val_rmse": metrics.rmse(p, truth),
                                                     "per_keypoint": per_keypoint}))
    np.savez(folder / "val_predictions.npz", row_ids=data.row_ids[val_rows], pred=p,
             pred_tta=p, truth=truth)
    with zipfile.ZipFile(folder / "model.keras", "w") as zf:  # passes the registry's check
        zf.writestr("config.json", json.dumps({"class_name": "Functional", "config": {}}))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n never loaded")
    return runs.Run(folder, json.loads((folder / "config.json").read_text()),
                    json.loads((folder / "metrics.json").read_text()))


def test_cached_predictions_written_once_and_reused(demo_dir, tmp_path):
    from fkd_core import dataset

    data = dataset.load(demo_dir, parts=("training",)).train
    mean = np.nanmean(data.keypoints, axis=0)
    run = _fake_run(tmp_path, "r1", data, np.arange(10), np.tile(mean, (len(data), 1)))
    model = ConstantModel(mean)
    parts = {"train": data.images}
    first = runs.cached_predictions(run, parts, model=model)
    assert first["train"].shape == (len(data), 30)
    np.testing.assert_allclose(first["train"][5], mean, atol=1e-3)
    files = list(run.path.glob("predictions-*.npz"))
    assert [f.name for f in files] == [f"predictions-{runs.images_key(parts)}.npz"]
    assert not list(run.path.glob(".predictions-*"))  # no temporary file left behind
    again = runs.cached_predictions(run, parts, model=model)
    assert model.calls == 1  # the second call read the file
    np.testing.assert_array_equal(again["train"], first["train"])
    other = {"train": data.images[:5]}
    runs.cached_predictions(run, other, model=model)  # other images: another file
    assert model.calls == 2 and len(list(run.path.glob("predictions-*.npz"))) == 2


def test_store_sorts_subsets_by_error(demo_dir, tmp_path, monkeypatch):
    from fkd_core import dataset

    train = dataset.load(demo_dir, parts=("training",)).train
    val = np.arange(0, len(train), 7)
    rng = np.random.default_rng(0)
    pred = train.keypoints + rng.normal(0, 3, train.keypoints.shape).astype(np.float32)
    pred = np.where(np.isnan(pred), 48.0, pred)
    _fake_run(tmp_path / "models", "r1", train, val, pred)
    store = Store(Settings(str(demo_dir), str(tmp_path / "models")))
    monkeypatch.setattr(runs, "cached_predictions",
                        lambda run, parts, model=None, key=None: {"train": pred, "test": pred[:0]})
    assert [r.id for r in store.ok_runs()] == ["r1"]
    assert store.subsets("r1") == ["validation", "training", "all", "test"]
    rows, err, kp_err = store.errors("r1", "validation")
    np.testing.assert_array_equal(rows, val)
    np.testing.assert_allclose(err, metrics.per_image_rmse(pred[val], train.keypoints[val]))
    assert kp_err.shape == (len(val), 15)
    train_rows, _, _ = store.errors("r1", "training")
    assert len(train_rows) + len(val) == len(train)
    with pytest.raises(Unavailable, match="not"):
        store.run("../../etc")  # only ids from the list are accepted


def test_grid_pages_worst_first_without_a_browser(demo_dir, tmp_path, monkeypatch):
    """The grid's page update only replaces source data, and worst faces come first."""
    from fkd_core import dataset

    train = dataset.load(demo_dir, parts=("training",)).train
    val = np.arange(0, len(train), 3)
    pred = np.where(np.isnan(train.keypoints), 48.0, train.keypoints + 1.0)
    pred[val[5]] += 9.0  # one clearly worst validation face
    _fake_run(tmp_path / "models", "r1", train, val, pred)
    monkeypatch.setattr(runs, "cached_predictions",
                        lambda run, parts, model=None, key=None: {"train": pred, "test": pred[:0]})
    from app.grid import FaceGrid

    grid = FaceGrid(Store(Settings(str(demo_dir), str(tmp_path / "models"))))
    grid.page_size = 12
    figure, sources = grid.canvas.figure, grid.canvas.images
    labels = grid.canvas.labels.data["text"]
    assert len(labels) == 12
    assert labels[0].startswith(f"row {train.row_ids[val[5]]} · ")
    values = [float(t.split(" · ")[1].split()[0]) for t in labels]
    assert values == sorted(values, reverse=True)
    grid.page = 2
    assert grid.canvas.figure is figure and grid.canvas.images is sources
    assert grid.canvas.labels.data["text"] != labels
    grid.open_detail(0)
    assert grid.detail._table.object.count("<tr>") == 16  # header + 15 keypoints


def test_a_page_of_faces_is_one_image_with_clear_room_between_them():
    """FaceCanvas sends a page as one image: each face at its slot (its white drawn one grey
    level darker), the room between faces the value the colour mapper draws transparent."""
    from app.faces import CLEAR, IMAGE_SIZE, FaceCanvas, grey_mapper

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    images[3, 0, 0] = 255
    canvas = FaceCanvas()
    canvas.resize(7, 3)
    canvas.show(images, None, np.full((7, 30), 40.0), [f"face {i}" for i in range(7)])
    data = canvas.images.data
    assert len(data["image"]) == 1
    sheet = data["image"][0]
    ox, oy = canvas.offsets(7)
    assert sheet.shape == (oy.max() + IMAGE_SIZE, ox.max() + IMAGE_SIZE)
    assert (data["dw"][0], data["dh"][0]) == (sheet.shape[1], sheet.shape[0])
    for image, x, y in zip(images, ox, oy):
        np.testing.assert_array_equal(sheet[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE],
                                      np.minimum(image, CLEAR - 1))
    assert sheet[oy[3], ox[3]] == CLEAR - 1
    assert (sheet[:, IMAGE_SIZE:ox[1]] == CLEAR).all()  # between the first two columns
    assert (sheet[oy[-1]:, ox[-1] + IMAGE_SIZE:] == CLEAR).all()  # slots 8 and 9: empty
    mapper = grey_mapper()
    assert mapper.high == CLEAR - 1 and mapper.high_color == "rgba(0, 0, 0, 0)"  # clear
    canvas.clear()
    assert canvas.images.data["image"] == []


def test_panel_command_binds_localhost_and_passes_paths():
    from app.serve import APP_DIR, panel_command

    cmd = panel_command("data dir", "runs", port=5123)
    assert cmd[1:5] == ["-m", "panel", "serve", str(APP_DIR)]
    assert cmd[cmd.index("--address") + 1] == "127.0.0.1"
    assert "--allow-websocket-origin" not in cmd
    assert cmd[cmd.index("--args"):] == ["--args", "--models", "runs", "--data", "data dir"]
    assert "--data" not in panel_command(None)  # the demo set
    remote = panel_command(None, address="0.0.0.0", port=80, allow_origin=["example.org:80"])
    assert remote[remote.index("--allow-websocket-origin") + 1] == "example.org:80"


def test_serve_script_runs_without_the_package_on_the_path(tmp_path):
    """`fkd serve` runs app/serve.py as a script, so it must not need `import app`."""
    import subprocess

    from app.serve import APP_DIR

    out = subprocess.run([sys.executable, str(APP_DIR / "serve.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert "--models" in out.stdout and "--address" in out.stdout


def test_fkd_serve_answers_on_localhost_only(demo_dir, tmp_path):
    """`fkd serve` runs the same page as `panel serve app/`, bound to 127.0.0.1."""
    import subprocess
    import sys
    import time
    import urllib.request

    from app.serve import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fkd_core.cli", "serve", "--data", str(demo_dir), "--models",
         str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/app", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "fkd serve never answered"
                time.sleep(0.5)
        assert "<html" in body.lower()
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        bound = [line for line in listening.splitlines() if f":{port} " in line]
        assert bound and all("127.0.0.1:" in line for line in bound), listening
    finally:
        proc.terminate()
        proc.wait(timeout=30)
