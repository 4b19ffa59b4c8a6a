"""Many sessions on one server, and a page that needs nothing but that server.

Several browser contexts (separate sessions, as separate users' tabs) act at once — paging,
a face's detail, augmentation QA, new sessions opening — and each must end on its own page
with no error in any browser console and none in the server's log. Then one session with
every request to another host blocked goes through every tab: nothing may be attempted
outside the server, and nothing may fail to load.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import browser_harness
import pytest
from browser_harness import Session, expect_text

from app import screenshots as ui

pytestmark = pytest.mark.slow

RUN = "tiny"
PAGE = re.compile(r"page (\d+) of (\d+)")
browser = browser_harness.browser


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_dir) -> Path:
    out = tmp_path_factory.mktemp("models")
    browser_harness.train_run(demo_dir, out, RUN)
    return out


@pytest.fixture(scope="module")
def served(demo_dir, models, tmp_path_factory):
    """(url, server log) of a server of its own, so its log holds only these sessions."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = browser_harness.start_server(demo_dir, models, log)
    yield srv.url, log
    srv.stop()


def _server_problems(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if re.search(r"Traceback|Error|ERROR|Exception", line)]


class User(Session):
    """One user's tab: a session of its own (each page gets its own browser context)."""

    def __init__(self, browser, url: str, shots: Path, name: str, prepare=None):
        super().__init__(browser, url, shots, prepare)
        self.name = name

    def shot(self, name: str) -> Path:
        return super().shot(f"{self.name}-{name}")

    def header(self) -> str:
        return self.page.locator(".fkd-grid-header").first.inner_text()

    def wait_header(self, pattern: str, timeout: float = 60_000) -> None:
        try:
            self.page.locator(".fkd-grid-header", has_text=pattern).first.wait_for(
                timeout=timeout)
        except browser_harness.sync_api.TimeoutError:
            pytest.fail(f"{self.name}: never showed {pattern!r}; shows {self.header()!r} "
                        f"({self.where()})")


def _all_faces_by_twelve(u: User) -> None:
    """Faces tab, all 120 faces; then 12 a page and, at once, "next": Panel delivers that
    click while the page-size change is still pending, outside the document lock."""
    ui.goto_tab(u.page, "Faces")
    ui.wait_for_faces(u.page)
    browser_harness.choose(u.page, "fkd-subset", "all")
    u.wait_header("page 1 of 5")
    browser_harness.choose(u.page, "fkd-page-size", "12")
    u.page.locator(".fkd-next button").click()
    u.wait_header("page 2 of 10")


def test_concurrent_sessions_stay_apart(browser, served, tmp_path):
    url, log = served
    users = {name: User(browser, url, tmp_path, name) for name in ("pager-a", "pager-b",
                                                                   "detail", "augment")}
    a, b, d, g = users.values()
    for u in (a, b):
        _all_faces_by_twelve(u)
    ui.goto_tab(d.page, "Faces")
    ui.goto_tab(g.page, "Augment")  # TensorFlow may still be warming up: it waits
    # a burst: both pagers click while other sessions open the detail and augmentation QA
    # and two new sessions connect
    clicks = {"pager-a": 2, "pager-b": 4}  # from page 2
    for k in range(max(clicks.values())):
        for u in (a, b):
            if k < clicks[u.name]:
                u.page.locator(".fkd-next button").click()
        if k == 1:
            users["late-1"] = User(browser, url, tmp_path, "late-1")
        if k == 2:
            rows = ui.wait_for_faces(d.page)
            ui.click_face(d.page, 0)
        if k == 3:
            users["late-2"] = User(browser, url, tmp_path, "late-2")
    a.wait_header(f"page {2 + clicks['pager-a']} of 10")
    b.wait_header(f"page {2 + clicks['pager-b']} of 10")
    row = int(re.match(r"row (\d+)", rows[0]).group(1))
    d.page.locator("table.fkd-keypoints").wait_for(timeout=60_000)
    expect_text(d, f"training.csv row {row} (line {row + 2})")
    d.page.locator(".fkd-open-augment button").click()
    d.page.locator(".fkd-aug-header", has_text=f"training.csv row {row} ·").wait_for(
        timeout=120_000)
    g.page.locator(".fkd-aug-table table").wait_for(timeout=120_000)
    g.page.locator(".fkd-aug-new-seed button").click()
    for late in (users["late-1"], users["late-2"]):
        late.page.locator(".fkd-leaderboard").get_by_text(RUN, exact=True).wait_for()
        ui.goto_tab(late.page, "Faces")
        late.wait_header("page 1 of")
    # nobody moved anybody else: each session is where its own actions left it
    a.wait_header("page 4 of 10")
    b.wait_header("page 6 of 10")
    g.page.wait_for_timeout(1500)  # let late patches arrive before reading the consoles
    for u in users.values():
        u.shot("end")
        u.check_console()
    problems = _server_problems(log)
    assert not problems, "server log:\n" + "\n".join(problems[:20])
    for u in users.values():
        u.page.context.close()


