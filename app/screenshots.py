"""Driving the dashboard in headless Chromium for the README shots (the browser tests use the
same helpers; their own live in ``tests/browser_harness.py``).

``python -m app.screenshots OUTDIR [--data PATH] [--models DIR]`` starts the server, opens
each view and writes ``leaderboard.png``, ``grid.png``, ``detail.png``, ``data.png``,
``augment.png``, ``flip_check.png``, ``flip_audit.png``, ``activations.png``,
``label_qa.png``, ``photos.png`` (1200 × 800, palette PNGs) and ``experiments.png`` (the
whole tab: curves, sensitivity and the architecture comparison, 1200 wide). Uses Debian's
Chromium; never downloads a browser. Label QA's corrections go to a temporary log, never the
user's.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
VIEWPORT = {"width": 1200, "height": 800}
#: A grid caption: training faces "row 57 · 3.21 px" (" ✎" if corrected), test faces
#: "test image 12".
CAPTION = re.compile(r"^(row \d+ · ([\d.]+ px|no labels)( ✎)?|test image \d+)$")
TIMEOUT_MS = 90_000  # the first grid waits for the model's predictions


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=BROWSER_ARGS)


def open_page(browser, url: str, prepare=None):
    """A page on ``url`` (in a browser context of its own: a session of its own) and the list
    its console errors, uncaught exceptions and dialogs (alert, confirm: never wanted, and
    the sign of injected script) go to; ``prepare(page)`` runs before the page loads."""
    page = browser.new_page(viewport=VIEWPORT)
    if prepare is not None:
        prepare(page)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(url)
    page.locator(".bk-tab", has_text="Leaderboard").wait_for(timeout=TIMEOUT_MS)
    return page, errors


def goto_tab(page, name: str) -> None:
    page.locator(".bk-tab", has_text=name).click()
    page.locator(".bk-tab.bk-active", has_text=name).wait_for()


def caption_locator(page):
    return page.get_by_text(CAPTION)


def wait_for_faces(page, timeout: float = TIMEOUT_MS) -> list[str]:
    """The grid's captions, once at least one face is drawn."""
    caption_locator(page).first.wait_for(timeout=timeout)
    return captions(page)


def captions(page) -> list[str]:
    return caption_locator(page).all_inner_texts()


def click_face(page, index: int = 0) -> None:
    """Click the middle of the grid's index-th face (the geometry is app.faces')."""
    from app.faces import CAPTION as CAPTION_PX
    from app.faces import GAP, SCALE

    box = page.locator(".fkd-grid-faces").bounding_box()
    per_row = round(box["width"] / (SCALE * (96 + GAP)))
    col, row = index % per_row, index // per_row
    x = (col * (96 + GAP) + GAP / 2 + 48) * SCALE
    y = (row * (96 + GAP + CAPTION_PX) + GAP / 2 + 48) * SCALE
    page.mouse.click(box["x"] + x, box["y"] + y)


