"""Starting the dashboard: ``fkd serve``'s server, the ``panel serve`` command line, and a
server process for scripts.

:func:`main` runs Panel's own ``panel serve app/`` in this process, so the CLI, the browser
tests, the screenshot script and the benchmark all serve the page exactly as ``panel serve
app/`` does. What it adds is a prompt stop: on SIGTERM or SIGINT the server stops within
:data:`GRACE_S` seconds, even while the page's code holds the event loop (Bokeh only sees a
signal when its loop gets control back, which can take many seconds while TensorFlow loads),
and it skips the interpreter's slow teardown of TensorFlow.
"""

from __future__ import annotations

import _thread
import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_S = 1.0  # after a stop signal: time for a clean shutdown before the process just exits
PARENT_ENV = "FKD_SERVE_PARENT_PID"  # set by Server: the server stops when this process dies
#: The largest websocket message the server accepts (Bokeh's default is 20 MB). The Photos
#: tab's uploads arrive as one message, base64 (4/3 of the bytes): this takes a few photos of
#: the tab's per-photo limit at once; a bigger message closes the page's connection.
WEBSOCKET_MAX_MESSAGE_BYTES = 100 * 2**20


def panel_args(data: str | os.PathLike | None = None, models: str | os.PathLike = "models",
               port: int = 5006, address: str = "127.0.0.1", show: bool = False,
               allow_origin: list[str] | None = None,
               corrections: str | os.PathLike | None = None,
               photos: str | os.PathLike | None = None) -> list[str]:
    """``panel``'s arguments: ``serve app/ ... --args ...`` (localhost unless told)."""
    # --warm: run the page once at start-up, so the data is loaded and TensorFlow warms up
    # (app/main.py) before the first session, not during it
    # --unused-session-lifetime: a loaded server may take longer than Bokeh's 15 s between
    # sending a page and its websocket connecting; an expired session is rebuilt from scratch
    args = ["serve", str(APP_DIR), "--port", str(port), "--address", address, "--warm",
            "--unused-session-lifetime", "60000",
            "--websocket-max-message-size", str(WEBSOCKET_MAX_MESSAGE_BYTES)]
    origins = list(allow_origin or [])
    if address not in LOOPBACK and not origins:
        origins = [f"{socket.gethostname()}:{port}", f"{address}:{port}"]
    for origin in origins:
        args += ["--allow-websocket-origin", origin]
    if show:
        args.append("--show")
    args += ["--args", "--models", str(models)]
    if data is not None:
        args += ["--data", str(data)]
    if corrections is not None:
        args += ["--corrections", str(corrections)]
    if photos is not None:
        args += ["--photos", str(photos)]
    return args


def panel_command(data: str | os.PathLike | None = None, models: str | os.PathLike = "models",
                  port: int = 5006, address: str = "127.0.0.1", show: bool = False,
                  allow_origin: list[str] | None = None) -> list[str]:
    """The equivalent ``python -m panel serve app/ ... --args ...`` command."""
    return [sys.executable, "-m", "panel",
            *panel_args(data, models, port, address, show, allow_origin)]


