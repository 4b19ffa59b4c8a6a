"""Recipes as files: `fkd train --config` round-trips into config.json, the command line
overrides the file, and bad keys or types are errors naming the key and the file."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from fkd_core import runs
from fkd_core.cli import app
from fkd_core.recipes import RecipeError, read_recipe

runner = CliRunner()
RECIPE = """\
# a tiny recipe
arch = "simple"
head = "regression"
width = 0.5
epochs = 1
batch_size = 16
steps_per_epoch = 2
lr = 0.002
val_fraction = 0.25
seed = 4
augment = "default"
aug = {rotate_deg = 7, noise_prob = 0}
head_opt = {hidden = 16}
"""


def _train(demo_dir, models, *args):
    result = runner.invoke(app, ["train", "--data", str(demo_dir), "--models", str(models),
                                 *args])
    assert result.exit_code == 0, result.output
    return runs.resolve(models / args[args.index("--run-id") + 1])


@pytest.mark.slow
def test_recipe_round_trips_into_config_json(demo_dir, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE)
    run = _train(demo_dir, tmp_path / "models", "--config", str(recipe), "--run-id", "r")
    train = run.config["train"]
    assert (train["arch"], train["head"], train["width"], train["epochs"]) == (
        "simple", "regression", 0.5, 1)
    assert (train["batch_size"], train["steps_per_epoch"], train["lr"]) == (16, 2, 0.002)
    assert (train["val_fraction"], train["seed"]) == (0.25, 4)
    assert train["augment"]["rotate_deg"] == 7 and train["augment"]["noise_prob"] == 0
    assert train["augment"]["flip_prob"] == 0.5  # the preset's own settings stay
    assert train["head_options"] == {"hidden": 16}
    assert train["learn_source_offset"] is False
    assert run.config["model"]["name"] == "simple_regression"
    provenance = run.config["recipe"]
    assert provenance["path"] == str(recipe)
    assert provenance["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert provenance["options"]["aug"] == {"rotate_deg": 7, "noise_prob": 0}
    assert provenance["options"]["seed"] == 4
    # The folder reads back through the schema check (runs.resolve raised otherwise).
    assert json.loads((run.path / "config.json").read_text())["recipe"] == provenance


@pytest.mark.slow
def test_command_line_overrides_the_file(demo_dir, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE)
    run = _train(demo_dir, tmp_path / "models", "--config", str(recipe), "--run-id", "o",
                 "--seed", "9", "--aug", "rotate_deg=3", "--lr", "0.001")
    train = run.config["train"]
    assert (train["seed"], train["lr"]) == (9, 0.001)  # the command line wins
    assert train["augment"]["rotate_deg"] == 3
    assert train["augment"]["noise_prob"] == 0  # the file's other --aug key stays
    assert (train["width"], train["batch_size"]) == (0.5, 16)  # untouched options: the file's
    assert run.config["recipe"]["options"]["seed"] == 9


@pytest.mark.parametrize("line, key, says", [
    ("batch-size = 16", "batch-size", "did you mean 'batch_size'"),
    ("learning_rate = 0.1", "learning_rate", "unknown key"),
    ('epochs = "3"', "epochs", "must be a whole number"),
    ("width = true", "width", "must be a number"),
    ('aug = "rotate_deg=3"', "aug", "must be a table"),
    ("aug = {rotate_deg = [1, 2]}", "aug.rotate_deg", "single value"),
])
def test_bad_key_or_type_names_the_key_and_the_file(demo_dir, tmp_path, line, key, says):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(f'arch = "simple"\n{line}\n')
    result = runner.invoke(app, ["train", "--config", str(recipe), "--data", str(demo_dir),
                                 "--models", str(tmp_path / "models")])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert str(recipe) in message and key in message and says in message, message
    assert not (tmp_path / "models").exists()  # refused before any training
    with pytest.raises(RecipeError, match=str(recipe)):
        read_recipe(recipe)


def test_bad_values_and_files_are_errors_before_training(tmp_path):
    from fkd_core.recipes import train_config

    with pytest.raises(RecipeError, match="not valid TOML"):
        (tmp_path / "broken.toml").write_text("arch = \n")
        read_recipe(tmp_path / "broken.toml")
    with pytest.raises(RecipeError, match="cannot be read"):
        read_recipe(tmp_path / "missing.toml")
    with pytest.raises(RecipeError, match="unknown architecture"):
        train_config({"arch": "nonesuch"})
    with pytest.raises(RecipeError, match="source_offset must be one of off, learn"):
        train_config({"source_offset": "yes"})


def test_recipe_paths_are_relative_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.toml").write_text('data = "../faces"\ncorrections = "/abs/c.jsonl"\n')
    options = read_recipe(tmp_path / "sub" / "r.toml").options
    assert options["data"] == str(tmp_path / "sub" / ".." / "faces")
    assert options["corrections"] == "/abs/c.jsonl"


def test_shipped_recipes_read(tmp_path):
    """Every file in recipes/ is a valid train recipe or pipeline."""
    from pathlib import Path

    from fkd_core.pipeline import read_pipeline

    folder = Path(__file__).resolve().parents[1] / "recipes"
    best = read_recipe(folder / "faces15-resnet-g48.toml").options
    # The options of benchmarks/faces15/run.sh's measured model.
    assert (best["arch"], best["head"], best["epochs"], best["max_minutes"], best["ema"],
            best["head_opt"]) == ("resnet", "heatmap", 60, 58, 0.998, {"grid_size": 48})
    plan = read_pipeline(folder / "faces15.toml")
    assert plan.members[0].options == {**best, "epochs": 72, "run_id": plan.members[0].run_id}
    assert plan.members[1].options == {**best, "epochs": 72, "run_id": plan.members[1].run_id,
                                       "seed": 1}
    for name in ("faces15-resnet.toml", "faces15-resnet-ema.toml"):
        read_recipe(folder / name)
    assert len(read_pipeline(folder / "demo.toml").members) == 2