def save(page, path: Path, full_page: bool = False) -> Path:
    """Screenshot, then shrink to a palette PNG (faces are grey, markers few colours)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    small.save(path, optimize=True)
    return path


def shoot_all(url: str, out: Path) -> dict[str, Path]:
    """Open every view and save one screenshot of each into ``out``."""
    from playwright.sync_api import sync_playwright

    out = Path(out)
    shots = {}
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page, errors = open_page(browser, url)
            page.wait_for_timeout(1500)
            shots["leaderboard"] = save(page, out / "leaderboard.png")
            goto_tab(page, "Faces")
            wait_for_faces(page)
            page.wait_for_timeout(1000)
            shots["grid"] = save(page, out / "grid.png")
            click_face(page, 0)
            page.locator("table.fkd-keypoints").wait_for()
            page.wait_for_timeout(800)
            shots["detail"] = save(page, out / "detail.png")
            goto_tab(page, "Data")
            page.locator(".fkd-positions").wait_for()
            page.wait_for_timeout(1000)
            shots["data"] = save(page, out / "data.png")
            shots.update(shoot_inspection(page, out))
            shots["label_qa"] = shoot_label_qa(page, out)
            shots["experiments"] = shoot_experiments(page, out)
            shots["photos"] = shoot_photos(page, out)
            if errors:
                print("browser console errors:\n  " + "\n  ".join(errors))
        finally:
            browser.close()
    return shots


def wait_for_augment(page, timeout: float = TIMEOUT_MS) -> None:
    """Open the Augment tab and wait for its samples (the first time imports TensorFlow)."""
    goto_tab(page, "Augment")
    page.locator(".fkd-aug-table table").wait_for(timeout=timeout)


def run_flip_audit(page, timeout: float = TIMEOUT_MS) -> None:
    """Open the Flip audit tab, start the audit and wait for its table of rows."""
    goto_tab(page, "Flip audit")
    page.locator(".fkd-audit-start button").click()
    page.locator("table.fkd-audit-rows").wait_for(timeout=timeout)


def wait_for_activations(page, timeout: float = TIMEOUT_MS) -> None:
    """Open the Activations tab and wait for the first layer's tiles."""
    goto_tab(page, "Activations")
    page.locator(".fkd-act-summary p", has_text="tiles").wait_for(timeout=timeout)


def shoot_inspection(page, out: Path) -> dict[str, Path]:
    """Screenshots of augmentation QA (samples, then the flip check), flip audit, activations."""
    shots = {}
    wait_for_augment(page)
    for _ in range(2):  # redraws past TensorFlow's slow first calls in the server's thread
        page.locator(".fkd-aug-defaults button").click()
        page.wait_for_timeout(500)
    page.mouse.click(600, 20)  # blur the button
    shots["augment"] = save(page, out / "augment.png")
    page.get_by_text("Flip check", exact=True).first.evaluate("e => e.scrollIntoView()")
    page.wait_for_timeout(800)
    shots["flip_check"] = save(page, out / "flip_check.png")
    run_flip_audit(page)
    page.wait_for_timeout(1000)
    shots["flip_audit"] = save(page, out / "flip_audit.png")
    wait_for_activations(page)
    page.wait_for_timeout(1000)
    shots["activations"] = save(page, out / "activations.png")
    return shots


def shoot_label_qa(page, out: Path, timeout: float = TIMEOUT_MS) -> Path:
    """Label QA judged by the first run: the list, then the top suspect with a suggestion
    opened and the suggestion accepted (the ghost shows where training.csv had it)."""
    goto_tab(page, "Label QA")
    page.locator(".fkd-lqa-list-header", has_text="judged by").wait_for(timeout=timeout)
    select = page.locator(".fkd-lqa-run select")
    runs = select.locator("option").all_inner_texts()
    if len(runs) > 1:
        select.select_option(label=runs[1])
        page.locator(".fkd-lqa-list-header", has_text="predictions").wait_for(timeout=timeout)
    rows = page.locator(".fkd-lqa-suspects .slick-row")
    rows.first.wait_for(timeout=timeout)
    residual = rows.filter(has_text="residual")  # one with a suggestion, if listed
    (residual if residual.count() else rows).first.locator(".slick-cell.l3").click()
    page.locator(".fkd-lqa-editor").wait_for()
    accept = page.locator(".fkd-lqa-accept button")
    if accept.is_enabled():
        accept.click()
        page.locator(".fkd-lqa-lines").wait_for()
    page.locator(".fkd-lqa-face").scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    return save(page, out / "label_qa.png")


