"""`fkd pipeline`: members, then their ensemble, then the submission — and a killed pipeline
resumes where it stopped without training its finished members again."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fkd_core import runs
from fkd_core.cli import app
from fkd_core.pipeline import read_pipeline
from fkd_core.recipes import RecipeError

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo.toml"


@pytest.mark.slow
def test_killed_pipeline_resumes_without_retraining(demo_dir, data, tmp_path):
    models, output = tmp_path / "models", tmp_path / "submission.csv"
    first, second = models / "demo-simple", models / "demo-simple-wide"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fkd_core.cli", "pipeline", str(DEMO), "--data", str(demo_dir),
         "--models", str(models), "-o", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    deadline = time.monotonic() + 180
    while not first.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the first member never appeared"
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no clean-up of any kind
    proc.communicate(timeout=60)
    assert first.is_dir() and not second.exists() and not output.exists()
    config = first / "config.json"
    before = (config.stat().st_mtime_ns, config.read_bytes())

    result = runner.invoke(app, ["pipeline", str(DEMO), "--data", str(demo_dir), "--models",
                                 str(models), "-o", str(output), "--max-minutes", "30"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "[1/2] member demo-simple: already there, kept" in text
    assert "[2/2] member demo-simple-wide: training (at most" in text
    assert (config.stat().st_mtime_ns, config.read_bytes()) == before  # not trained again
    wide = runs.resolve(second)
    assert wide.config["train"]["width"] == 1.5 and wide.config["train"]["epochs"] == 4
    assert 29 < wide.config["train"]["max_minutes"] <= 30  # the pipeline's budget, passed on
    assert wide.config["recipe"]["pipeline"] == str(DEMO)
    ensemble = runs.resolve(models / "demo-ensemble")
    assert ensemble.config["members"] == ["demo-simple", "demo-simple-wide"]
    with open(output) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["RowId", "Location"]
    assert [int(r[0]) for r in rows[1:]] == data.lookup.RowId.tolist()

    # A third run changes nothing and says so.
    result = runner.invoke(app, ["pipeline", str(DEMO), "--data", str(demo_dir), "--models",
                                 str(models), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert "ensemble demo-ensemble: already there, kept" in " ".join(result.output.split())


def test_spent_budget_stops_cleanly_before_training(demo_dir, tmp_path):
    models = tmp_path / "models"
    result = runner.invoke(app, ["pipeline", str(DEMO), "--data", str(demo_dir), "--models",
                                 str(models), "-o", str(tmp_path / "s.csv"),
                                 "--max-minutes", "0"])
    assert result.exit_code == 3, result.output
    message = " ".join(result.output.split())
    assert "--max-minutes 0 is spent before member demo-simple (0 of 2 members done)" in message
    assert "run the same command again to continue" in message
    assert not (models / "demo-simple").exists() and not (tmp_path / "s.csv").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, says", [
    ('[[member]]\nrun_id = "a"\nepoch = 3\n', "member 1: unknown key 'epoch'"),
    ('[[member]]\nrun_id = "a"\nseed = "x"\n', "member 1: seed must be a whole number"),
    ('[[member]]\narch = "simple"\n', "member 1: run_id is missing"),
    ('[[member]]\nrun_id = "../a"\n', "member 1: run_id: invalid run id"),
    ('[[member]]\nrun_id = "a"\ndata = "x"\n', "data cannot be set in a pipeline's member"),
    ('[[member]]\nrun_id = "a"\n[[member]]\nrun_id = "b"\n', "2 members need an [ensemble]"),
    ('[[member]]\nrun_id = "a"\n[[member]]\nrun_id = "a"\n[ensemble]\nrun_id = "e"\n',
     "run_id 'a' is used by another member"),
    ('[[member]]\nrun_id = "a"\n[[member]]\nrun_id = "b"\n[ensemble]\nrun_id = "e"\n'
     'weights = [1]\n', "ensemble.weights must be 2 non-negative numbers"),
    ('[[member]]\nrun_id = "a"\narch = "nonesuch"\n', "member a: unknown architecture"),
    ('members = []\n', "unknown key 'members'"),
    ('[[member]]\nrun_id = "a"\n[submission]\noutput = "x.csv"\n', "unknown key 'output'"),
    ('[[member]]\nrun_id = "a"\n[submission]\ndebias = 1\n',
     "submission.debias must be true or false"),
])
def test_bad_pipeline_file_names_the_file_and_the_key(tmp_path, text, says):
    path = _write(tmp_path / "p.toml", text)
    with pytest.raises(RecipeError) as caught:
        read_pipeline(path)
    assert str(path) in str(caught.value) and says in str(caught.value)


def test_member_recipe_errors_name_the_recipe_file(tmp_path):
    member = _write(tmp_path / "m.toml", 'arch = "simple"\nbatch = 3\n')
    path = _write(tmp_path / "p.toml", '[[member]]\nrun_id = "a"\nrecipe = "m.toml"\n')
    with pytest.raises(RecipeError, match=f"{member}: unknown key 'batch'"):
        read_pipeline(path)


@pytest.mark.slow
def test_existing_run_with_other_options_is_not_reused(demo_dir, tmp_path):
    models = tmp_path / "models"
    one = _write(tmp_path / "one.toml", '[[member]]\nrun_id = "solo"\nrecipe = "%s"\n'
                 % (DEMO.parent / "demo-simple.toml"))
    result = runner.invoke(app, ["pipeline", str(one), "--data", str(demo_dir), "--models",
                                 str(models), "-o", str(tmp_path / "a.csv")])
    assert result.exit_code == 0, result.output
    assert "from run solo" in " ".join(result.output.split())
    changed = _write(tmp_path / "one.toml", one.read_text() + "seed = 2\n")
    result = runner.invoke(app, ["pipeline", str(changed), "--data", str(demo_dir),
                                 "--models", str(models), "-o", str(tmp_path / "b.csv")])
    assert result.exit_code == 1
    assert "run solo exists but was not trained with this member's options" in " ".join(
        result.output.split())
