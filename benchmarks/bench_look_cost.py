"""What it costs the machine to *watch* a page turn: the load benchmark's observer effect.

Usage: python benchmarks/bench_look_cost.py [--turns 8] [--rounds 3] [--data DIR --models DIR]

One headless Chromium session on the Faces tab turns pages, each turn in a window of
--window seconds (1.5), in four ways, interleaved round by round:

  idle      nothing (the machine's baseline over a window)
  mouse     a person's click: mouse events at the "next" button, nothing else — what a
            page turn costs the machine
  locators  as the load benchmark did before it looked from inside the page: Playwright's
            locator.click(), then locators wait for the result (the header's page number,
            then the old first caption gone)
  in-page   as bench_load.py does now: the mouse click, then its in-page wait (PAGE_JS,
            polled every POLL_MS)

Reported per way: the machine's busy CPU time per window (all processes, /proc/stat), minus
the idle baseline, and its ratio to the mouse click alone, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_load as bl  # noqa: E402


def busy_s() -> float:
    """Seconds of CPU the whole machine has spent busy (not idle, not waiting for IO)."""
    import os

    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:]]
    return (sum(t) - t[3] - t[4]) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, turns: int, rounds: int, window: float) -> dict[str, list[float]]:
    from playwright.async_api import async_playwright

    from app import screenshots as ui

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=ui.CHROMIUM, headless=True,
                                          args=ui.BROWSER_ARGS + bl.BROWSER_EXTRA)
        await bl.BrowserSession(browser, url, bl.Tally(), "warm-up", (300, 300)).run()
        ctx = await browser.new_context(viewport=ui.VIEWPORT)
        await ctx.add_init_script(bl.PAGE_JS)
        page = await ctx.new_page()
        await page.goto(url)
        await page.locator(".bk-tab", has_text="Faces").first.click()
        await bl.until(page, bl.GRID_SHOWN_JS)
        await asyncio.sleep(3.0)  # the Augment prefetch arrives meanwhile
        pager = (".fkd-next button", ".fkd-prev button")
        boxes = [await page.locator(css).first.bounding_box() for css in pager]
        centres = [(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2) for b in boxes]
        turns_made = [0]

        def way_back() -> int:
            """0 (next) ten times, then 1 (previous) ten times, …: the turns stay inside the
            pages."""
            turns_made[0] += 1
            return (turns_made[0] - 1) // 10 % 2

        async def idle():
            pass

        async def mouse():
            await page.mouse.click(*centres[way_back()])

        async def locators():
            current = (await bl.page_number(page))[0]
            before = (await ui.caption_locator(page).all_inner_texts())[0]
            await page.locator(pager[way_back()]).first.click()
            moved = re.compile(rf"page (?!{current} of)\d+ of")
            await page.locator(".fkd-grid-header", has_text=moved).first.wait_for()
            await page.get_by_text(before, exact=True).first.wait_for(state="hidden")

        async def in_page():
            current = (await bl.page_number(page))[0]
            before = (await bl.captions(page))[0]
            await page.mouse.click(*centres[way_back()])
            await bl.until(page, bl.TURNED_JS, [current, before])

        ways = {"idle": idle, "mouse": mouse, "locators": locators, "in-page": in_page}
        out: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(rounds):
            for name, fn in ways.items():
                used = 0.0
                for _ in range(turns):
                    b0, t0 = busy_s(), time.perf_counter()
                    await fn()
                    await asyncio.sleep(max(0.0, window - (time.perf_counter() - t0)))
                    used += busy_s() - b0
                out[name].append(1000 * used / turns)
        await browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=8, help="page turns per way and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=float, default=1.5, help="seconds per turn")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--models", type=Path)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "load")
    args = ap.parse_args()
    from app.serve import Server

    if args.data is None or args.models is None:
        data, models = bl.prepare(args.work, 7049, 1783)
        data, models = args.data or data, args.models or models
    else:
        data, models = args.data, args.models
    server = Server(data, models, log=args.work / "server-look-cost.log", timeout=300)
    url = server.start() + "app"
    try:
        ms = asyncio.run(measure(url, args.turns, args.rounds, args.window))
    finally:
        server.stop()
    idle = sum(ms["idle"]) / len(ms["idle"])
    click = sum(ms["mouse"]) / len(ms["mouse"]) - idle
    print(f"\n{args.rounds} rounds × {args.turns} turns, {args.window} s window each; machine: "
          f"{bl.machine()['cpu']}\n")
    print("| way | busy CPU per turn, by round (ms) | mean minus idle | ÷ mouse |")
    print("| --- | --- | --- | --- |")
    for name, values in ms.items():
        mean = sum(values) / len(values) - idle
        rounds = " / ".join(f"{v:.0f}" for v in values)
        ratio = "–" if name == "idle" else f"{mean / click:.2f}"
        print(f"| {name} | {rounds} | {mean:.0f} ms | {ratio} |")


if __name__ == "__main__":
    main()
