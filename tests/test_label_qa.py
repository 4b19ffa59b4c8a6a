"""Label QA: the suspect finder on planted errors, the corrections log, and their CLI."""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from fkd_core import corrections as log
from fkd_core import dataset, label_qa
from fkd_core.audit import swap_labels
from fkd_core.cli import app
from fkd_core.keypoints import KEYPOINT_NAMES

runner = CliRunner()


def test_planted_errors_rank_first_with_good_predictions(data):
    train = data.train
    clean = train.keypoints
    truth, images, planted = label_qa.plant_errors(clean, train.images, train.complete)
    pred = clean + np.random.default_rng(1).normal(0, 1.0, clean.shape).astype(np.float32)
    for b in (pos for pos, k in planted[-4:]):  # a duplicate's prediction is its twin's
        pred[b] = pred[np.flatnonzero((train.images == images[b]).all(axis=(1, 2)))[0]]
    suspects = label_qa.find_suspects(images, truth, train.row_ids, pred)
    assert list(suspects.columns) == list(label_qa.COLUMNS)
    assert label_qa.recall(suspects, planted, train.row_ids) == 1.0
    assert suspects.score.is_monotonic_decreasing
    assert not suspects.duplicated(["row", "keypoint"]).any()
    swapped = suspects[suspects.reason.str.contains("whole face")]
    assert set(swapped.row) == {train.row_ids[p] for p, k in planted[:4]}
    moved = suspects[suspects.reason.str.startswith("residual")].iloc[0]
    k = KEYPOINT_NAMES.index(moved.keypoint)
    row = int(np.flatnonzero(train.row_ids == moved.row)[0])
    assert np.hypot(moved.suggested_x - clean[row, 2 * k],
                    moved.suggested_y - clean[row, 2 * k + 1]) < 5.0


def test_shape_and_order_find_swaps_without_any_model(data):
    train = data.train
    truth = train.keypoints.copy()
    r = int(np.flatnonzero(train.complete)[3])
    truth[r] = swap_labels(truth[r])
    suspects = label_qa.find_suspects(train.images, truth, train.row_ids)
    first = suspects[suspects.row == train.row_ids[r]]
    assert len(first) and first.reason.str.startswith(("order", "shape")).all()
    assert suspects.row.iloc[0] == train.row_ids[r]


def test_procrustes_alignment_undoes_a_similarity_transform():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(15, 2)) * 10
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = scale * ref @ rot.T + shift
    aligned = label_qa.procrustes_align(moved[None], ref)[0]
    np.testing.assert_allclose(aligned, ref - ref.mean(axis=0), atol=1e-9)


