"""Keypoints on any photo: decoding, framing and back-projection maths, the detector, and
``fkd predict`` end to end with a real tiny model (no faces15/photos15 needed)."""

from __future__ import annotations

import csv
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fkd_core import photos
from fkd_core.cli import app
from fkd_core.keypoints import COLUMN_NAMES

runner = CliRunner()
PHOTOS15 = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos15"


def similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    """A 2×3 matrix: rotate by ``degrees``, scale, then shift."""
    a = math.radians(degrees)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def png(image: np.ndarray | Image.Image, **save) -> bytes:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, "PNG", **save)
    return buf.getvalue()


# -- decoding ---------------------------------------------------------------------------


def test_exif_rotated_jpeg_comes_upright():
    """A phone's portrait JPEG: stored landscape, EXIF orientation 6 (rotate 90° clockwise)."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", exif=exif, quality=95)
    image = photos.load_image(buf.getvalue(), "portrait.jpg")
    assert image.shape == (60, 40, 3) and image.dtype == np.uint8
    # rotated 90° clockwise, the stored top-left corner is now the top-right one
    assert image[3, 36, 0] > 200 and image[3, 36, 1] < 60
    assert image[3, 3].max() < 60


def test_png_with_alpha_is_composited_on_white():
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[:, :15] = (10, 200, 30, 255)  # opaque green left half, transparent right half
    image = photos.load_image(png(rgba), "alpha.png")
    assert image.shape == (20, 30, 3)
    assert tuple(image[5, 5]) == (10, 200, 30)
    assert tuple(image[5, 25]) == (255, 255, 255)


def test_16_bit_png_is_scaled_to_8_bits():
    values = np.array([[0, 257 * 100, 65535]], np.uint16).repeat(4, axis=0)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    image = photos.load_image(png(img), "deep.png")
    assert image.shape == (4, 3, 3)
    assert image[0, :, 0].tolist() == [0, 100, 255]


def test_palette_and_gray_images_become_rgb():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert photos.load_image(png(gray), "g.png")[3, 4].tolist() == [52, 52, 52]
    pal = Image.fromarray(np.stack([gray] * 3, axis=2)).convert("P", palette=Image.ADAPTIVE)
    out = photos.load_image(png(pal), "p.png")
    assert out.shape == (16, 16, 3) and abs(int(out[8, 8, 0]) - 136) <= 8


def over_limit_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` pixels."""
    data = png(np.zeros((2, 2), np.uint8))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def bad_files() -> dict[str, bytes]:
    jpeg = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(jpeg, "JPEG")
    return {
        "notes.jpg": b"this is a text file, not a photo\n",
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "empty.jpg": b"",
        "huge.png": over_limit_png(),
    }


@pytest.mark.parametrize("name", list(bad_files()))
def test_bad_files_are_named_errors(name):
    data = bad_files()[name]
    with pytest.raises(photos.PhotoError, match=rf"^{name}: "):
        photos.load_image(data, name)


