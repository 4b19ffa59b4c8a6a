"""What the browser test modules share: one headless Chromium per module, a tab with its
console errors and screenshots, and a server start that fails with the server's log.

A module takes the fixture with ``browser = browser_harness.browser``. Without Playwright or
Chromium, importing this skips the importing module on a workstation and fails it in CI
(``CI`` set), where a missing browser must not pass as "skipped".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import screenshots as ui
from app.serve import Server

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

try:
    from playwright import sync_api
except ImportError:
    if IN_CI:
        raise
    pytest.skip("Playwright is not installed (pip install -e '.[test]')", allow_module_level=True)
if not Path(ui.CHROMIUM).exists():
    if IN_CI:
        raise RuntimeError(f"no Chromium at {ui.CHROMIUM}: the browser tests cannot run in CI")
    pytest.skip(f"no Chromium at {ui.CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = ui.launch(p)
        yield b
        b.close()


def start_server(data, models, log: Path) -> Server:
    """A started dashboard server; a failed start fails the test with the server's log."""
    srv = Server(data, models, log=log)
    try:
        srv.start()
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}; server log:\n{log.read_text()[-3000:]}")
    return srv


class Session:
    """A browser tab on the dashboard; keeps console errors and screenshots."""

    def __init__(self, browser, url: str, shots: Path, prepare=None):
        self.page, self.errors = ui.open_page(browser, url, prepare)
        self.shots = shots
        self.saved: list[Path] = []

    def shot(self, name: str) -> Path:
        path = ui.save(self.page, self.shots / f"{name}.png", full_page=True)
        self.saved.append(path)
        return path

    def where(self) -> str:
        return "screenshots: " + ", ".join(map(str, self.saved or [self.shot("failure")]))

    def check(self, condition: bool, what: str) -> None:
        assert condition, f"{what} ({self.where()})"

    def check_console(self) -> None:
        assert not self.errors, f"browser console errors: {self.errors} ({self.where()})"


def expect_text(s: Session, text, timeout: float = 30_000):
    """Wait until ``text`` (a string or a regex) is visible in the page."""
    try:
        s.page.get_by_text(text).first.wait_for(timeout=timeout)
    except sync_api.TimeoutError:
        pytest.fail(f"{text!r} never appeared ({s.where()})")


# The two fixtures below need a module-level ``models`` fixture (the runs to serve).


@pytest.fixture(scope="module")
def server(demo_dir, models, tmp_path_factory):
    srv = start_server(demo_dir, models, tmp_path_factory.mktemp("server") / "server.log")
    yield srv.url
    srv.stop()


@pytest.fixture
def session(browser, server, tmp_path):
    s = Session(browser, server, tmp_path)
    yield s
    s.page.close()


def choose(page, css_class: str, label: str) -> None:
    """Pick an option of one of the page's Select widgets (found by its CSS class)."""
    page.locator(f".{css_class} select").select_option(label=label)


TINY_RUN = ["--arch", "simple", "--head", "regression", "--epochs", "1", "--steps-per-epoch",
            "2"]


def train_run(data, models: Path, run_id: str, *options: str) -> Path:
    """A real run made by ``fkd train`` as a user would (tiny unless ``options`` say more)."""
    subprocess.run(
        [sys.executable, "-m", "fkd_core.cli", "train", "--data", str(data),
         *(options or TINY_RUN), "--models", str(models), "--run-id", run_id],
        check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True,
    )
    return models / run_id


def heatmap_cell(page, run: str, keypoint: str):
    """The leaderboard heatmap's (run, keypoint) cell (a locator): the row headed by the run's
    id, the keypoint's column."""
    from fkd_core.keypoints import KEYPOINT_NAMES

    rows = page.locator("table.fkd-heat tbody tr")
    row = rows.filter(has=page.locator("th.run").get_by_text(run, exact=True))
    return row.locator("td").nth(KEYPOINT_NAMES.index(keypoint))
