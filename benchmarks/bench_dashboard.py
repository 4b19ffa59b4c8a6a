"""Dashboard latency and memory, server-side, on a Kaggle-size data set with several runs.

Usage: python benchmarks/bench_dashboard.py [--train 7049] [--test 1783] [--runs 5]
                                            [--work benchmarks/out/dashboard] [--no-browser]

  page switch      FaceGrid.show_page for 24 faces, plus serialising the resulting Bokeh
                   PATCH-DOC messages exactly as the server does before sending them
  sort change      re-ordering the subset (worst first ↔ by one keypoint) and drawing page 1
  heatmap refresh  Leaderboard.update_heatmap (plain ↔ flip-TTA), serialisation included
  cold start       `panel serve app/` started → first GET of the page answers 200 with HTML
                   (predictions already cached in the run folders, as after any first use)
  server RSS       the server process after a browser opened the grid and the detail panel
                   (Chromium, if present; otherwise two GETs), then after it also ran a model
                   itself (a run whose cached predictions were deleted: TensorFlow loaded)

Data and runs are written under --work once and reused; runs are real `fkd train` runs
(simple CNN, 1 epoch of --steps steps: their accuracy does not matter here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app/ is not an installed package

TARGETS = {"page switch": 150.0, "heatmap refresh": 200.0, "cold start": 15_000.0,
           "server RSS": 1536.0}


def prepare(work: Path, n_train: int, n_test: int, n_runs: int, steps: int) -> tuple[Path, Path]:
    from fkd_core import synthetic

    data, models = work / f"data-{n_train}-{n_test}", work / "models"
    if not (data / "training.csv").is_file():
        print(f"writing {n_train} + {n_test} demo faces to {data} …", flush=True)
        synthetic.write_demo(data, n_train=n_train, n_test=n_test)
    for i in range(n_runs):
        run_id = f"bench-{n_train}-{i}"
        if (models / run_id).is_dir():
            continue
        print(f"training {run_id} …", flush=True)
        subprocess.run(
            [sys.executable, "-m", "fkd_core.cli", "train", "--data", str(data), "--arch",
             "simple", "--head", "regression", "--epochs", "1", "--steps-per-epoch",
             str(steps), "--seed", str(i), "--models", str(models), "--run-id", run_id],
            check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    return data, models


class PatchTimer:
    """Collects a document's change events and serialises them as the Bokeh server would."""

    def __init__(self, doc):
        from bokeh.protocol import Protocol

        self.protocol = Protocol()
        self.events = []
        doc.on_change(self.events.append)

    def flush(self) -> int:
        size = 0
        for event in self.events:
            msg = self.protocol.create("PATCH-DOC", [event])
            size += len(msg.content_json) + sum(len(b.to_bytes()) for b in msg.buffers)
        self.events.clear()
        return size


def timed(fn, patches: PatchTimer, repeat: int) -> tuple[float, float, int]:
    """(median ms, max ms, bytes per call) of fn() followed by serialising its changes."""
    times, size = [], 0
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        size = patches.flush()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), max(times), size


