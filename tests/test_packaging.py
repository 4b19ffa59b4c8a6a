"""The wheel: it holds fkd_core and the dashboard (nothing else), and an installed `fkd serve`
serves the page from the installed packages, away from any checkout.

The fresh virtual environment gets its dependencies from this one through a .pth file, so the
test downloads nothing but (when this environment lacks setuptools>=77) the build backend.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from test_serve import (
    fkd_command,
    kill_group,
    listeners,
    listening,
    server_env,
    start,
    stop_and_time,
    wait_for_app,
)

from app.serve import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="venv layout, /proc"),
]

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".ruff_cache", "run")
OFFLINE = re.compile(r"No matching distribution found for setuptools|Failed to establish a new "
                     r"connection|Temporary failure in name resolution|Network is unreachable")


def _source_tree(dest: Path) -> Path:
    """The checkout as a build sees it (git-ignored data, runs and outputs left out)."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(ROOT).as_posix()
        skip = set(IGNORED(folder, names))
        if rel in ("data", "models"):
            skip |= {n for n in names if n != "README.md"}
        if rel == "benchmarks":
            skip.add("out")
        return skip

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _has_build_backend() -> bool:
    try:
        import setuptools
        import wheel  # noqa: F401
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


def _build_wheel(src: Path, out: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)]
    isolated = not _has_build_backend()
    if not isolated:
        cmd.append("--no-build-isolation")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode and isolated and OFFLINE.search(r.stdout + r.stderr):
        pytest.skip("building needs setuptools>=77, not installed here and not downloadable")
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("fkd-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    return _build_wheel(_source_tree(work / "src"), work / "dist")


def test_wheel_holds_the_library_and_the_dashboard_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fkd_core", "app", "fkd-0.1.0.dist-info"}, sorted(tops)
    for needed in ("app/__init__.py", "app/main.py", "app/serve.py", "fkd_core/cli.py"):
        assert needed in names
    assert not [n for n in names if n.endswith((".csv", ".zip", ".keras", ".npz", ".h5",
                                                ".png"))]
    entry_points = zipfile.ZipFile(wheel).read("fkd-0.1.0.dist-info/entry_points.txt").decode()
    assert "fkd = fkd_core.cli:main" in entry_points


def test_installed_fkd_serve_serves_the_page_from_the_wheel(wheel, demo_dir, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], check=True, capture_output=True, text=True)
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(site.stdout.strip()) / "fkd_test_dependencies.pth").write_text("\n".join(deps) + "\n")

    away = tmp_path / "elsewhere"  # no checkout on the path
    away.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import app.serve, fkd_core.cli; print(app.__file__); "
         "print(fkd_core.__file__)"],
        cwd=away, env=server_env(), check=True, capture_output=True, text=True,
    ).stdout.split()
    assert all(Path(f).is_relative_to(venv) for f in where), where

    port, log = free_port(), tmp_path / "server.log"
    proc = start([*fkd_command(python), "serve", "--port", str(port), "--data", str(demo_dir),
                  "--models", str(away)], log, cwd=away)
    try:
        html = wait_for_app(port, proc, log)
        assert "<title>fkd dashboard</title>" in html
        assert listeners(port) == {proc.pid}
        stop_and_time(proc, signal.SIGTERM, log)
        assert not listening(port)
    finally:
        kill_group(proc)
