"""Export for deployment: TFLite (plain and quantised) and SavedModel exports of a tiny run
trained for real predict like the run; bad files are named errors; the CLI command.

Tolerances on the demo validation faces (pixels of a 96-pixel face):
- plain TFLite vs Keras, with and without flip-TTA: max abs difference ≤ 0.01 px;
- dynamic-range quantised TFLite (int8 weights, float activations): RMSE against the labels
  changes by ≤ 0.05 px and no coordinate moves by more than 0.1 px (seen: 0.0001 px and
  0.008 px; the demo ResNet moves up to 0.35 px);
- SavedModel's ``serve`` vs Keras: max abs difference ≤ 1e-4 normalised (0.005 px).
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fkd_core import export, metrics, runs
from fkd_core.cli import app
from fkd_core.composite import make_ensemble
from fkd_core.evaluation import evaluate, evaluation_rows
from fkd_core.training import TrainConfig, train

runner = CliRunner()
# The heatmap head (the default): its custom SoftArgmax layer must survive the conversion.
# (MobileNet and ResNet graphs are exported by benchmarks/bench_export.py; a tiny MobileNet
# costs a minute to build and convert, too slow for the suite.)
# Three quarters of the demo faces are validation rows: enough complete ones (≥ 20) for the
# run to have its own training framing (mean shape), which the export must carry.
TINY = dict(arch="simple", head="heatmap", width=1.0, epochs=1, batch_size=16,
            steps_per_epoch=4, val_fraction=0.75, augment={})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny_run(data, models):
    """A trained run whose config says its labels sit 0.9 px right of the pixel indices (as
    faces15's do), so a predictor that drops the recorded offset is caught."""
    path = train(data.train, TrainConfig(**TINY, label_offset=0.9), models, run_id="tiny",
                 verbose=0)
    run = runs.resolve(path)
    assert run.label_offset == pytest.approx(0.9)
    return run


@pytest.fixture(scope="module")
def val_faces(tiny_run, data):
    rows = evaluation_rows(tiny_run, data.train, "val")
    return data.train.images[rows]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    model = tiny_run.load_model()
    return {q: export.export_run(tiny_run, out / f"tiny-{q or 'plain'}.tflite", "tflite",
                                 quantize=q, model=model)
            for q in (None, "dynamic")}


def test_tflite_predicts_like_the_run(tiny_run, val_faces, exported):
    lite = export.TFLiteModel(exported[None])
    assert lite.id == "tiny-plain.tflite" and lite.run_id == "tiny"
    assert lite.label_offset == pytest.approx(0.9) and lite.quantize == "none"
    model = tiny_run.load_model()
    for tta in (False, True):
        expected = tiny_run.predict(val_faces, tta=tta, model=model)
        got = lite.predict(val_faces, tta=tta)
        assert got.shape == (len(val_faces), 30) and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 0.01
    # One face at a time (the interpreter is resized between batch sizes) answers alike.
    np.testing.assert_allclose(lite.predict(val_faces[:1]), lite.predict(val_faces)[:1],
                               atol=1e-4)
    assert lite.predict(val_faces[:0]).shape == (0, 30)


def test_quantised_tflite_is_smaller_and_close(tiny_run, data, val_faces, exported):
    plain, quant = export.TFLiteModel(exported[None]), export.TFLiteModel(exported["dynamic"])
    assert quant.quantize == "dynamic"
    assert quant.size_bytes < 0.7 * plain.size_bytes  # the decoder conv's weights in int8
    keras_eval = evaluate(tiny_run, data.train, subset="val")
    quant_eval = evaluate(tiny_run, data.train, subset="val", model=quant.model)
    assert abs(quant_eval.rmse - keras_eval.rmse) <= 0.05
    got = quant.predict(val_faces)
    assert 1e-4 < np.abs(got - keras_eval.pred).max() <= 0.1  # quantised, yet close
    assert metrics.rmse(got, keras_eval.truth) == pytest.approx(quant_eval.rmse, rel=1e-5)


def test_savedmodel_loads_with_tensorflow_and_matches(tiny_run, val_faces, tmp_path):
    import tensorflow as tf

    path = export.export_run(tiny_run, tmp_path / "tiny-saved", "savedmodel")
    note = export.savedmodel_note(path)
    assert note["label_offset"] == pytest.approx(0.9) and note["run_id"] == "tiny"
    loaded = tf.saved_model.load(str(path))
    x = val_faces.astype(np.float32)[..., None] / 255.0
    got = np.asarray(loaded.serve(tf.constant(x)))
    expected = np.asarray(tiny_run.load_model()(x, training=False))
    assert got.shape == (len(x), 30)
    assert np.abs(got - expected).max() <= 1e-4
    assert {p.name for p in tmp_path.iterdir()} == {"tiny-saved"}  # no staging left behind
    with pytest.raises(export.ExportError, match="already exists"):
        export.export_run(tiny_run, path, "savedmodel")


def test_ensemble_exports_too(tiny_run, data, models, tmp_path):
    other = runs.resolve(train(data.train, TrainConfig(**{**TINY, "arch": "simple",
                                                          "head": "regression"},
                                                       label_offset=0.9),
                               models, run_id="other", verbose=0))
    ens = runs.resolve(make_ensemble([tiny_run, other], models_dir=models, run_id="ens"))
    path = export.export_run(ens, tmp_path / "ens.tflite", "tflite")
    images = data.train.images[:8]
    assert np.abs(export.TFLiteModel(path).predict(images) - ens.predict(images)).max() <= 0.01


def _note_with(exported, tmp_path, name, **changes) -> str:
    """A copy of the plain export whose note has ``changes`` (a forged or damaged file)."""
    content = exported[None].read_bytes()
    note = {**export.tflite_note(content, "x"), **changes}
    path = tmp_path / name
    path.write_bytes(export._add_tflite_note(_without_note(content), note))
    return str(path)


def _without_note(content: bytes) -> bytes:
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    model.metadata = [m for m in model.metadata if m.name.decode() != export.NOTE_NAME]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_bad_files_are_named_errors(exported, tmp_path):
    text = tmp_path / "notes.tflite"
    text.write_text("this is not a model\n")
    with pytest.raises(export.ExportError, match=r"notes\.tflite is not a TFLite model"):
        export.TFLiteModel(text)
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(export.ExportError, match=r"empty\.tflite is not a TFLite model"):
        export.TFLiteModel(empty)
    with pytest.raises(export.ExportError, match=r"missing\.tflite cannot be read"):
        export.TFLiteModel(tmp_path / "missing.tflite")
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(exported[None].read_bytes()[:2000])
    with pytest.raises(export.ExportError, match=r"truncated\.tflite"):
        export.TFLiteModel(truncated)
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(_without_note(exported[None].read_bytes()))
    with pytest.raises(export.ExportError, match="not one exported by fkd export"):
        export.TFLiteModel(foreign)
    with pytest.raises(export.ExportError, match="label_offset must be between -5 and 5"):
        export.TFLiteModel(_note_with(exported, tmp_path, "far.tflite", label_offset=40.0))
    with pytest.raises(export.ExportError, match="invalid run id"):
        export.TFLiteModel(_note_with(exported, tmp_path, "id.tflite", run_id="../x"))
    with pytest.raises(export.ExportError, match="columns"):
        export.TFLiteModel(_note_with(exported, tmp_path, "cols.tflite", columns=["a"]))
    with pytest.raises(export.ExportError, match="is not a SavedModel exported by fkd"):
        export.savedmodel_note(tmp_path)


def test_a_model_of_other_shapes_is_refused(tmp_path):
    import keras
    import tensorflow as tf

    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(30)(inputs))
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    note = export.export_note(runs.Run(tmp_path / "r"), "tflite", None)
    path = tmp_path / "dense.tflite"
    path.write_bytes(export._add_tflite_note(content, note))
    with pytest.raises(export.ExportError, match="is not a keypoint model"):
        export.TFLiteModel(path)