def wait_for_experiments(page, timeout: float = TIMEOUT_MS) -> None:
    """Open the Experiments tab and wait until every run's inference cost is measured."""
    goto_tab(page, "Experiments")
    page.locator(".fkd-exp-curves canvas").first.wait_for(timeout=timeout)
    page.wait_for_function("""() => {
        const r = Bokeh.documents[0].get_model_by_name('fkd-exp-bubbles');
        return r !== null && r.data_source.data.run.length > 0;
    }""", timeout=timeout)
    page.locator(".fkd-exp-cost-message", has_text="Measuring").wait_for(
        state="hidden", timeout=timeout)


def shoot_experiments(page, out: Path, timeout: float = TIMEOUT_MS) -> Path:
    """The Experiments tab, whole: the newest sweep's curves and sensitivity, every bubble."""
    wait_for_experiments(page, timeout)
    page.wait_for_timeout(1000)
    return save(page, out / "experiments.png", full_page=True)


#: The Photos tab's sample photo: faces of the embedded demo set (training rows), each
#: ``(row, x, y, scale)``, pasted into a colour canvas — made here, so that the README shows
#: no one's real face. dlib's detector finds both of these.
PHOTO_CANVAS = (640, 400)
PHOTO_FACES = ((6, 50, 70, 2.6), (10, 380, 120, 2.1))


def demo_photo(images, faces=PHOTO_FACES, canvas=PHOTO_CANVAS, fmt: str = "PNG") -> bytes:
    """An encoded colour photo of 96×96 gray ``images[row]`` scaled and pasted per ``faces``."""
    import io

    from PIL import Image

    photo = Image.new("RGB", canvas, (70, 120, 160))
    for row, x, y, scale in faces:
        size = (round(96 * scale),) * 2
        face = Image.fromarray(images[row]).resize(size, Image.Resampling.BILINEAR)
        photo.paste(face.convert("RGB"), (x, y))
    out = io.BytesIO()
    photo.save(out, fmt)
    return out.getvalue()


def upload_photos(page, *files: tuple[str, str, bytes]) -> None:
    """Upload ``(name, MIME type, bytes)`` files with the Photos tab's file input."""
    page.locator(".fkd-photo-upload input[type=file]").set_input_files(
        [{"name": name, "mimeType": mime, "buffer": data} for name, mime, data in files])


def shoot_photos(page, out: Path, timeout: float = TIMEOUT_MS) -> Path:
    """The Photos tab on :func:`demo_photo` predicted by the first run, the pointer on a
    keypoint (its tooltip names it)."""
    from fkd_core import dataset

    images = dataset.load(dataset.demo_path(), parts=("training",)).train.images
    goto_tab(page, "Photos")
    page.locator(".fkd-photo-run select option").first.wait_for(state="attached")
    upload_photos(page, ("two demo faces.png", "image/png", demo_photo(images)))
    page.locator("table.fkd-photo-keypoints").wait_for(timeout=timeout)
    page.wait_for_timeout(800)
    x, y = page.evaluate("""() => {
        const points = Bokeh.documents[0].get_model_by_name('fkd-photo-points');
        const fig = Bokeh.documents[0].get_model_by_name('fkd-photo-figure');
        const view = Bokeh.index.find_one(fig);
        const box = view.el.getBoundingClientRect();
        const d = points.data_source.data;
        return [box.x + view.frame.x_scale.compute(d.x[0]),
                box.y + view.frame.y_scale.compute(d.y[0])];
    }""")
    page.mouse.move(x, y)
    page.wait_for_timeout(500)
    return save(page, out / "photos.png")


def main(argv: list[str] | None = None) -> int:
    from app.serve import Server

    parser = argparse.ArgumentParser(prog="python -m app.screenshots", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data")
    parser.add_argument("--models", default="models")
    args = parser.parse_args(argv)
    log = Path(tempfile.gettempdir()) / "fkd-screenshots-server.log"
    with tempfile.TemporaryDirectory(prefix="fkd-screenshots-") as tmp, \
            Server(args.data, args.models, log=log,
                   corrections=Path(tmp) / "corrections.csv") as url:
        for name, path in shoot_all(url, args.out).items():
            print(f"{name:<12} {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
