"""Hostile run folders in a real browser: run ids and ``config.json`` strings carrying HTML and
script must show as text in every view — never run, never add an element.

The hostile folder name may be refused by the run registry (then it is listed as broken, and
that list must show it as text); the hostile ``config.json`` strings sit in a run with a
valid name, which every view can choose.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import browser_harness
import pytest
from browser_harness import Session, expect_text

from app import screenshots as ui
from app.untrusted import html_text, markdown_text

pytestmark = pytest.mark.slow

RUN = "tiny"
EVIL = "evil"  # a valid id whose config.json strings are hostile
HOSTILE_ID = "x<img src=x onerror=alert(1)>"
ARCH = "<img src=x onerror=alert('arch')>"
HEAD = "<script>alert('head')</script>"
MODEL = "<svg onload=alert('model')>"
AUG_KEY = "<img src=x onerror=alert('augment')>"
browser = browser_harness.browser
server = browser_harness.server
session = browser_harness.session


def _poison(folder: Path, run_id: str) -> None:
    """Hostile strings in every free-text field of the run's config.json."""
    config = json.loads((folder / "config.json").read_text())
    config["run_id"] = run_id
    config["arch"] = ARCH
    config["train"]["arch"] = ARCH
    config["train"]["head"] = HEAD
    config["model"]["name"] = MODEL
    config["data"]["source"] = f"/data/{HEAD}"
    config["train"]["augment"][AUG_KEY] = 1.0  # "Settings of run" quotes the unknown key
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_dir) -> Path:
    out = tmp_path_factory.mktemp("models")
    browser_harness.train_run(demo_dir, out, RUN)
    for name in (EVIL, HOSTILE_ID):
        shutil.copytree(out / RUN, out / name)
        _poison(out / name, name)
    return out


# -- the helpers ------------------------------------------------------------------------


def test_html_text_escapes_markup_and_quotes():
    assert html_text(HOSTILE_ID) == "x&lt;img src=x onerror=alert(1)&gt;"
    assert html_text("a\"b'c&") == "a&quot;b&#x27;c&amp;"


@pytest.mark.parametrize("text", [
    HOSTILE_ID, "**bold** _it_ `code` # head", "[link](javascript:alert(1))",
    "    indented\n- item\n1. one", "a & b &lt; \\ \\* <b>", "![img](x)", "<!-- c -->",
])
def test_markdown_text_renders_as_the_same_text(text):
    """Through Panel's own Markdown renderer the text comes out as itself: one paragraph,
    line breaks, no other element."""
    import html
    from html.parser import HTMLParser

    import panel as pn

    class Reader(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.tags, self.text = [], ""

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.text += "\n" if tag == "br" else ""

        def handle_data(self, data):
            self.text += data.replace("\n", "")

    # Panel sends the rendered HTML escaped, for the page to unescape once
    rendered = html.unescape(pn.pane.Markdown()._transform_object(markdown_text(text))["object"])
    reader = Reader()
    reader.feed(rendered)
    assert set(reader.tags) <= {"p", "br"}, rendered
    assert reader.text == text, rendered


# -- the browser ------------------------------------------------------------------------


def _injected(s: Session) -> int:
    """Elements the payloads would have made (CSS locators pierce Bokeh's shadow roots)."""
    return sum(s.page.locator(css).count()
               for css in ("img[src=x]", "[onerror]", "[onload]", "svg[onload]"))


def _check_clean(s: Session, where: str) -> None:
    s.check(_injected(s) == 0, f"no injected element after {where}")
    s.check_console()  # dialogs count as errors: an alert() ran


def test_hostile_names_and_config_strings_stay_text(session, models):
    s = session
    table = s.page.locator(".fkd-leaderboard")
    table.get_by_text(EVIL, exact=True).wait_for()
    runs = s.page.locator(".fkd-run select option")  # the grid's run list, built per session
    ui.goto_tab(s.page, "Faces")
    ui.wait_for_faces(s.page)
    choices = runs.all_text_contents()
    hostile_ok = HOSTILE_ID in choices
    first = HOSTILE_ID if hostile_ok else EVIL

    ui.goto_tab(s.page, "Leaderboard")
    table.get_by_text(ARCH, exact=True).first.wait_for()  # config strings shown as text
    s.check(table.get_by_text(HEAD, exact=True).count() >= 1, "head shown as text")
    if not hostile_ok:
        broken = s.page.locator(".fkd-broken-runs")
        broken.wait_for()
        s.check(HOSTILE_ID in broken.inner_text(), "the refused folder is listed by name")
    cell = browser_harness.heatmap_cell(s.page, first, "nose_tip")  # its row names it as text
    cell.hover()
    title = cell.get_attribute("title") or ""
    s.check(title.startswith(f"{first} · nose_tip · "), f"the hover names {first!r}: {title!r}")
    s.shot("leaderboard-hover")
    _check_clean(s, "the leaderboard and its hover")

    ui.goto_tab(s.page, "Faces")
    browser_harness.choose(s.page, "fkd-run", first)
    browser_harness.choose(s.page, "fkd-compare", EVIL if hostile_ok else RUN)
    expect_text(s, f"each pair: left {first}")
    ui.wait_for_faces(s.page)
    s.shot("grid-compare")
    _check_clean(s, "the grid in compare mode")
    ui.click_face(s.page, 0)
    detail = s.page.locator("table.fkd-keypoints")
    detail.wait_for()
    s.check(first in detail.locator("thead").inner_text(), "the detail table names the run")
    box = s.page.locator(".fkd-detail .fkd-detail-face").bounding_box()
    for k in range(1, 20):  # across the face: the tooltips name the runs' predictions
        s.page.mouse.move(box["x"] + box["width"] * k / 20, box["y"] + box["height"] * 0.4)
    s.shot("detail")
    _check_clean(s, "the detail panel")

    ui.goto_tab(s.page, "Data")
    s.page.locator(".fkd-positions").wait_for()
    ui.wait_for_augment(s.page)
    browser_harness.choose(s.page, "fkd-aug-from-run", EVIL)
    expect_text(s, f"unknown AugmentConfig field(s): {AUG_KEY}")  # quoted as text
    _check_clean(s, "augmentation QA")

    ui.goto_tab(s.page, "Flip audit")
    browser_harness.choose(s.page, "fkd-audit-run", first)
    s.page.locator(".fkd-audit-start button").click()
    s.page.locator("table.fkd-audit-rows").wait_for(timeout=ui.TIMEOUT_MS)
    expect_text(s, f"Run {first} on")
    _check_clean(s, "the flip audit")

    ui.goto_tab(s.page, "Activations")
    browser_harness.choose(s.page, "fkd-act-run", first)
    s.page.locator(".fkd-act-summary p", has_text="tiles").wait_for(timeout=ui.TIMEOUT_MS)
    s.shot("activations")
    _check_clean(s, "the activation maps")