def test_over_limit_is_refused_from_the_header(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(over_limit_png())
    with pytest.raises(photos.PhotoError, match=r"^huge\.png: too many pixels"):
        photos.load_image(path)  # Pillow's decompression-bomb guard, from the header
    path.write_bytes(over_limit_png(8000, 8000))  # under Pillow's guard, over fkd's limit
    with pytest.raises(photos.PhotoError, match=r"^huge\.png: 8000×8000 pixels is over"):
        photos.load_image(path)
    with pytest.raises(photos.PhotoError, match="over the limit"):
        photos.load_image(png(np.zeros((20, 20), np.uint8)), "x.png", max_pixels=100)


# -- framing and back-projection --------------------------------------------------------


@pytest.mark.parametrize("scale, degrees", [(0.4, 25.0), (1.0, -10.0), (0.15, 5.0)])
def test_crop_samples_the_photo_through_the_inverse_transform(scale, degrees):
    """On a linear ramp (which bilinear sampling and box filtering reproduce exactly), crop
    pixel (i, j) holds the photo's value at inverse(matrix)(j, i): the pixel-centre
    conventions, the rotation and the shrink-first path for large faces all agree."""
    h, w = 800, 900
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = lambda x, y: 20 + 0.15 * x + 0.1 * y  # noqa: E731 — values 20 … 225
    photo = np.rint(ramp(xx, yy)).astype(np.uint8)
    # photo → crop, with the crop's centre on the photo's (450, 400)
    m = similarity(scale, degrees, 0, 0)
    m[:, 2] = np.array([47.5, 47.5]) - m[:, :2] @ np.array([450.0, 400.0])
    got = photos.crop(photo, m).astype(np.float64)
    inv = photos.invert(m)
    jj, ii = np.meshgrid(np.arange(96.0), np.arange(96.0))
    px = inv[0, 0] * jj + inv[0, 1] * ii + inv[0, 2]
    py = inv[1, 0] * jj + inv[1, 1] * ii + inv[1, 2]
    diff = got - ramp(px, py)
    assert np.abs(diff).max() <= 1.5  # rounding of the photo, the shrunk photo and the crop
    # no bias: half a photo pixel off in x and y would be 0.125 gray levels
    assert abs(diff.mean()) < 0.05


def test_transforms_invert_and_align_exactly():
    m = similarity(0.37, 12.0, 5.0, -8.0)
    pts = np.random.default_rng(0).uniform(0, 300, 30)
    assert np.allclose(photos.apply(photos.invert(m), photos.apply(m, pts)), pts)
    # the mean shape moved by a similarity is aligned back onto the mean shape exactly
    shape = photos.apply(photos.invert(m), photos.MEAN_SHAPE.reshape(-1))
    assert np.allclose(photos.shape_transform(shape), m, atol=1e-9)
    upright = photos.shape_transform(shape, rotate=False)
    assert upright[0, 1] == 0 and upright[1, 0] == 0


class DotPredictor:
    """Measures 15 bright dots in each crop (intensity centroids) and names them by matching
    the dot pattern to the mean shape over rotations and scales: a predictor whose output is
    known (where the dots are), for testing the crop and back-projection maths."""

    def __init__(self, label_offset: float = 0.0):
        self.label_offset = label_offset
        self.calls = 0

    def predict(self, images, *, tta=False):
        self.calls += 1
        return np.stack([self._one(im.astype(np.float64)) + self.label_offset
                         for im in images])

    @staticmethod
    def _one(im: np.ndarray) -> np.ndarray:
        peaks = []
        work = im.copy()
        for _ in range(15):
            i, j = np.unravel_index(np.argmax(work), work.shape)
            i0, i1, j0, j1 = max(i - 2, 0), min(i + 3, 96), max(j - 2, 0), min(j + 3, 96)
            patch = im[i0:i1, j0:j1] - 20.0
            patch[patch < 0] = 0
            yy, xx = np.mgrid[i0:i1, j0:j1]
            peaks.append(((patch * xx).sum() / patch.sum(), (patch * yy).sum() / patch.sum()))
            work[max(i - 2, 0):i + 3, max(j - 2, 0):j + 3] = 0
        dots = np.array(peaks)
        ref = photos.MEAN_SHAPE
        dc = dots - dots.mean(0)
        rc = ref - ref.mean(0)
        dc *= np.sqrt((rc ** 2).sum() / (dc ** 2).sum())
        best = None
        for a in np.radians(np.arange(-45, 46, 1.0)):
            r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            d = np.linalg.norm((dc @ r.T)[None, :, :] - rc[:, None, :], axis=2)  # ref × dot
            cost = d.min(axis=1).sum()
            if best is None or cost < best[0]:
                best = (cost, d.argmin(axis=1))
        order = best[1]
        assert len(set(order.tolist())) == 15, "dots not told apart"
        return dots[order].reshape(-1)


def dot_photo(matrix: np.ndarray, size=(320, 260), sigma: float = 1.0) -> np.ndarray:
    """A gray photo with a Gaussian dot at each mean-shape keypoint moved by ``matrix``
    (crop → photo); ``sigma`` in crop pixels."""
    w, h = size
    pts = photos.apply(matrix, photos.MEAN_SHAPE.reshape(-1)).reshape(15, 2)
    s = sigma * math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full((h, w), 20.0)
    for x, y in pts:
        img += 220 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), pts.reshape(-1)


