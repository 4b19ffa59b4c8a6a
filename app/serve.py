"""Starting the dashboard: the ``panel serve`` command line, and a server process for scripts.

``fkd serve`` runs :func:`panel_command`'s command, so the CLI, the browser tests, the
screenshot script and the benchmark all serve the page exactly as ``panel serve app/`` does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def panel_command(data: str | os.PathLike | None = None, models: str | os.PathLike = "models",
                  port: int = 5006, address: str = "127.0.0.1", show: bool = False,
                  allow_origin: list[str] | None = None) -> list[str]:
    """The ``python -m panel serve app/ ... --args ...`` command (localhost unless told)."""
    cmd = [sys.executable, "-m", "panel", "serve", str(APP_DIR), "--port", str(port),
           "--address", address]
    origins = list(allow_origin or [])
    if address not in LOOPBACK and not origins:
        origins = [f"{socket.gethostname()}:{port}", f"{address}:{port}"]
    for origin in origins:
        cmd += ["--allow-websocket-origin", origin]
    if show:
        cmd.append("--show")
    cmd += ["--args", "--models", str(models)]
    if data is not None:
        cmd += ["--data", str(data)]
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A dashboard server subprocess on a free localhost port; ``with Server(...) as url``."""

    def __init__(self, data=None, models="models", port: int | None = None, env=None,
                 log: str | os.PathLike | None = None, timeout: float = 120.0):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cmd = panel_command(data, models, self.port)
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        self.log = Path(log) if log else None
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.started_in = float("nan")

    def start(self) -> str:
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                     env=self.env)
        self.started_in = wait_for_page(self.url, self.proc, self.timeout) - t0
        return self.url

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> str:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


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


def main(argv: list[str] | None = None) -> int:
    """Serve the dashboard: ``python app/serve.py [--data PATH] [--models DIR] [--port N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m app.serve", description=main.__doc__)
    parser.add_argument("--data")
    parser.add_argument("--models", default="models")
    parser.add_argument("--port", type=int, default=5006)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--show", action="store_true", help="open the page in a browser")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="HOST:PORT",
                        help="a browser origin allowed to connect (for a non-local --address)")
    args = parser.parse_args(argv)
    host = "localhost" if args.address in LOOPBACK else args.address
    print(f"fkd dashboard: http://{host}:{args.port}/app  (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(panel_command(args.data, args.models, args.port, args.address,
                                             args.show, args.allow_origin))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