def test_audit_cli_with_out_of_fold_models(data, tmp_path):
    """The real command: K tiny fold models, a suspects.csv in the documented columns, and a
    whole-face swap planted in a copy of the data among the first rows."""
    from fkd_core import kaggle

    train = data.train
    truth = train.keypoints.copy()
    swapped = int(np.flatnonzero(train.complete)[0])
    truth[swapped] = swap_labels(truth[swapped])
    kaggle.write_training_csv(tmp_path / "data" / "training.csv", train.images, truth)
    out = tmp_path / "suspects.csv"
    result = runner.invoke(app, ["labels", "audit", "--data", str(tmp_path / "data"),
                                 "--folds", "2",
                                 "--arch", "simple", "--epochs", "1", "--steps-per-epoch", "2",
                                 "-o", str(out), "--limit", "25"])
    assert result.exit_code == 0, result.output
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert rows and len(rows) <= 25
    assert list(rows[0]) == list(label_qa.COLUMNS)
    assert all(int(r["line"]) == int(r["row"]) + 2 for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert int(train.row_ids[swapped]) in [int(r["row"]) for r in rows[:3]]
    assert "out-of-fold" in result.output


def test_audit_cli_needs_exactly_one_judge(demo_dir, tmp_path):
    result = runner.invoke(app, ["labels", "audit", "--data", str(demo_dir), "-o",
                                 str(tmp_path / "s.csv")])
    assert result.exit_code == 1 and "exactly one of --folds K or --run RUN" in result.output


# -- corrections ---------------------------------------------------------------------------


def _move(train, position: int, keypoint: str, new) -> log.Correction:
    k = KEYPOINT_NAMES.index(keypoint)
    old = tuple(float(v) for v in train.keypoints[position, 2 * k:2 * k + 2])
    return log.Correction(int(train.row_ids[position]), keypoint, old, tuple(new), "moved")


def test_corrections_round_trip_and_undo(data, tmp_path):
    train = data.train
    path = tmp_path / "corrections.csv"
    first = _move(train, 5, "nose_tip", (40.0, 50.0))
    log.append(path, [first], train.fingerprint)
    fixed, info = log.corrected(train, path)
    assert info["count"] == 1 and len(info["sha256"]) == 64
    k = KEYPOINT_NAMES.index("nose_tip")
    np.testing.assert_allclose(fixed.keypoints[5, 2 * k:2 * k + 2], [40.0, 50.0])
    np.testing.assert_array_equal(np.delete(fixed.keypoints, 5, 0),
                                  np.delete(train.keypoints, 5, 0))
    assert train.keypoints[5, 2 * k] != 40.0  # the original is untouched
    undo = log.Correction(first.row, "nose_tip", first.new, first.old, "undo")
    missing = log.Correction(first.row, "left_eye_center",
                             tuple(float(v) for v in train.keypoints[5, 0:2]),
                             (float("nan"), float("nan")), "mark missing")
    log.append(path, [undo, missing], train.fingerprint)
    fixed, info = log.corrected(train, path)
    assert info["count"] == 3
    np.testing.assert_allclose(fixed.keypoints[5, 2 * k:2 * k + 2], first.old)
    assert np.isnan(fixed.keypoints[5, 0:2]).all()


def test_labels_apply_writes_valid_kaggle_data(data, demo_dir, tmp_path):
    train = data.train
    path = tmp_path / "c.csv"
    log.append(path, [_move(train, 7, "mouth_left_corner", (61.25, 70.5))], train.fingerprint)
    out_dir = tmp_path / "fixed"
    result = runner.invoke(app, ["labels", "apply", "--data", str(demo_dir), "--corrections",
                                 str(path), "-o", str(out_dir)])
    assert result.exit_code == 0, result.output
    again = dataset.load(out_dir).require_train()
    k = KEYPOINT_NAMES.index("mouth_left_corner")
    np.testing.assert_allclose(again.keypoints[7, 2 * k:2 * k + 2], [61.25, 70.5], atol=1e-4)
    np.testing.assert_array_equal(again.images, train.images)
    same = np.delete(np.arange(len(train)), 7)
    np.testing.assert_allclose(again.keypoints[same], train.keypoints[same], atol=1e-4)
    listed = runner.invoke(app, ["labels", "log", "--data", str(demo_dir), "--corrections",
                                 str(path)])
    assert "1 corrections" in listed.output and "61.25,70.5" in listed.output
    refused = runner.invoke(app, ["labels", "apply", "--data", str(demo_dir), "--corrections",
                                  str(path), "-o", str(demo_dir)])
    assert refused.exit_code == 1 and "original training.csv" in refused.output


@pytest.mark.parametrize("problem,expected", [
    ("row", "row 99999 is not in the training data"),
    ("keypoint", "unknown keypoint 'third_eye'"),
    ("fingerprint", "made for other data"),
    ("old", "but the log says"),
])
def test_a_bad_corrections_file_is_a_named_error(data, tmp_path, problem, expected):
    train = data.train
    good = _move(train, 2, "nose_tip", (1.0, 2.0))
    path = tmp_path / "c.csv"
    fingerprint = "someone-else" if problem == "fingerprint" else train.fingerprint
    bad = {"row": log.Correction(99999, "nose_tip", good.old, good.new),
           "old": log.Correction(good.row, "nose_tip", (0.0, 0.0), good.new)}.get(problem, good)
    log.append(path, [bad], fingerprint)
    if problem == "keypoint":
        path.write_text(path.read_text().replace("nose_tip", "third_eye"))
    with pytest.raises(log.CorrectionsError, match=expected) as exc:
        log.corrected(train, path)
    assert str(path) in str(exc.value) and "line 2" in str(exc.value)


def test_concurrent_appends_lose_nothing(data, tmp_path):
    train = data.train
    path = tmp_path / "c.csv"
    per_thread, threads = 200, 4

    def work(t: int):
        for i in range(per_thread):
            log.append(path, [log.Correction(t * per_thread + i, "nose_tip", (1.0, 1.0),
                                             (2.0, 2.0), "load", f"thread {t}")],
                       train.fingerprint)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    entries = log.read(path)
    assert sorted(c.row for c in entries) == list(range(per_thread * threads))
    assert path.read_text().count("time,data,row") == 1


def test_training_records_the_corrections(data, demo_dir, tmp_path):
    train = data.train
    path = tmp_path / "c.csv"
    log.append(path, [_move(train, 3, "nose_tip", (48.0, 60.0))], train.fingerprint)
    models = tmp_path / "models"
    result = runner.invoke(app, ["train", "--data", str(demo_dir), "--arch", "simple", "--head",
                                 "regression", "--epochs", "1", "--steps-per-epoch", "2",
                                 "--models", str(models), "--run-id", "fixed",
                                 "--corrections", str(path)])
    assert result.exit_code == 0, result.output
    from fkd_core import runs

    recorded = runs.resolve("fixed", models).config["corrections"]
    assert recorded == {"path": str(path), "sha256": log.file_digest(path), "count": 1}