def test_opening_faces_sends_its_page_once(browser, served, tmp_path):
    """The tab's first page is computed and sent once: the choices the grid sets while it is
    built must not each redraw it (every redraw sends the page's faces again). Counted from
    the page's load (the tab may be built before it is clicked): Bokeh messages that carry
    the image of a whole page of faces (one image: app.faces.mosaic)."""
    from app.faces import CAPTION, GAP, IMAGE_SIZE
    from app.grid import COLUMNS

    url, _ = served
    first_user = User(browser, url, tmp_path, "first")
    ui.goto_tab(first_user.page, "Faces")  # the run's predictions are cached from now on
    first_user.wait_header("page 1 of")
    first_user.page.context.close()
    u = User(browser, url, tmp_path, "once")
    shapes: list[tuple] = []  # the shape of every image sent

    def images_in(node) -> None:
        if isinstance(node, list):
            if len(node) == 2 and node[0] == "image" and isinstance(node[1], list):
                shapes.extend(tuple(i.get("shape", ())) for i in node[1] if isinstance(i, dict))
            for item in node:
                images_in(item)
        elif isinstance(node, dict):
            for item in node.values():
                images_in(item)

    def watch(ws):
        ws.on("framereceived", lambda payload: images_in(json.loads(payload)) if isinstance(
            payload, str) and '"image"' in payload else None)

    u.page.on("websocket", watch)
    u.page.reload()
    ui.goto_tab(u.page, "Faces")
    u.wait_header("page 1 of")
    u.page.wait_for_timeout(1500)
    header = u.page.locator(".fkd-grid-header", has_text="page 1 of").first.evaluate(
        "e => (e.shadowRoot || e).textContent")
    first, last = map(int, re.search(r"faces (\d+)–(\d+) of", header).groups())
    n, columns = last - first + 1, COLUMNS[24]
    rows = -(-n // columns)
    sheet = ((rows - 1) * (IMAGE_SIZE + GAP + CAPTION) + IMAGE_SIZE,
             (min(n, columns) - 1) * (IMAGE_SIZE + GAP) + IMAGE_SIZE)
    pages = [shape for shape in shapes if shape == sheet]
    assert len(pages) == 1, f"the page's {n} faces were sent {len(pages)} times ({shapes})"
    u.check_console()
    u.page.context.close()


def test_page_needs_nothing_but_its_server(browser, served, tmp_path):
    url, _ = served
    host = url.split("/")[2]
    outside, failed, missing = [], [], []

    def prepare(page):
        def route(r):
            if r.request.url.split("/")[2] == host or r.request.url.startswith(("data:",
                                                                                 "blob:")):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
        page.on("response", lambda r: missing.append(f"{r.url} {r.status}")
                if r.status >= 400 else None)

    s = User(browser, url, tmp_path, "offline", prepare)
    ui.goto_tab(s.page, "Faces")
    ui.wait_for_faces(s.page)
    ui.click_face(s.page, 0)
    s.page.locator("table.fkd-keypoints").wait_for()
    for tab in ("Data", "Augment", "Flip audit", "Activations"):
        ui.goto_tab(s.page, tab)
    s.page.locator(".fkd-act-summary p", has_text="tiles").wait_for(timeout=ui.TIMEOUT_MS)
    ui.goto_tab(s.page, "Augment")
    s.page.locator(".fkd-aug-table table").wait_for(timeout=ui.TIMEOUT_MS)
    s.shot("all-tabs")
    assert not outside, f"requests to other hosts: {outside}"
    assert not failed and not missing, f"failed: {failed}; missing: {missing}"
    s.check_console()
    s.page.context.close()


def test_a_session_made_by_its_websocket_uses_the_servers_stylesheets(served):
    """Under load a page's websocket can arrive after Bokeh dropped the session its GET made
    (unused for 15 s); Bokeh then makes the session from the websocket, without the page
    template, and every stylesheet must still come from this server, not a CDN."""
    import panel.models  # noqa: F401  (Panel's Bokeh models, to read the document)
    from bokeh.client import pull_session
    from bokeh.models import ImportedStyleSheet

    import app.leaderboard  # noqa: F401  (and the heatmap's ReactiveHTML data model)

    def stylesheets() -> set[str]:
        with pull_session(url=f"{url}app") as session:
            return {s.url for s in session.document.select({"type": ImportedStyleSheet})}

    url, _ = served
    with ThreadPoolExecutor(1) as pool:  # a thread of its own: Playwright owns this one's loop
        found = pool.submit(stylesheets).result(timeout=120)
    outside = sorted(u for u in found if u.startswith(("http:", "https:", "//")))
    assert found and not outside, f"stylesheets from another host: {outside}"