@pytest.mark.parametrize("offset", [0.0, 0.88])
def test_keypoints_come_back_at_their_photo_position(offset):
    """A face (here 15 dots) at scale 2.4, rotated 20° and shifted, given a box that is 12 %
    too large and off-centre: the first pass and the refined pass both map the measured
    crop positions back onto the dots' photo positions within 0.3 px, and the refined crop
    shows the face upright on the mean shape. A run's label offset is kept in photo
    coordinates (its labels' convention)."""
    to_photo = similarity(2.4, 20.0, 0, 0)
    to_photo[:, 2] = np.array([150.0, 128.0]) - to_photo[:, :2] @ np.array([48.0, 55.0])
    photo, truth = dot_photo(to_photo)
    box = (40.0, 35.0, 2.4 * 79.12 * 1.12, 2.4 * 79.12 * 1.12)
    for refine in (False, True):
        predictor = DotPredictor(offset)
        (face,) = photos.predict_photo(np.stack([photo] * 3, axis=2), predictor, box=box,
                                       refine=refine)
        assert predictor.calls == (2 if refine else 1)  # one batch per pass
        assert face.source == "box" and math.isnan(face.score)
        assert face.crop.shape == (96, 96) and face.crop.dtype == np.uint8
        assert np.abs(face.keypoints - offset - truth).max() < 0.3
    crop_pts = face.crop_keypoints - offset
    assert np.abs(crop_pts - photos.MEAN_SHAPE.reshape(-1)).max() < 0.2


def test_faces_of_many_photos_share_one_model_batch():
    to_photo = similarity(1.5, 0.0, 0, 0)
    to_photo[:, 2] = (100.0, 90.0)
    photo, truth = dot_photo(to_photo, size=(260, 240))
    box = photos.shape_transform(truth)  # the ideal first framing, as a box
    side = photos.BOX_SCALE / box[0, 0]
    centre = (np.array(photos.BOX_CENTRE) - box[:, 2]) / box[0, 0]
    given = (centre[0] + 0.5 - side / 2, centre[1] + 0.5 - side / 2, side, side)
    predictor = DotPredictor()
    found = photos.predict_photos([photo] * 3, predictor, box=given)
    assert predictor.calls == 2 and [len(f) for f in found] == [1, 1, 1]
    assert np.abs(found[2][0].keypoints - truth).max() < 0.2


# -- the detector -----------------------------------------------------------------------


def demo_canvas(faces: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                size=(420, 300)) -> tuple[np.ndarray, list[np.ndarray]]:
    """An RGB photo with demo faces pasted through crop → photo matrices, and each face's
    true keypoints in photo pixels."""
    canvas = Image.new("L", size, 96)
    truths = []
    for image, keypoints, m in faces:
        inv = photos.invert(m)
        a, c = inv[:, :2], inv[:, 2] + 0.5 - inv[:, :2] @ np.array([0.5, 0.5])
        face = Image.fromarray(image).transform(
            size, Image.AFFINE, (a[0, 0], a[0, 1], c[0], a[1, 0], a[1, 1], c[1]),
            resample=Image.BILINEAR)
        mask = Image.fromarray(np.full((96, 96), 255, np.uint8)).transform(
            size, Image.AFFINE, (a[0, 0], a[0, 1], c[0], a[1, 0], a[1, 1], c[1]),
            resample=Image.BILINEAR)
        canvas.paste(face, (0, 0), mask)
        truths.append(photos.apply(m, keypoints))
    return np.asarray(canvas.convert("RGB")), truths


