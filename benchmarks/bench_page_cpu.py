"""What one page open costs the machine: CPU seconds per fresh Chromium context, for the fkd
dashboard and two yardsticks measured in the same run.

Usage: python benchmarks/bench_page_cpu.py [--opens 8] [--data DIR --models DIR]
                                          [--other CHECKOUT]

Mode a of ``bench_load.py`` opens N pages at once in one Chromium with one context each, on the
same two cores as the server; its open times are bounded below by N × (CPU per open) / cores.
This measures that CPU per open — the whole machine's busy time (``/proc/stat``) over
``--opens`` sequential opens, each in a new context, the server's share read from its
process — for:

  static   an HTML page with one element (Python's http.server): Chromium's own cost of a
           context, a renderer and a page;
  panel    a Panel page with two tabs and one HTML pane (``panel serve``): Bokeh's and Panel's
           scripts and a document, nothing of fkd;
  fkd      the dashboard (``app.serve.Server``) on the load benchmark's data and runs;
  other    with --other: the dashboard of another checkout (a ``git worktree`` of an older
           commit, say) on the same data and runs, to compare two versions in one run.

An open is done when a ``.bk-tab`` (static: the element) is visible, plus 0.3 s. Run it with
nothing else on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.serve import Server, free_port, wait_for_page  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PANEL_APP = """\
import panel as pn
pn.extension(notifications=False)
pn.Tabs(("Leaderboard", pn.pane.HTML("<b>runs</b>")), ("Faces", pn.Column())).servable()
"""


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float:
    """CPU seconds of a process and its reaped children."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, selector: str, opens: int, server_pid: int | None) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True)

        async def one() -> None:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(url)
            await page.locator(selector).first.wait_for(timeout=120_000)
            await asyncio.sleep(0.3)
            await context.close()

        await one()  # warm-up: server caches, the browser process itself
        machine0, t0 = busy_seconds(), time.perf_counter()
        server0 = process_seconds(server_pid) if server_pid else 0.0
        for _ in range(opens):
            await one()
        machine = (busy_seconds() - machine0) / opens
        server = (process_seconds(server_pid) - server0) / opens if server_pid else 0.0
        wall = (time.perf_counter() - t0) / opens
        await browser.close()
    return {"machine_s": machine, "server_s": server, "wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opens", type=int, default=8)
    ap.add_argument("--data", default=str(ROOT / "benchmarks/out/load/data-7049-1783"))
    ap.add_argument("--models", default=str(ROOT / "benchmarks/out/load/models"))
    ap.add_argument("--other", type=Path, help="another checkout whose dashboard to measure too")
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="fkd-page-cpu-") as tmp:
        (Path(tmp) / "static.html").write_text('<html><body><div class="bk-tab">hi</div>'
                                               "</body></html>")
        (Path(tmp) / "app.py").write_text(PANEL_APP)
        for name, cmd, path in (
            ("static", ["-m", "http.server", "{port}", "-d", tmp, "--bind", "127.0.0.1"],
             "static.html"),
            ("panel", ["-m", "panel", "serve", str(Path(tmp) / "app.py"), "--port", "{port}",
                       "--address", "127.0.0.1"], "app"),
        ):
            port = free_port()
            proc = subprocess.Popen([sys.executable, *(a.format(port=port) for a in cmd)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{port}/{path}"
                wait_for_page(url, proc, 60)
                results[name] = asyncio.run(measure(url, ".bk-tab", args.opens, proc.pid))
            finally:
                proc.terminate()
                proc.wait()
    for name, checkout in (("fkd", ROOT), ("other", args.other)):
        if checkout is None:
            continue
        server = Server(args.data, args.models, timeout=300)
        # the same server, started from that checkout's app/serve.py (so its app/ is served)
        server.cmd = [sys.executable, str(Path(checkout).resolve() / "app" / "serve.py"),
                      *server.cmd[2:]]
        with server as url:
            results[name] = asyncio.run(measure(url, ".bk-tab", args.opens, server.proc.pid))
    base = results["static"]["machine_s"]
    print(f"{'page':8s} {'machine CPU s/open':>19s} {'of it server':>13s} {'wall s/open':>12s} "
          f"{'vs static':>10s}")
    for name, r in results.items():
        print(f"{name:8s} {r['machine_s']:19.2f} {r['server_s']:13.2f} {r['wall_s']:12.2f} "
              f"{r['machine_s'] / base:9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