def in_process(data: Path, models: Path, repeat: int) -> dict:
    import panel as pn
    from bokeh.document import Document

    from app.dashboard import Dashboard
    from app.state import Settings, Store

    t0 = time.perf_counter()
    store = Store(Settings(str(data), str(models)))
    load_s = time.perf_counter() - t0
    runs = store.ok_runs()
    t0 = time.perf_counter()
    for r in runs:
        store.predictions(r.id)
    pred_s = time.perf_counter() - t0
    dash = Dashboard(store)
    doc = Document()
    doc.add_root(pn.panel(dash).get_root(doc))
    patches = PatchTimer(doc)
    grid, board = dash.grid, dash.leaderboard
    grid.param.update(subset="all", page_size=24)
    patches.flush()
    pages = grid.param.page.bounds[1]

    def page(i):
        grid.page = 1 + (37 * (i + 1)) % pages

    def sort(i):
        grid.sort = "one keypoint's error" if i % 2 == 0 else "worst first"

    def heatmap(i):
        board.metric = "flip-TTA" if i % 2 == 0 else "plain"

    out = {"data load": (1000 * load_s, None, None),
           f"predictions of {len(runs)} runs (disk cache or model)": (1000 * pred_s, None, None),
           "page switch": timed(page, patches, repeat),
           "sort change": timed(sort, patches, max(4, repeat // 4)),
           "heatmap refresh": timed(heatmap, patches, repeat)}
    grid.compare = runs[1].id if len(runs) > 1 else grid.compare
    patches.flush()
    out["page switch, two runs"] = timed(page, patches, repeat)
    return out, runs[0].id


def rss_mb(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def browse(url: str, use_browser: bool, repeat: int = 10) -> tuple[str, dict]:
    """Open the page, the grid and a face's detail, as a user would; in a browser, also time
    page switches end to end (click → the new faces' captions are in the page)."""
    import urllib.request

    if use_browser:
        try:
            from playwright.sync_api import sync_playwright

            from app import screenshots as ui

            if Path(ui.CHROMIUM).exists():
                with sync_playwright() as p:
                    browser = ui.launch(p)
                    page, _ = ui.open_page(browser, url)
                    ui.goto_tab(page, "Faces")
                    ui.wait_for_faces(page, timeout=600_000)
                    ui.choose(page, "fkd-subset", "all")
                    page.wait_for_timeout(1000)
                    times = []
                    for _ in range(repeat):
                        before = ui.captions(page)[0]
                        t0 = time.perf_counter()
                        page.locator(".fkd-next button").click()
                        page.wait_for_function(
                            "(old) => !document.body.innerText.includes(old)", arg=before,
                            polling=10)
                        times.append(1000 * (time.perf_counter() - t0))
                    ui.click_face(page, 0)
                    page.locator("table.fkd-keypoints").wait_for()
                    browser.close()
                return "browser", {"browser: click next → new faces shown (end to end)": (
                    statistics.median(times), max(times), None)}
        except ImportError:
            pass
    for _ in range(2):
        urllib.request.urlopen(url, timeout=600).read()
    time.sleep(5)
    return "GETs", {}


def served(data: Path, models: Path, best_run: str, use_browser: bool, work: Path) -> dict:
    from app.serve import Server

    out = {}
    fresh = tempfile.mkdtemp(prefix="fresh-cache-", dir=work)
    srv = Server(data, models, timeout=300, env={"FKD_CACHE_DIR": fresh})
    with srv:
        out["cold start, first ever (CSV parsed)"] = (1000 * srv.started_in, None, None)
    shutil.rmtree(fresh, ignore_errors=True)
    srv = Server(data, models, timeout=300)
    with srv as url:
        out["cold start (restart: parsed data and predictions cached)"] = (
            1000 * srv.started_in, None, None)
        how, timings = browse(url, use_browser)
        out[f"server RSS ({how}, cached predictions)"] = (rss_mb(srv.proc.pid), None, None)
        out.update(timings)
    for f in (models / best_run).glob("predictions-*.npz"):
        f.unlink()
    srv = Server(data, models, timeout=300)
    with srv as url:
        browse(url, use_browser, repeat=1)
        out["server RSS (after running a model: TensorFlow loaded)"] = (
            rss_mb(srv.proc.pid), None, None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", type=int, default=7049)
    ap.add_argument("--test", type=int, default=1783)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="training steps per run")
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "dashboard")
    ap.add_argument("--no-browser", action="store_true", help="measure RSS after GETs only")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("FKD_CACHE_DIR", str(args.work / "cache"))

    data, models = prepare(args.work, args.train, args.test, args.runs, args.steps)
    results, best_run = in_process(data, models, args.repeat)
    results.update(served(data, models, best_run, not args.no_browser, args.work))

    print(f"\n{args.train} training + {args.test} test faces, {args.runs} runs, "
          f"{os.cpu_count()} CPUs\n")
    print(f"{'measure':<58} {'median':>9} {'max':>9} {'target':>9}  ok")
    for name, (median, worst, size) in results.items():
        unit = "MB" if "RSS" in name else "ms"
        target = next((v for k, v in TARGETS.items() if name.startswith(k)), None)
        value = worst if worst is not None else median
        ok = "" if target is None else ("yes" if value <= target else "NO")
        extra = f"  ({size / 1024:.0f} KiB sent)" if size else ""
        print(f"{name:<58} {median:>7.0f}{unit} "
              f"{'' if worst is None else f'{worst:.0f}{unit}':>9} "
              f"{'' if target is None else f'{target:.0f}{unit}':>9}  {ok}{extra}")


if __name__ == "__main__":
    main()
