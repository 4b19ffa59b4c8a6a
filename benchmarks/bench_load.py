"""The dashboard under load: N concurrent sessions on one server, measured per user action.

Usage: python benchmarks/bench_load.py [--sessions 1 5 20 40] [--mode a b]
                                       [--data DIR --models DIR] [--out benchmarks/out/load.json]
                                       [--max-seconds 5400] [--run-seconds 900]

Every (mode, N) gets a fresh ``panel serve`` on a free 127.0.0.1 port (``app.serve.Server``),
warmed up by one browser session doing the whole sequence once (reported as "cold"), then:

  (a) N Chromium sessions (one headless browser, one context each, driven concurrently with
      Playwright's async API) each do open → Faces → 10× next → detail → Augment, looking
      at each result for --think seconds (1 s; not counted in any action's time) before the
      next action, as a person would.
  (b) one measured Chromium session does the same at the same pace (--repeat times, a new
      session each time) while N−1 other sessions are driven at the protocol level: real
      server sessions (the server builds the page for each, as for a browser) whose clients,
      in a second process, speak Bokeh's websocket protocol, click the same buttons, tap
      faces and switch tabs, one action every --interval seconds each. This measures the
      server, not 40 browsers fighting for 2 cores.

Actions and what "done" means (the page is read through Playwright's shadow-piercing locators):
  open     goto → the tab bar is shown        Faces    tab click → "page 1 of" and faces
  next     click → the page counter changed and the old first caption is gone
  detail   click on the first face → its table, titled with that face's training.csv row
  Augment  "open this face in augmentation QA" → the samples of that row

Per action p50/p95/max (nearest rank: the p95 of ten samples is their max), over every session
(mode a) or over the measured session's repeats (mode b; the protocol clients' own times are
listed too). Errors: server-log lines with Traceback/ERROR/RuntimeError; console messages of
type error and uncaught page errors (for protocol sessions: patches they could not apply,
which BokehJS reports as uncaught errors). Stuck: an action that took longer than
--stuck-seconds (60), or never completed (a session gives up after --wait-seconds, 180, and
stops there). Cross-session: a session read a page counter, detail
row or augmentation row other than the one its own clicks asked for. RSS: the server process
and its children, peak (sampled every 0.5 s) and at the end of the run.

Data and runs: --data/--models, or a Kaggle-size demo set and three cheap runs made once
under --work.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app/ is not an installed package

ACTIONS = ("open", "Faces", "next", "detail", "Augment")
NEXTS = 10
PAGE = re.compile(r"page (\d+) of (\d+)")
ROW = re.compile(r"training\.csv row (\d+)")
CAPTION_ROW = re.compile(r"^row (\d+) ·")
LOG_ERROR = re.compile(r"Traceback|ERROR|RuntimeError")
RUNS = (("simple", 1.0), ("resnet", 0.25), ("alexnet", 0.25))
BROWSER_EXTRA = ["--disable-renderer-backgrounding", "--disable-background-timer-throttling",
                 "--disable-backgrounding-occluded-windows"]
#: Text of an element including its open shadow roots (Bokeh/Panel render into them).
TEXT_JS = """e => { const skip = new Set(['STYLE', 'SCRIPT']);
  const t = n => { let s = n.shadowRoot ? t(n.shadowRoot) : '';
    for (const c of n.childNodes) s += c.nodeType === 3 ? c.textContent
      : (c.nodeType === 1 && !skip.has(c.tagName) ? t(c) : '');
    return s; };
  return t(e); }"""

#: Milliseconds between two looks at the page while an action's result is awaited (in the
#: page, see PAGE_JS): the measured times are up to this much late.
POLL_MS = 20
#: Installed in every measured page: how a session looks at its page while it waits. Each
#: look reads the few elements the action changes (found once, through Bokeh's shadow roots,
#: then kept while they stay in the page) inside the page itself. Playwright's locators
#: instead search the whole page's text from the driver, one round trip per look: with 20
#: browsers on two cores that cost a page turn about a third more of the machine than the
#: page turn itself (benchmarks/bench_look_cost.py) and slowed every session it measured.
PAGE_JS = """window.__fkd = (() => {
  const allIn = (root, cls) => {
    const out = [];
    const walk = n => { for (const c of n.children || []) {
      if (c.classList && c.classList.contains(cls)) out.push(c);
      walk(c); if (c.shadowRoot) walk(c.shadowRoot); } };
    walk(root); if (root.shadowRoot) walk(root.shadowRoot);
    return out;
  };
  const kept = new Map();
  const shown = cls => {
    let el = kept.get(cls);
    if (!el || !el.isConnected || !el.checkVisibility()) {
      el = allIn(document, cls).find(e => e.checkVisibility()) || null;
      if (el) kept.set(cls, el);
    }
    return el;
  };
  const text = """ + TEXT_JS + """;
  const squash = s => s.split(/\\s+/).join(' ').trim();
  return {
    text(cls) { const el = shown(cls); return el ? squash(text(el)) : null; },
    shown(cls) { return shown(cls) !== null; },
    tab(name) { return allIn(document, 'bk-tab').some(
      e => e.checkVisibility() && squash(e.textContent) === name); },
    captions(figure) {
      const fig = shown(figure), out = [];
      if (!fig) return out;
      for (const layer of allIn(fig, 'bk-layer')) for (const c of layer.children)
        if (!c.children.length && c.textContent.trim()) out.push(squash(c.textContent));
      return out;
    },
  };
})();"""
#: Done conditions, evaluated in the page every POLL_MS.
GRID_SHOWN_JS = """() => { const t = __fkd.text('fkd-grid-header');
  return !!t && /page \\d+ of/.test(t) && __fkd.captions('fkd-grid-faces').length > 0; }"""
TURNED_JS = """([from, before]) => { const t = __fkd.text('fkd-grid-header');
  const m = t && /page (\\d+) of/.exec(t);
  if (!m || +m[1] === from) return false;
  const caps = __fkd.captions('fkd-grid-faces');
  return caps.length > 0 && !caps.includes(before); }"""
DETAIL_JS = """() => { const t = __fkd.text('fkd-detail-title');
  return !!t && /training\\.csv row \\d+/.test(t) && __fkd.shown('fkd-keypoints') && t; }"""
AUGMENT_JS = """row => { const t = __fkd.text('fkd-aug-header');
  return !!t && t.includes(`training.csv row ${row} ·`) && __fkd.shown('fkd-samples'); }"""



class Stuck(Exception):
    """An action's result never appeared."""


