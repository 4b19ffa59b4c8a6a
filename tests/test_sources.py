"""Two labelling sources: demo data with a planted offset on the four-keypoint rows, and
`fkd train --source-offset learn` recovering it and using it for the 8-value lookup rows."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fkd_core import dataset, runs, synthetic
from fkd_core.cli import app
from fkd_core.evaluation import evaluate, submission
from fkd_core.keypoints import ALWAYS_PRESENT, COLUMN_NAMES, clip_to_frame

runner = CliRunner()
PLANTED = (2.0, -1.5)


def test_demo_source_offset_moves_only_the_four_keypoint_rows(tmp_path):
    plain = dataset.load(synthetic.write_demo(tmp_path / "a", 40, 4, seed=2)["training"].parent)
    result = runner.invoke(app, ["data", "demo", str(tmp_path / "b"), "--train", "40",
                                 "--test", "4", "--seed", "2", "--source-offset", "2,-1.5"])
    assert result.exit_code == 0, result.output
    moved = dataset.load(tmp_path / "b").train
    four = plain.train.four_point
    assert four.any() and (~four).any() and (moved.four_point == four).all()
    delta = moved.keypoints - plain.train.keypoints
    np.testing.assert_allclose(delta[four][:, 0::2][np.isfinite(delta[four][:, 0::2])], 2.0,
                               atol=1e-3)
    np.testing.assert_allclose(delta[four][:, 1::2][np.isfinite(delta[four][:, 1::2])], -1.5,
                               atol=1e-3)
    assert np.nanmax(np.abs(delta[~four])) == 0.0
    bad = runner.invoke(app, ["data", "demo", str(tmp_path / "c"), "--source-offset", "2"])
    assert bad.exit_code == 1 and "DX,DY" in bad.output


@pytest.mark.slow
def test_learned_source_offset_recovers_the_planted_one(tmp_path):
    demo, models = tmp_path / "demo", tmp_path / "models"
    result = runner.invoke(app, ["data", "demo", str(demo), "--train", "600", "--test", "30",
                                 "--seed", "3", "--source-offset", f"{PLANTED[0]},{PLANTED[1]}"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [
        "train", "--data", str(demo), "--models", str(models), "--run-id", "two",
        "--source-offset", "learn", "--arch", "resnet", "--head", "heatmap", "--width", "0.25",
        "--epochs", "12", "--steps-per-epoch", "20", "--batch-size", "32", "--lr", "0.003",
        "--augment", "none", "--val-fraction", "0.2",
    ])
    assert result.exit_code == 0, result.output
    run = runs.resolve(models / "two")
    assert run.config["train"]["learn_source_offset"] is True
    # The label-offset calibration reads the complete rows (the reference convention) only;
    # on all rows the planted x offset would leak into it (+1.4 px here).
    assert abs(run.label_offset) < 0.3
    learned = run.config["source_offset"]
    assert abs(learned["dx"] - PLANTED[0]) < 0.3 and abs(learned["dy"] - PLANTED[1]) < 0.3, \
        learned

    # fkd evaluate scores the four-keypoint rows with it, as training scored them.
    assert evaluate(run, dataset.load(demo).train, subset="val").rmse == pytest.approx(
        run.metrics["val_rmse"], rel=1e-4)

    # The submission adds it to the images the lookup table asks only 8 values for.
    kd = dataset.load(demo)
    frame = submission(run, kd, tta=False)
    asked = kd.lookup.groupby("ImageId").FeatureName.nunique()
    pred = run.predict(kd.test.images)
    column = {name: i for i, name in enumerate(COLUMN_NAMES)}
    shift = np.tile([learned["dx"], learned["dy"]], 15)
    checked = 0
    for image_id, n in asked.items():
        i = int(np.flatnonzero(kd.test.image_ids == image_id)[0])
        expected = clip_to_frame(pred[i:i + 1] + (shift if n == 2 * len(ALWAYS_PRESENT)
                                                  else 0.0), run.label_offset)[0]
        rows = kd.lookup[kd.lookup.ImageId == image_id]
        got = frame.set_index("RowId").Location.loc[rows.RowId].to_numpy()
        want = expected[[column[f] for f in rows.FeatureName]]
        np.testing.assert_allclose(got, want, atol=1e-4)
        checked += n == 8
    assert checked > 0