@pytest.fixture(scope="module")
def demo_faces():
    from fkd_core import synthetic

    return synthetic.generate_faces(12, seed=5)


def paste(demo_faces, row, scale, degrees, at):
    m = similarity(scale, degrees, 0, 0)
    m[:, 2] = np.asarray(at, float) - m[:, :2] @ np.array([47.5, 47.5])
    return demo_faces[0][row], demo_faces[1][row], m


def test_detector_finds_two_demo_faces(demo_faces):
    """dlib's HOG detector finds drawn demo faces pasted at 2×: one box on each face."""
    image, truths = demo_canvas([paste(demo_faces, 2, 2.0, 0, (110, 150)),
                                 paste(demo_faces, 3, 2.0, 0, (310, 150))])
    found = photos.find_faces(image)
    assert len(found) == 2
    for (_, _, w, _), score in found:
        assert score >= photos.DETECT_THRESHOLD and 100 < w < 260
    centres = sorted((x + w / 2, y + h / 2) for (x, y, w, h), _ in found)
    for (cx, cy), truth in zip(centres, sorted(truths, key=lambda t: t[0])):
        pts = truth.reshape(15, 2)
        assert abs(cx - pts[:, 0].mean()) < 25 and abs(cy - pts[:, 1].mean()) < 35
    assert photos.find_faces(np.full((200, 200, 3), 128, np.uint8)) == []


def test_detector_in_several_threads_at_once(demo_faces):
    """The dashboard predicts in worker threads: one shared dlib detector used by two
    threads at once corrupted memory (the process aborted); each thread has its own."""
    from concurrent.futures import ThreadPoolExecutor

    images = [demo_canvas([paste(demo_faces, 2, 2.0, 0, (120, 150))], size=(240 + 20 * k, 300))[0]
              for k in range(6)]  # sizes differ: the detector's buffers are resized per photo
    expected = [photos.find_faces(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda k: photos.find_faces(images[k % 6]), range(48)))
    assert all(len(f) == 1 for f in expected)
    assert found == [expected[k % 6] for k in range(48)]


@pytest.mark.skipif(not (PHOTOS15 / "images").is_dir(), reason="../shared/data/photos15 absent")
def test_detector_finds_real_faces():
    files = sorted((PHOTOS15 / "images").glob("*.jpg"))[::12]
    found = [photos.find_faces(photos.load_image(f)) for f in files]
    assert sum(1 for f in found if f) >= 0.95 * len(files)


# -- fkd predict with a real tiny model -------------------------------------------------