class Stop(Exception):
    """The run is over: a protocol session stops between two actions."""


class Tally:
    """What one (mode, N) run observed."""

    def __init__(self):
        self.times: dict[str, list[float]] = defaultdict(list)
        self.stuck: list[str] = []
        self.cross: list[str] = []
        self.console: list[str] = []
        self.failures: list[str] = []
        self.sessions_done = 0
        self.timeline: list[tuple[float, str, str, float]] = []  # (start, session, action, ms)
        self.evidence: Path | None = None  # where stuck browser pages are photographed

    def record(self, label: str, name: str, took: float, stuck_s: float) -> None:
        """One finished action's time; slower than ``stuck_s`` also counts as stuck."""
        self.times[name].append(1000 * took)
        self.timeline.append((round(time.time() - took, 3), label, name, round(1000 * took, 1)))
        if took > stuck_s:
            self.stuck.append(f"{label}: {name} took {took:.1f} s")

    def summary(self) -> dict:
        return {"actions": {a: stats(self.times.get(a, [])) for a in ACTIONS},
                "stuck": self.stuck, "cross_session": self.cross, "console_errors": self.console,
                "driver_failures": self.failures, "sessions_completed": self.sessions_done,
                "timeline": sorted(self.timeline)}


def stats(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    s = sorted(ms)

    def rank(q):
        return s[max(0, math.ceil(q * len(s)) - 1)]

    return {"n": len(s), "p50": rank(0.5), "p95": rank(0.95), "max": s[-1]}


# -- data -------------------------------------------------------------------------------------

def prepare(work: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    """A Kaggle-size demo set and three cheap real runs (1 epoch of 5 steps) under ``work``."""
    data, models = work / f"data-{n_train}-{n_test}", work / "models"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cli = [sys.executable, "-m", "fkd_core.cli"]
    if not (data / "training.csv").is_file():
        print(f"writing {n_train} + {n_test} demo faces to {data} …", flush=True)
        subprocess.run([*cli, "data", "demo", str(data), "--train", str(n_train), "--test",
                        str(n_test)], check=True, env=env)
    for arch, width in RUNS:
        run_id = f"load-{arch}"
        if (models / run_id).is_dir():
            continue
        print(f"training {run_id} …", flush=True)
        subprocess.run([*cli, "train", "--data", str(data), "--arch", arch, "--width",
                        str(width), "--epochs", "1", "--steps-per-epoch", "5", "--models",
                        str(models), "--run-id", run_id], check=True, capture_output=True,
                       env=env)
    return data, models


# -- server ---------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and all its descendants, MiB (0 once it is gone)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total / 1024


async def sample_rss(pid: int, peak: list[float]) -> None:
    while True:
        peak[0] = max(peak[0], rss_mb(pid))
        await asyncio.sleep(0.5)


def log_errors(log: Path, start: int = 0, end: int | None = None) -> list[str]:
    """The server log's errors (from byte ``start`` to ``end``): each traceback as its last
    frame and exception line, and other lines naming ERROR or RuntimeError."""
    raw = log.read_bytes()[start:end] if log.is_file() else b""
    lines = raw.decode(errors="replace").splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            frames = [x.strip() for x in lines[i + 1:j] if x.strip().startswith("File ")]
            exc = lines[j] if j < len(lines) else "?"
            ours = [f for f in frames if "/site-packages/" not in f]
            where = " … ".join(dict.fromkeys(ours[-1:] + frames[-1:]))
            out.append(f"Traceback … {where} → {exc}")
            i = j + 1
            continue
        if LOG_ERROR.search(line):
            out.append(line)
        i += 1
    return out


# -- one browser session ----------------------------------------------------------------------

async def page_number(page) -> tuple[int, int] | None:
    m = PAGE.search(await page.evaluate("__fkd.text('fkd-grid-header')") or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


async def captions(page) -> list[str]:
    return await page.evaluate("__fkd.captions('fkd-grid-faces')")


async def until(page, predicate: str, arg=None):
    """Wait for ``predicate`` (PAGE_JS's functions) to hold in the page; its value."""
    handle = await page.wait_for_function(predicate, arg=arg, polling=POLL_MS)
    return await handle.json_value()


async def click_face(page, index: int) -> None:
    """Click the middle of the grid's index-th face (app.faces' geometry, as app.screenshots)."""
    from app.faces import CAPTION as CAPTION_PX
    from app.faces import GAP, SCALE

    box = await page.locator(".fkd-grid-faces").first.bounding_box()
    per_row = round(box["width"] / (SCALE * (96 + GAP)))
    col, row = index % per_row, index // per_row
    x = (col * (96 + GAP) + GAP / 2 + 48) * SCALE
    y = (row * (96 + GAP + CAPTION_PX) + GAP / 2 + 48) * SCALE
    await page.mouse.click(box["x"] + x, box["y"] + y)


class BrowserSession:
    """One context (its own cookies, its own server session) doing the measured sequence."""

    #: Seconds a user looks at a result before the next action (set from --think).
    think = 1.0

    def __init__(self, browser, url: str, tally: Tally, label: str, limits: tuple[float, float]):
        self.browser, self.url, self.tally, self.label = browser, url, tally, label
        self.stuck_s, wait_s = limits
        self.timeout_ms = 1000 * wait_s
        self.page = None
        self.acted = False

    async def act(self, name: str, fn) -> object:
        if self.acted:
            await asyncio.sleep(self.think)  # not part of any action's time
        self.acted = True
        t0 = time.perf_counter()
        try:
            out = await asyncio.wait_for(fn(), self.timeout_ms / 1000 + 5)
        except Exception as exc:  # a Playwright timeout is a stuck view; anything else, too
            why = (str(exc).splitlines() or [""])[0][:160]
            self.tally.stuck.append(f"{self.label}: {name} never done, gave up after "
                                    f"{time.perf_counter() - t0:.1f} s ({type(exc).__name__}: "
                                    f"{why})")
            raise Stuck from exc
        self.tally.record(self.label, name, time.perf_counter() - t0, self.stuck_s)
        return out

    async def keep_evidence(self) -> None:
        """A screenshot and the visible text of a stuck page, beside the server logs."""
        if self.tally.evidence is None:
            return
        name = self.label.replace(" ", "-")
        try:
            self.tally.evidence.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(self.tally.evidence / f"{name}.png"),
                                       full_page=True, timeout=30_000)
            text = await self.page.locator("body").first.evaluate(TEXT_JS, timeout=30_000)
            (self.tally.evidence / f"{name}.txt").write_text(" ".join(text.split()))
            self.tally.stuck[-1] += f" [evidence: {self.tally.evidence / name}.png]"
        except Exception as exc:  # evidence is a bonus; the stuck view is already counted
            self.tally.stuck[-1] += f" [no screenshot: {type(exc).__name__}]"

    def cross(self, what: str) -> None:
        self.tally.cross.append(f"{self.label}: {what}")

    async def run(self) -> None:
        from app import screenshots as ui

        ctx = await self.browser.new_context(viewport=ui.VIEWPORT)
        ctx.set_default_timeout(self.timeout_ms)
        await ctx.add_init_script(PAGE_JS)
        page = self.page = await ctx.new_page()
        listening = [True]

        def console(msg):
            if listening[0] and msg.type == "error":
                where = (msg.location or {}).get("url", "")
                self.tally.console.append(f"{self.label}: {msg.text[:300]}"
                                          + (f" ({where[:160]})" if where else ""))

        def page_error(exc):
            if listening[0]:
                self.tally.console.append(f"{self.label}: uncaught: {str(exc)[:300]}")

        page.on("console", console)
        page.on("pageerror", page_error)
        try:
            await self.sequence()
            self.tally.sessions_done += 1
        except Stuck:
            await self.keep_evidence()
        finally:
            listening[0] = False
            await ctx.close()

    async def sequence(self) -> None:
        page = self.page

        async def open_():
            await page.goto(self.url)
            await until(page, "() => __fkd.tab('Leaderboard')")

        async def faces():
            await page.locator(".bk-tab", has_text="Faces").first.click()
            await until(page, GRID_SHOWN_JS)

        await self.act("open", open_)
        await self.act("Faces", faces)
        shown = await page_number(page)
        if shown is None or shown[0] != 1:
            self.cross(f"Faces tab shows page {shown} instead of 1")
        current, pages = shown or (1, 1)
        # A person's click: mouse events at the button (found once; the pager stays put).
        # Playwright's locator.click() first finds the button, scrolls to it and hit-tests it,
        # in the page, on every click: a fifth of a page turn's cost to the machine.
        box = await page.locator(".fkd-next button").first.bounding_box()
        at = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        for _ in range(NEXTS):
            want = min(current + 1, pages)
            if want == current:
                break  # the last page: "next" has nothing to show
            before = (await captions(page))[0]

            async def step(current=current, before=before):
                await page.mouse.click(*at)
                await until(page, TURNED_JS, [current, before])

            await self.act("next", step)
            shown = await page_number(page)
            if shown is None or shown[0] != want:
                self.cross(f"after 'next' from page {current} the counter shows "
                           f"{shown and shown[0]}, not {want}")
            current = shown[0] if shown else want
        first = (await captions(page))[0]
        m = CAPTION_ROW.match(first)
        row = int(m.group(1)) if m else None

        async def detail():
            await click_face(page, 0)
            return ROW.search(await until(page, DETAIL_JS))

        seen = await self.act("detail", detail)
        if row is not None and int(seen.group(1)) != row:
            self.cross(f"detail of the first face (row {row}) shows row {seen.group(1)}")
        row = int(seen.group(1))

        async def augment():
            """Done when that row's samples are shown: the tab, built before the click (the
            dashboard prefetches it), already shows another face while it waits."""
            await page.locator(".fkd-open-augment button").first.click()
            await until(page, AUGMENT_JS, row)

        try:
            await self.act("Augment", augment)
        except Stuck:
            shown = ROW.search(await page.evaluate("__fkd.text('fkd-aug-header')") or "")
            if shown is not None and int(shown.group(1)) != row:
                self.cross(f"Augment opened for row {row} shows row {shown.group(1)}")
            raise
        final = await page_number(page)
        if final is not None and final[0] != current:
            self.cross(f"at the end the grid's counter shows page {final[0]}, not {current}")


# -- protocol-level sessions (mode b), run in a second process --------------------------------

class ProtocolSession:
    """A server session driven over Bokeh's websocket protocol, as BokehJS would drive it: the
    document is pulled, the server's patches applied, and our changes and UI events (button
    clicks) sent as PATCH-DOC messages."""

    def __init__(self, url: str, label: str, tally: Tally, limits: tuple[float, float]):
        self.ws_url = url.replace("http://", "ws://").rstrip("/") + "/ws"
        self.label, self.tally = label, tally
        self.stuck_s, self.wait_s = limits
        self.doc = None
        self.socket = None
        self.outbox: list = []
        self.changed = asyncio.Event()
        self.reader: asyncio.Task | None = None
        self.closed = False
        self.found: dict = {}

    async def open(self) -> None:
        from bokeh.client.websocket import WebSocketClientConnectionWrapper
        from bokeh.document import Document
        from bokeh.events import DocumentReady
        from bokeh.protocol import Protocol
        from bokeh.protocol.receiver import Receiver
        from bokeh.util.token import generate_jwt_token, generate_session_id
        from tornado.websocket import websocket_connect

        self.protocol = Protocol()
        self.receiver = Receiver(self.protocol)
        session_id = generate_session_id()
        self.label += f" (session {session_id[:12]})"  # to find it in the server log
        token = generate_jwt_token(session_id)
        ws = await websocket_connect(self.ws_url, subprotocols=["bokeh", token],
                                     max_message_size=200 * 2**20)
        self.socket = WebSocketClientConnectionWrapper(ws)
        ack = await self.receive()
        if ack is None or ack.msgtype != "ACK":
            raise RuntimeError(f"no ACK from the server: {ack!r}")
        req = self.protocol.create("PULL-DOC-REQ")
        await req.send(self.socket)
        while True:
            reply = await self.receive()
            if reply is None:
                raise RuntimeError("connection closed before the document came")
            if reply.header.get("reqid") == req.header["msgid"]:
                break
        if reply.msgtype != "PULL-DOC-REPLY":
            raise RuntimeError(f"pulling the document: {reply.content}")
        self.doc = Document()
        reply.push_to_document(self.doc)
        self.doc.on_change(self.on_change)
        self.reader = asyncio.ensure_future(self.read())
        self.doc.callbacks.send_event(DocumentReady())
        await self.flush()

    async def receive(self):
        while True:
            fragment = await self.socket.read_message()
            if fragment is None:
                return None
            msg = await self.receiver.consume(fragment)
            if msg is not None:
                return msg

    async def read(self) -> None:
        while True:
            msg = await self.receive()
            if msg is None:
                if not self.closed:
                    self.tally.failures.append(f"{self.label}: the server closed the socket")
                return
            if msg.msgtype == "PATCH-DOC":
                try:
                    msg.apply_to_document(self.doc, self)
                except Exception as exc:  # what BokehJS reports as an uncaught page error
                    self.tally.console.append(f"{self.label}: applying a patch: {exc!r}"[:300])
                self.changed.set()
            elif msg.msgtype == "ERROR":
                self.tally.failures.append(f"{self.label}: server ERROR reply: {msg.content}")

    def on_change(self, event) -> None:
        if getattr(event, "setter", None) is not self:
            self.outbox.append(event)

    async def flush(self) -> None:
        events, self.outbox = self.outbox, []
        if events:
            await self.protocol.create("PATCH-DOC", events).send(self.socket)

    async def until(self, predicate):
        """Wait for the server's patches to make ``predicate()`` true (or raise Stuck)."""
        deadline = time.perf_counter() + self.wait_s
        while True:
            out = predicate()
            if out:
                return out
            left = deadline - time.perf_counter()
            if left <= 0:
                raise Stuck
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    def find(self, css: str, kind=None, within: str | None = None):
        """The model with CSS class ``css`` (inside the one with class ``within``, if given),
        remembered while it stays in the document."""
        key = (css, within)
        model = self.found.get(key)
        if model is not None and self.doc.get_model_by_id(model.id) is model:
            return model
        if within is None:
            models = self.doc.models
        else:
            outer = self.find(within)
            models = outer.references() if outer is not None else ()
        for model in models:
            classes = model.css_classes if "css_classes" in _props(type(model)) else ()
            if css in classes and (kind is None or isinstance(model, kind)):
                self.found[key] = model
                return model
        return None

    def text(self, css: str, within: str | None = None) -> str:
        import html

        model = self.find(css, within=within)
        return html.unescape(getattr(model, "text", "") or "") if model is not None else ""

    def page(self) -> tuple[int, int] | None:
        m = PAGE.search(self.text("fkd-grid-header"))
        return (int(m.group(1)), int(m.group(2))) if m else None

    def grid_parts(self):
        """(the tap target's selection, the captions' source) of the face grid."""
        from bokeh.models import HTMLLabelSet, Quad

        fig = self.find("fkd-grid-faces")
        if fig is None:
            return None, None
        quad = next((r for r in fig.renderers if isinstance(getattr(r, "glyph", None), Quad)),
                    None)
        labels = next((m for m in fig.center if isinstance(m, HTMLLabelSet)), None)
        return (quad.data_source.selected if quad else None,
                labels.source if labels else None)

    def first_caption(self) -> str:
        _, captions = self.grid_parts()
        text = captions.data.get("text", []) if captions is not None else []
        return str(text[0]) if len(text) else ""

    def click(self, css: str) -> None:
        from bokeh.events import ButtonClick
        from bokeh.models import Button

        button = self.find(css)
        if not isinstance(button, Button):
            button = next((m for m in button.select({"type": Button})), None) if button else None
        if button is None:
            raise Stuck(f"no button {css}")
        self.doc.callbacks.send_event(ButtonClick(button))

    async def act(self, name: str, fn):
        t0 = time.perf_counter()
        try:
            out = await asyncio.wait_for(fn(), self.wait_s + 5)
        except (Stuck, asyncio.TimeoutError) as exc:
            seen = {c: (self.text(c)[:120], self.find(c).id)
                    for c in ("fkd-grid-header", "fkd-grid-message")
                    if self.doc is not None and self.find(c) is not None}
            self.tally.stuck.append(f"{self.label}: {name} never done, gave up after "
                                    f"{time.perf_counter() - t0:.1f} s {exc} "
                                    f"(its document: {seen or 'no grid'})")
            raise Stuck from exc
        self.tally.record(self.label, name, time.perf_counter() - t0, self.stuck_s)
        return out

    async def cycle(self, first: bool, pause) -> None:
        """Faces → 10× next → detail → Augment, pausing between actions."""
        from bokeh.models import Tabs

        tabs = self.find("fkd-tabs", Tabs)
        names = [getattr(t, "title", "") for t in tabs.tabs]
        start = self.page()

        async def faces():
            tabs.active = names.index("Faces")
            await self.flush()
            return await self.until(lambda: self.first_caption() and self.page())

        shown = await (self.act("Faces", faces) if first else faces())
        if first and shown[0] != 1:
            self.tally.cross.append(f"{self.label}: Faces tab shows page {shown[0]}, not 1")
        if start is not None and not first and shown[0] != start[0]:
            self.tally.cross.append(f"{self.label}: page {shown[0]} shown, {start[0]} left")
        current, pages = shown
        for _ in range(NEXTS):
            await pause()
            want = current + 1 if current < pages else current

            before = self.first_caption()

            async def step(current=current, before=before):
                self.click("fkd-next")
                await self.flush()
                return await self.until(lambda: (p := self.page()) and p[0] != current
                                        and self.first_caption() != before and p)

            if want == current:  # the last page: go back to the first one instead
                page_input = self.find("fkd-page")
                page_input.value = 1
                await self.flush()
                current = (await self.until(lambda: (p := self.page()) and p[0] == 1 and p))[0]
                continue
            shown = await self.act("next", step)
            if shown[0] != want:
                self.tally.cross.append(f"{self.label}: 'next' from page {current} shows "
                                        f"page {shown[0]}, not {want}")
            current = shown[0]
        await pause()
        selected, _ = self.grid_parts()
        m = CAPTION_ROW.match(self.first_caption())
        row = int(m.group(1)) if m else None

        def detail_shown():
            m = ROW.search(self.text("fkd-detail-title", within="fkd-detail"))
            return m if m and (row is None or int(m.group(1)) == row) else None

        async def detail():
            await self.until(lambda: not selected.indices)  # the server clears each tap
            selected.indices = [0]
            await self.flush()
            return await self.until(detail_shown)

        try:
            seen = await self.act("detail", detail)
        except Stuck:
            other = ROW.search(self.text("fkd-detail-title", within="fkd-detail"))
            if other is None or row is None or int(other.group(1)) == row:
                raise
            self.tally.stuck.pop()  # not stuck: it shows another face
            self.tally.cross.append(f"{self.label}: detail of row {row} shows row "
                                    f"{other.group(1)}")
            seen = other
        row = int(seen.group(1))
        await pause()

        async def augment():
            self.click("fkd-open-augment")
            await self.flush()
            return await self.until(
                lambda: (m := ROW.search(self.text("fkd-aug-header"))) and int(m.group(1)) == row
                and m)

        try:
            await self.act("Augment", augment)
        except Stuck:
            other = ROW.search(self.text("fkd-aug-header"))
            if other is None or int(other.group(1)) == row:
                raise
            self.tally.stuck.pop()  # not stuck: it shows another face
            self.tally.cross.append(f"{self.label}: Augment opened for row {row} shows row "
                                    f"{other.group(1)}")

    async def close(self) -> None:
        self.closed = True
        if self.reader is not None:
            self.reader.cancel()
        if self.socket is not None:
            self.socket._socket.close()


@functools.cache
def _props(cls) -> set[str]:
    return set(cls.properties())


def protocol_clients(url: str, n: int, interval: float, limits: tuple[float, float],
                     deadline: float,
                     ready, stop, out: str) -> None:
    """Process entry point: n protocol sessions until ``stop`` is set; results to ``out``."""
    import logging

    import panel  # noqa: F401  registers Panel's Bokeh models, so patches can be applied

    import app.leaderboard  # noqa: F401  and the heatmap's (a ReactiveHTML's data model)

    logging.getLogger("bokeh").setLevel(logging.CRITICAL)
    tally = Tally()
    rounds = [0]

    async def one(i: int) -> None:
        s = ProtocolSession(url, f"protocol {i + 1}", tally, limits)
        rng = random.Random(i)

        async def pause():
            await asyncio.sleep(interval * rng.uniform(0.5, 1.5))
            if stop.is_set() or time.time() > deadline:
                raise Stop

        try:
            await asyncio.sleep(i * 0.2)  # arrivals spread over a few seconds
            await s.act("open", s.open)
            with ready.get_lock():
                ready.value += 1
            first = True
            while not stop.is_set() and time.time() < deadline:
                await s.cycle(first, pause)
                first = False
                rounds[0] += 1
            tally.sessions_done += 1
        except Stop:
            tally.sessions_done += 1
        except Stuck:
            pass
        except Exception as exc:
            tally.failures.append(f"protocol {i + 1}: {type(exc).__name__}: {exc}"[:300])
        finally:
            await s.close()

    async def main():
        await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(main())
    summary = tally.summary()
    summary["cycles"] = rounds[0]
    Path(out).write_text(json.dumps(summary))


# -- one (mode, N) run -----------------------------------------------------------------------

async def run_one(mode: str, n: int, args, data: Path, models: Path, deadline: float) -> dict:
    from playwright.async_api import async_playwright

    from app import screenshots as ui
    from app.serve import Server

    log = args.work / f"server-{mode}-{n}.log"
    server = Server(data, models, log=log, timeout=300)
    url = server.start() + "app"
    result = {"mode": mode, "sessions": n, "server_start_s": round(server.started_in, 2)}
    peak = [0.0]
    sampler = asyncio.ensure_future(sample_rss(server.proc.pid, peak))
    t_run = time.perf_counter()
    proc = None
    limits = (args.stuck_seconds, max(args.stuck_seconds, args.wait_seconds))
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=ui.CHROMIUM, headless=True,
                                              args=ui.BROWSER_ARGS + BROWSER_EXTRA)
            warm = Tally()
            await BrowserSession(browser, url, warm, "warm-up", (300, 300)).run()
            result["cold"] = warm.summary()
            tally = Tally()
            tally.evidence = args.work / f"stuck-{mode}-{n}"
            budget = max(10.0, min(args.run_seconds, deadline - time.time()))
            if mode == "a":
                sessions = [BrowserSession(browser, url, tally, f"browser {i + 1}",
                                           limits) for i in range(n)]
                done, pending = await asyncio.wait(
                    [asyncio.ensure_future(s.run()) for s in sessions], timeout=budget)
                for task in pending:
                    task.cancel()
                result["timed_out"] = bool(pending)
            else:
                ctx = mp.get_context("spawn")
                ready, stop = ctx.Value("i", 0), ctx.Event()
                out = args.work / f"protocol-{n}.json"
                out.unlink(missing_ok=True)
                if n > 1:
                    proc = ctx.Process(target=protocol_clients, daemon=True, args=(
                        url, n - 1, args.interval, limits,
                        time.time() + budget, ready, stop, str(out)))
                    proc.start()
                    t0 = time.perf_counter()
                    while ready.value < n - 1 and proc.is_alive() and \
                            time.perf_counter() - t0 < min(300.0, budget / 2):
                        await asyncio.sleep(0.5)
                    result["protocol_sessions_open"] = ready.value
                    result["protocol_open_wait_s"] = round(time.perf_counter() - t0, 1)
                    await asyncio.sleep(2 * args.interval)  # they are paging meanwhile
                left = budget - (time.perf_counter() - t_run)
                try:
                    for r in range(args.repeat):
                        await asyncio.wait_for(
                            BrowserSession(browser, url, tally, f"measured {r + 1}",
                                           limits).run(), max(1.0, left))
                        left = budget - (time.perf_counter() - t_run)
                    result["timed_out"] = False
                except asyncio.TimeoutError:
                    result["timed_out"] = True
                if proc is not None:
                    stop.set()
                    await asyncio.get_running_loop().run_in_executor(
                        None, proc.join, args.wait_seconds + 30)
                    if proc.is_alive():
                        proc.terminate()
                    result["protocol"] = (json.loads(out.read_text()) if out.is_file() else
                                          {"driver_failures": ["the protocol process wrote "
                                                               "no results"]})
            await browser.close()
        result.update(tally.summary())
    finally:
        if proc is not None and proc.is_alive():
            proc.terminate()
        await asyncio.sleep(1.0)
        result["rss_end_mb"] = round(rss_mb(server.proc.pid))
        sampler.cancel()
        result["rss_peak_mb"] = round(max(peak[0], result["rss_end_mb"]))
        result["wall_s"] = round(time.perf_counter() - t_run, 1)
        served = log.stat().st_size if log.is_file() else 0
        server.stop()
        result["server_errors"] = log_errors(log, 0, served)
        result["server_errors_at_shutdown"] = log_errors(log, served)
        result["server_log"] = str(log)
    return result


# -- report ----------------------------------------------------------------------------------

def fmt_ms(v) -> str:
    return "–" if v is None else (f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms")


def print_run(r: dict) -> None:
    print(f"\nmode {r['mode']}, N = {r['sessions']}: {r['wall_s']} s, server RSS peak "
          f"{r['rss_peak_mb']} MB, at the end {r['rss_end_mb']} MB"
          + (" — TIMED OUT" if r.get("timed_out") else ""))
    who = "all sessions" if r["mode"] == "a" else "the measured browser session"
    print(f"  {'action (' + who + ')':<44} {'n':>4} {'p50':>9} {'p95':>9} {'max':>9}")
    for a, s in r["actions"].items():
        print(f"  {a:<44} {s['n']:>4} {fmt_ms(s.get('p50')):>9} {fmt_ms(s.get('p95')):>9} "
              f"{fmt_ms(s.get('max')):>9}")
    if "protocol" in r:
        pr = r["protocol"]
        print(f"  protocol sessions ({r['sessions'] - 1}; {pr.get('cycles', 0)} cycles):")
        for a, s in pr.get("actions", {}).items():
            print(f"    {a:<42} {s['n']:>4} {fmt_ms(s.get('p50')):>9} "
                  f"{fmt_ms(s.get('p95')):>9} {fmt_ms(s.get('max')):>9}")
    proto = r.get("protocol", {})
    for name, items in (("server errors", r["server_errors"]),
                        ("server errors while it stopped (after SIGTERM)",
                         r.get("server_errors_at_shutdown", [])),
                        ("console errors", r["console_errors"]),
                        ("protocol sessions' patch errors (their console errors)",
                         proto.get("console_errors", [])),
                        ("stuck views", r["stuck"] + proto.get("stuck", [])),
                        ("cross-session effects", r["cross_session"] + proto.get(
                            "cross_session", [])),
                        ("driver failures", r["driver_failures"] + proto.get(
                            "driver_failures", []))):
        print(f"  {name}: {len(items)}")
        for line in items[:8]:
            print(f"    {line[:240]}")


def cell(st: dict) -> str:
    if not st.get("n"):
        return "–"
    return f"{fmt_ms(st['p50'])} / {fmt_ms(st['p95'])} / {fmt_ms(st['max'])}"


def counts(r: dict) -> dict:
    proto = r.get("protocol", {})
    return {"server": len(r.get("server_errors", [])),
            "console": len(r.get("console_errors", [])),
            "patch": len(proto.get("console_errors", [])),
            "stuck": len(r.get("stuck", [])) + len(proto.get("stuck", [])),
            "cross": len(r.get("cross_session", [])) + len(proto.get("cross_session", [])),
            # a session the harness could not drive: that run's load was not what it claims
            "driver": len(r.get("driver_failures", [])) + len(proto.get("driver_failures", []))}


def targets(runs: list[dict]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the issue's acceptance targets; None: not measured."""
    by = {(r["mode"], r["sessions"]): r for r in runs if "actions" in r}
    out = []
    for mode in "ab":
        for n in (20, 40):
            r = by.get((mode, n))
            c = counts(r) if r else None
            bad = None if c is None else sum(c.values())
            out.append((f"mode {mode}, N = {n}: no server/console errors, stuck views, "
                        "cross-session effects or sessions the harness failed to drive",
                        "not run" if c is None else ", ".join(f"{k} {v}" for k, v in c.items()),
                        None if c is None else bad == 0))
    r = by.get(("b", 20))
    for a in ACTIONS:
        limit = 2000 if a == "open" else 300
        st = r["actions"][a] if r else {}
        out.append((f"mode b, N = 20: {a} p95 ≤ {fmt_ms(limit)}",
                    fmt_ms(st.get("p95")) if st.get("n") else "not measured",
                    st["p95"] <= limit if st.get("n") else None))
    r = by.get(("a", 20))
    for a, limit in (("next", 1500), ("open", 20000)):
        st = r["actions"][a] if r else {}
        out.append((f"mode a, N = 20: {a} p95 ≤ {fmt_ms(limit)}",
                    fmt_ms(st.get("p95")) if st.get("n") else "not measured",
                    st["p95"] <= limit if st.get("n") else None))
    for mode in "ab":
        r = by.get((mode, 1))
        for a, limit in (("open", 2000), ("Augment", 1000)):
            st = r["actions"][a] if r else {}
            out.append((f"one session (mode {mode}, N = 1, after the warm-up): {a} ≤ "
                        f"{fmt_ms(limit)}",
                        fmt_ms(st.get("max")) if st.get("n") else "not measured",
                        st["max"] <= limit if st.get("n") else None))
    for mode in "ab":
        r = by.get((mode, 40))
        out.append((f"server RSS after the N = 40 run (mode {mode}) ≤ 1.5 GB",
                    f"{r['rss_end_mb']} MB (peak {r['rss_peak_mb']} MB)" if r else "not run",
                    r["rss_end_mb"] <= 1536 if r else None))
    return out


def markdown(report: dict) -> str:
    """BENCHMARKS.md tables for a finished report."""
    lines = []
    for mode in "ab":
        runs = [r for r in report["runs"] if r["mode"] == mode and "actions" in r]
        if not runs:
            continue
        who = ("every session's actions" if mode == "a"
               else "the measured browser session's actions")
        lines += ["", f"Mode {mode}, {who}, p50 / p95 / max:", "",
                  "| N | " + " | ".join(ACTIONS) + " | server errors | console errors"
                  + (" | protocol patch errors" if mode == "b" else "")
                  + " | stuck actions | cross-session | server RSS peak / end | wall |",
                  "|" + " --- |" * (len(ACTIONS) + 7 + (mode == "b"))]
        for r in runs:
            c = counts(r)
            lines.append(
                f"| {r['sessions']} | " + " | ".join(cell(r["actions"][a]) for a in ACTIONS)
                + f" | {c['server']} | {c['console']}"
                + (f" | {c['patch']}" if mode == "b" else "")
                + f" | {c['stuck']} | {c['cross']} | {r['rss_peak_mb']} / {r['rss_end_mb']} MB"
                + f" | {r['wall_s']:.0f} s{' (timed out)' if r.get('timed_out') else ''} |")
        if mode == "b":
            lines += ["", "Mode b, the N−1 protocol sessions' own actions (server round trip "
                      "as their client saw it), p50 / p95 / max:", "",
                      "| N | " + " | ".join(ACTIONS) + " | cycles |",
                      "|" + " --- |" * (len(ACTIONS) + 2)]
            for r in runs:
                if "protocol" in r and "actions" in r["protocol"]:
                    pr = r["protocol"]
                    lines.append(f"| {r['sessions']} | "
                                 + " | ".join(cell(pr["actions"][a]) for a in ACTIONS)
                                 + f" | {pr.get('cycles', 0)} |")
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for what, value, met in targets(report["runs"]):
        lines.append(f"| {what} | {value} | "
                     f"{'—' if met is None else ('yes' if met else '**no**')} |")
    return "\n".join(lines)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem / 2**20, 1),
            "python": platform.python_version(), "load_avg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 20, 40])
    ap.add_argument("--mode", nargs="+", choices=["a", "b"], default=["a", "b"])
    ap.add_argument("--data", type=Path, help="data folder (default: a demo set under --work)")
    ap.add_argument("--models", type=Path, help="runs folder (default: 3 cheap runs in --work)")
    ap.add_argument("--train", type=int, default=7049)
    ap.add_argument("--test", type=int, default=1783)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "load")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "load.json")
    ap.add_argument("--repeat", type=int, default=3, help="measured sequences in mode b")
    ap.add_argument("--interval", type=float, default=1.0,
                    help="mean seconds between a protocol session's actions (mode b)")
    ap.add_argument("--think", type=float, default=1.0,
                    help="seconds a browser session waits after each result before its next "
                         "action (a person looks at the page; 0: back to back)")
    ap.add_argument("--stuck-seconds", type=float, default=60.0,
                    help="an action slower than this is a stuck view")
    ap.add_argument("--wait-seconds", type=float, default=180.0,
                    help="how long a session waits for an action before it gives up")
    ap.add_argument("--run-seconds", type=float, default=900.0, help="limit per (mode, N)")
    ap.add_argument("--max-seconds", type=float, default=5400.0, help="limit for everything")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="only print the Markdown tables of an earlier run's results")
    args = ap.parse_args()
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return
    deadline = time.time() + args.max_seconds
    BrowserSession.think = args.think
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("FKD_CACHE_DIR", str(args.work / "cache"))
    if args.data is None or args.models is None:
        data, models = prepare(args.work, args.train, args.test)
        data, models = args.data or data, args.models or models
    else:
        data, models = args.data, args.models
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": machine(), "data": str(data), "models": str(models),
              "think_s": args.think, "interval_s": args.interval,
              "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": []}
    for mode in args.mode:
        for n in args.sessions:
            if time.time() > deadline - 30:
                print(f"\nmode {mode}, N = {n}: skipped, --max-seconds reached")
                report["runs"].append({"mode": mode, "sessions": n, "skipped": "deadline"})
                continue
            print(f"\n… mode {mode}, N = {n}", flush=True)
            r = asyncio.run(run_one(mode, n, args, data, models, deadline))
            report["runs"].append(r)
            print_run(r)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
