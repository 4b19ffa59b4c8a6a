"""`fkd serve` and `app.serve.Server` stop promptly and leave nothing behind.

Real servers on free ports: the process signalled is the one listening (found through /proc),
it exits within 2 s of SIGTERM or SIGINT, even while the page is busy loading TensorFlow,
and the port is closed afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from app.serve import Server, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc"),
]

ROOT = Path(__file__).resolve().parents[1]
STOP_WITHIN_S = 2.0


# -- helpers (test_packaging.py uses them too) ------------------------------------------


def fkd_command(python: Path | str = sys.executable) -> list[str]:
    """The installed ``fkd`` console script next to ``python``."""
    script = Path(python).with_name("fkd")
    assert script.is_file(), f"no fkd console script at {script}"
    return [str(script)]


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3"}


def start(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so a failed test can kill all of it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env=server_env(), start_new_session=True)


def wait_for_app(port: int, proc: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    """The HTML of ``/app`` once it answers 200; fails with the server's log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited ({proc.returncode}):\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/app", timeout=60) as r:
                assert r.status == 200
                return r.read().decode()
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"no page on port {port} after {timeout} s:\n{log.read_text()}")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def listeners(port: int) -> set[int]:
    """PIDs of the processes holding a listening TCP socket on ``port`` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile (a server still warming up opens and closes
                continue  # files): not a reason to skip the process's other descriptors
            if target in inodes:
                pids.add(int(proc.name))
                break
    return pids


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_and_time(proc: subprocess.Popen, signum: int, log: Path) -> float:
    """Send ``signum``; the seconds until the process exited (fails past STOP_WITHIN_S)."""
    t0 = time.perf_counter()
    proc.send_signal(signum)
    try:
        proc.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_WITHIN_S} s after {signal.Signals(signum).name}:\n"
                    f"{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def kill_group(proc: subprocess.Popen) -> None:
    """Test cleanup: whatever is left of ``proc``'s process group (its id is not reused while
    a member lives)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dir) -> Path:
    """A folder with one tiny real run."""
    out = tmp_path_factory.mktemp("runs")
    subprocess.run(
        [sys.executable, "-m", "fkd_core.cli", "train", "--data", str(demo_dir), "--arch",
         "simple", "--head", "regression", "--epochs", "1", "--steps-per-epoch", "2",
         "--models", str(out), "--run-id", "tiny"],
        check=True, env=server_env(), capture_output=True,
    )
    return out


# -- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_fkd_serve_is_the_server_and_stops_on_signal(signum, demo_dir, tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    proc = start([*fkd_command(), "serve", "--port", str(port), "--data", str(demo_dir),
                  "--models", str(tmp_path)], log, cwd=tmp_path)
    try:
        assert "fkd dashboard" in wait_for_app(port, proc, log)
        assert listeners(port) == {proc.pid}, "the process that serves is not `fkd serve`"
        assert children(proc.pid) == []
        took = stop_and_time(proc, signum, log)
        print(f"{signal.Signals(signum).name} -> exit: {took:.2f} s")
        assert proc.returncode == 0, log.read_text()
        assert not listening(port) and listeners(port) == set()
    finally:
        kill_group(proc)


def test_fkd_serve_stops_on_sigterm_while_the_page_loads_a_model(trained, demo_dir, tmp_path):
    """SIGTERM while the page's first build imports TensorFlow and predicts (the main thread
    is busy for seconds, so Bokeh's own handler would wait for it)."""
    models = tmp_path / "runs"
    shutil.copytree(trained, models)
    for cached in models.glob("*/predictions-*.npz"):
        cached.unlink()  # so the page computes them
    port, log = free_port(), tmp_path / "server.log"
    proc = start([*fkd_command(), "serve", "--port", str(port), "--data", str(demo_dir),
                  "--models", str(models)], log, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        (server,) = listeners(port)
        page = threading.Thread(target=_get_quietly, args=(port,), daemon=True)
        page.start()
        maps = Path(f"/proc/{server}/maps")
        while "tensorflow" not in maps.read_text():  # the page has started loading the model
            assert time.monotonic() < deadline, f"no TensorFlow loaded:\n{log.read_text()}"
            time.sleep(0.05)
        took = stop_and_time(proc, signal.SIGTERM, log)
        print(f"SIGTERM while busy -> exit: {took:.2f} s")
        assert server == proc.pid and not alive(server) and not listening(port)
    finally:
        kill_group(proc)


def _get_quietly(port: int) -> None:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/app", timeout=120).read()
    except OSError:
        pass  # the server stopped under it


def test_server_stop_is_prompt_and_leaves_no_process(demo_dir, tmp_path):
    srv = Server(demo_dir, tmp_path, log=tmp_path / "server.log")
    with srv:
        pid = srv.proc.pid
        assert listeners(srv.port) == {pid}
        t0 = time.perf_counter()
        srv.stop()
        took = time.perf_counter() - t0
    print(f"Server.stop(): {took:.2f} s")
    assert took < STOP_WITHIN_S
    assert srv.proc.returncode == 0  # stopped by its SIGTERM, not killed
    assert not alive(pid) and not listening(srv.port)


def test_server_dies_with_the_process_that_started_it(demo_dir, tmp_path):
    """A killed test run (pytest under `timeout`, say) leaves no server behind."""
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from app.serve import Server\n"
         "s = Server(sys.argv[1], sys.argv[2], log=sys.argv[3])\n"
         "s.start()\n"
         "print(s.proc.pid, s.port, flush=True)\n"
         "time.sleep(600)\n",
         str(demo_dir), str(tmp_path), str(tmp_path / "server.log")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**server_env(), "PYTHONPATH": str(ROOT)},
    )
    pid = port = None
    try:
        pid, port = map(int, owner.stdout.readline().split())
        assert alive(pid) and listening(port)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + STOP_WITHIN_S
        # (a process whose main thread has exited shows as a zombie while its other threads
        # still end, and its socket closes with the last of them: wait for both)
        while (alive(pid) or listening(port)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "the server outlived the process that started it"
        assert not listening(port)
    finally:
        owner.kill()
        owner.wait()
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)