def test_export_cli(tiny_run, models, tmp_path, val_faces):
    target = tmp_path / "cli.tflite"
    args = ["export", "tiny", "--models", str(models), "--format", "tflite", "--quantize",
            "dynamic", "-o", str(target)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {target}" in result.output and "quantised" in result.output
    assert export.TFLiteModel(target).predict(val_faces[:2]).shape == (2, 30)
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
    cases = [
        (["--format", "onnx"], "--format must be savedmodel or tflite"),
        (["--format", "savedmodel", "--quantize", "dynamic"], "--quantize is for --format "
                                                              "tflite only"),
        (["--format", "tflite", "--quantize", "int4"], "--quantize must be dynamic"),
    ]
    for options, message in cases:
        result = runner.invoke(app, ["export", "tiny", "--models", str(models), *options,
                                     "-o", str(tmp_path / "x")])
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(app, ["export", "nope", "--models", str(models), "--format",
                                 "tflite", "-o", str(tmp_path / "y.tflite")])
    assert result.exit_code == 1 and "no run 'nope'" in result.output
    result = runner.invoke(app, ["export", "tiny", "--models", str(models), "--format",
                                 "tflite", "-o", str(tmp_path / "no" / "z.tflite")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y.tflite").exists()


def test_fkd_predict_takes_a_tflite_file(tiny_run, models, exported, data, tmp_path):
    """A photo predicted with the exported file gives the run's keypoints (≤ 0.02 px: the
    CSV holds hundredths), its crops framed by the run's training faces as recorded in the
    export (without that framing they land ~4 px away)."""
    import csv

    from PIL import Image

    from fkd_core.keypoints import COLUMN_NAMES

    canvas = np.full((240, 320), 90, np.uint8)
    canvas[60:156, 100:196] = data.train.images[0]
    photo = tmp_path / "photo.png"
    Image.fromarray(canvas).save(photo)
    assert export.TFLiteModel(exported[None]).mean_shape.shape == (15, 2)
    found = {}
    for name, run in (("run", "tiny"), ("tflite", str(exported[None]))):
        result = runner.invoke(app, ["predict", run, str(photo), "--box", "100,60,96,96",
                                     "--tta", "--models", str(models), "-o",
                                     str(tmp_path / f"{name}.csv")])
        assert result.exit_code == 0, result.output
        with open(tmp_path / f"{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1 and rows[0]["file"] == "photo.png"
        found[name] = np.array([float(rows[0][c]) for c in COLUMN_NAMES])
    assert np.abs(found["tflite"] - found["run"]).max() <= 0.02
    text = tmp_path / "model.tflite"
    text.write_text("not a model")
    result = runner.invoke(app, ["predict", str(text), str(photo), "--whole", "-o",
                                 str(tmp_path / "x.csv")])
    assert result.exit_code == 1 and "model.tflite is not a TFLite model" in result.output