def serve_command(data: str | os.PathLike | None = None, models: str | os.PathLike = "models",
                  port: int = 5006, corrections: str | os.PathLike | None = None,
                  photos: str | os.PathLike | None = None) -> list[str]:
    """``fkd serve``'s server as a command; run as a script, so it works without ``import app``."""
    cmd = [sys.executable, str(APP_DIR / "serve.py"), "--models", str(models), "--port", str(port)]
    if data is not None:
        cmd += ["--data", str(data)]
    if corrections is not None:
        cmd += ["--corrections", str(corrections)]
    if photos is not None:
        cmd += ["--photos", str(photos)]
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A dashboard server subprocess on a free localhost port; ``with Server(...) as url``.

    The server runs in its own process group and gets SIGTERM when the thread that started it
    dies (Linux), so a test run that is killed leaves no server behind.
    """

    def __init__(self, data=None, models="models", port: int | None = None, env=None,
                 log: str | os.PathLike | None = None, timeout: float = 120.0,
                 corrections: str | os.PathLike | None = None,
                 photos: str | os.PathLike | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cmd = serve_command(data, models, self.port, corrections, photos)
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        self.log = Path(log) if log else None
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.started_in = float("nan")

    def start(self) -> str:
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                     env={**self.env, PARENT_ENV: str(os.getpid())},
                                     start_new_session=True)
        if self.log:
            out.close()  # the child has its own copy
        self.started_in = wait_for_page(self.url, self.proc, self.timeout) - t0
        return self.url

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server's process group; SIGKILL it if it is still there after ``timeout``.

        The group is signalled only while its leader is unreaped, so its id cannot be reused.
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> str:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def wait_for_page(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Poll until GET ``url`` answers 200 with a page; returns the time it did."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                if r.status == 200 and b"<html" in r.read().lower():
                    return time.perf_counter()
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no page at {url} after {timeout:.0f} s")


def _stop_promptly_on_signals() -> None:
    """Take SIGTERM/SIGINT away from every thread but one that waits for them.

    Must run before any other thread starts (threads inherit the blocked mask). The waiting
    thread interrupts the main thread as Ctrl-C would, wherever it is (Bokeh then stops its
    server), and ends the process itself should that take longer than :data:`GRACE_S`.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_on_stop_signal, daemon=True, name="fkd-stop-signal").start()


def _on_stop_signal() -> None:
    signum = signal.sigwait(STOP_SIGNALS)
    _thread.interrupt_main(signal.SIGINT)  # a KeyboardInterrupt, on which Bokeh stops cleanly
    time.sleep(GRACE_S)
    print(f"fkd dashboard: still busy {GRACE_S:.0f} s after {signal.Signals(signum).name}; "
          "exiting now", file=sys.stderr, flush=True)
    _flush()
    os._exit(0)


def _exit_with_parent(parent: int) -> bool:
    """Ask Linux for SIGTERM when the parent dies; False if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    return os.getppid() == parent


def _open_when_up(url: str, address: str, port: int) -> None:
    """Open ``url`` in a browser once the port listens, with the stop signals unblocked for it."""
    target = (address if address not in ("", "0.0.0.0", "::") else "127.0.0.1", port)

    def work() -> None:
        while True:
            with socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET) as s:
                if s.connect_ex(target) == 0:
                    break
            time.sleep(0.2)
        import webbrowser

        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # the browser inherits it
        try:
            webbrowser.open(url)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    threading.Thread(target=work, daemon=True, name="fkd-show").start()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    """Serve the dashboard: ``python app/serve.py [--data PATH] [--models DIR] [--port N]``.

    Does not return once the server has started: the process exits when the server stops.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="fkd serve", description=main.__doc__.split("\n")[0])
    parser.add_argument("--data", help="default: $FKD_DATA, else the demo set")
    parser.add_argument("--models", help="default: $FKD_MODELS, else models/")
    parser.add_argument("--corrections", help="label corrections log (default: the data's "
                        "log in the per-user fkd folder)")
    parser.add_argument("--photos", help="a folder of photos the Photos tab offers by name")
    parser.add_argument("--port", type=int, default=5006)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--show", action="store_true", help="open the page in a browser")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="HOST:PORT",
                        help="a browser origin allowed to connect (for a non-local --address)")
    args = parser.parse_args(argv)
    parent = os.environ.pop(PARENT_ENV, None)
    if parent and not _exit_with_parent(int(parent)):
        return 0
    _stop_promptly_on_signals()
    host = "localhost" if args.address in LOOPBACK else args.address
    url = f"http://{host}:{args.port}/app"
    print(f"fkd dashboard: {url}  (Ctrl-C stops it)", flush=True)
    if args.show:
        _open_when_up(url, args.address, args.port)
    from panel.command import main as panel_main

    from fkd_core import settings

    data, models = settings.data_path(args.data), settings.models_dir(args.models)
    sys.argv = ["panel", *panel_args(data, models, args.port, args.address,
                                     allow_origin=args.allow_origin,
                                     corrections=args.corrections, photos=args.photos)]
    code = 0
    try:
        panel_main()  # returns once Bokeh has stopped the server
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except KeyboardInterrupt:  # Ctrl-C before the server's loop started
        pass
    # Skip the interpreter's teardown (seconds once TensorFlow is loaded), not the atexit hooks.
    atexit._run_exitfuncs()
    _flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
