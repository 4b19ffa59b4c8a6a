"""Shared fixtures: an isolated parse cache and fkd home, a small demo data set, the optional
faces15 set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FACES15 = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces15"


def _environ_folder(tmp_path_factory, variable: str, folder: str):
    """A fresh temporary folder named by ``variable`` for the whole test session."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp(folder)
        patch.setenv(variable, str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Each test session parses into its own cache, so tests never see a user's cache."""
    yield from _environ_folder(tmp_path_factory, "FKD_CACHE_DIR", "fkd-cache")


@pytest.fixture(scope="session", autouse=True)
def isolated_fkd_home(tmp_path_factory):
    """Per-user fkd files (the label corrections logs) in a temporary folder: no test, and no
    server a test starts, reads or writes the user's own."""
    yield from _environ_folder(tmp_path_factory, "FKD_HOME", "fkd-home")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo set in Kaggle's loose-CSV layout (120 training, 30 test faces)."""
    from fkd_core import synthetic

    out = tmp_path_factory.mktemp("demo")
    synthetic.write_demo(out, n_train=120, n_test=30, seed=1)
    return out


@pytest.fixture(scope="session")
def data(demo_dir):
    """The demo set as loaded by fkd (training, test, lookup)."""
    from fkd_core import dataset

    return dataset.load(demo_dir)


@pytest.fixture
def faces15() -> Path:
    if not (FACES15 / "training.zip").is_file():
        pytest.skip("../shared/data/faces15 is not available")
    return FACES15