RUN = "photo-tiny"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A real run trained on 600 demo faces (resnet heatmap, width 0.25, 8 epochs; about
    4 px RMSE on its validation faces)."""
    from fkd_core import synthetic

    data = tmp_path_factory.mktemp("photo-demo")
    synthetic.write_demo(data, n_train=600, n_test=10, seed=2)
    out = tmp_path_factory.mktemp("photo-models")
    result = runner.invoke(app, ["train", "--data", str(data), "--arch", "resnet", "--width",
                                 "0.25", "--head", "heatmap", "--epochs", "8",
                                 "--batch-size", "32", "--models", str(out),
                                 "--run-id", RUN])
    assert result.exit_code == 0, result.output
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def keypoints_of(row: dict) -> np.ndarray:
    return np.array([float(row[c]) for c in COLUMN_NAMES])


def test_predict_cli_finds_pasted_faces(models, demo_faces, tmp_path):
    """Two demo faces pasted at ×2.2 and rotated 12° / −8°: the detector finds both and the
    real model's keypoints land on the faces in photo pixels. The tiny model is ~4.5 px off
    on its own 96-px faces, so this checks place and scale, not precision (that is
    :func:`test_keypoints_come_back_at_their_photo_position`'s): mean keypoint error under
    10 % of the pasted face's width (21 px at 211 px), keypoints' centre within 6 %.
    A blank photo gets one row with empty coordinates."""
    image, truths = demo_canvas([paste(demo_faces, 8, 2.2, 12, (110, 150)),
                                 paste(demo_faces, 9, 2.2, -8, (310, 150))])
    photos_dir = tmp_path / "in"
    photos_dir.mkdir()
    (photos_dir / "two.png").write_bytes(png(image))
    (photos_dir / "blank.jpg").write_bytes(png(np.full((120, 160, 3), 128, np.uint8)))
    out = tmp_path / "kp.csv"
    result = runner.invoke(app, ["predict", RUN, str(photos_dir), "-o", str(out), "--models",
                                 str(models), "--overlay", str(tmp_path / "ov")])
    assert result.exit_code == 0, result.output
    assert "2 photos: 2 faces (2 by detector), 1 photos with no face, 0 skipped" \
        in " ".join(result.output.split())
    rows = read_csv(out)
    assert list(rows[0]) == list(photos.CSV_COLUMNS)
    blank = [r for r in rows if r["file"] == "blank.jpg"]
    assert len(blank) == 1 and blank[0]["face"] == "" and blank[0]["left_eye_center_x"] == ""
    two = [r for r in rows if r["file"] == "two.png"]
    assert [r["face"] for r in two] == ["1", "2"]
    assert all(r["source"] == "detector" and float(r["detector_score"]) > 0 for r in two)
    width = 96 * 2.2
    matched = set()
    for row in two:
        pred = keypoints_of(row).reshape(15, 2)
        i = min((0, 1), key=lambda k: np.abs(truths[k].reshape(15, 2) - pred).mean())
        matched.add(i)
        truth = truths[i].reshape(15, 2)
        assert np.linalg.norm(pred - truth, axis=1).mean() < 0.10 * width
        assert np.linalg.norm(pred.mean(0) - truth.mean(0)) < 0.06 * width
    assert matched == {0, 1}
    drawn = np.asarray(Image.open(tmp_path / "ov" / "two.png"))
    assert drawn.shape == image.shape and (drawn != image).any(axis=2).sum() > 200


def test_predict_cli_box_whole_and_bad_files(models, demo_faces, tmp_path):
    """A bad file of each kind is reported by name and skipped; the batch goes on. --box and
    --whole replace the detector and say so in the CSV."""
    image, (truth,) = demo_canvas([paste(demo_faces, 2, 1.5, 0, (100, 90))], size=(200, 180))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "face.png").write_bytes(png(image))
    for name, data in bad_files().items():
        (folder / name).write_bytes(data)
    out = tmp_path / "kp.csv"
    result = runner.invoke(app, ["predict", RUN, str(folder), "-o", str(out), "--models",
                                 str(models), "--box", "40,40,119,119"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in bad_files():
        assert f"skipped {name}: " in text
    assert "4 skipped" in text
    rows = read_csv(out)
    assert [r["file"] for r in rows] == ["face.png"]
    assert rows[0]["source"] == "box" and rows[0]["detector_score"] == ""
    pred = keypoints_of(rows[0]).reshape(15, 2)
    assert np.linalg.norm(pred - truth.reshape(15, 2), axis=1).mean() < 0.10 * 1.5 * 96
    result = runner.invoke(app, ["predict", RUN, str(folder / "face.png"), "-o", str(out),
                                 "--models", str(models), "--whole"])
    assert result.exit_code == 0, result.output
    (row,) = read_csv(out)
    assert row["source"] == "whole" and row["box_w"] == "180.0"
    result = runner.invoke(app, ["predict", RUN, str(folder / "notes.jpg"), "-o", str(out),
                                 "--models", str(models)])
    assert result.exit_code == 1 and "notes.jpg: not an image file" in result.output
