"""Kaggle parsing speed: fkd's reader vs. the common pandas idiom, and cold vs. cached loads.

Usage: python benchmarks/bench_kaggle.py [--train 7049] [--repeat 3] [--data DIR]
                                        [--header-columns 1000000]

Writes a Kaggle-size demo set (unless --data is given), then times, in this one process:
  idiom  pd.read_csv + df["Image"].apply(lambda s: np.fromstring(s, sep=" "))
  cold   fkd_core.kaggle.read_training(use_cache=False) — full strict parse + validation
  warm   fkd_core.kaggle.read_training() from the content-keyed cache
and prints the ratios; then times the rejection of a header of --header-columns columns
(the header checks must stay linear and their message short). The numba kernels are
compiled (or loaded from their on-disk cache) before timing, as after a package's first use.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", type=int, default=7049)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", type=Path, help="existing folder with training.csv")
    ap.add_argument("--header-columns", type=int, default=1_000_000)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fkd-bench-"))
    os.environ["FKD_CACHE_DIR"] = str(work / "cache")
    from fkd_core import kaggle, synthetic

    folder = args.data
    if folder is None:
        folder = work / "demo"
        t = time.perf_counter()
        synthetic.write_demo(folder, n_train=args.train, n_test=1783, seed=0)
        print(f"wrote demo set ({args.train} training faces) in {time.perf_counter() - t:.1f} s")
    csv = folder / "training.csv"
    size_mb = csv.stat().st_size / 1e6
    member = kaggle.locate(folder)["training.csv"]
    kaggle.read_training(kaggle.locate(_tiny_copy(csv, work))["training.csv"], use_cache=False)

    def idiom():
        df = pd.read_csv(csv)
        return np.stack(df["Image"].apply(lambda s: np.fromstring(s, sep=" ")).to_numpy())

    loaded = pd.read_csv(csv)

    def idiom_apply_only(df=loaded):
        return np.stack(df["Image"].apply(lambda s: np.fromstring(s, sep=" ")).to_numpy())

    t_idiom, ref = timed(idiom, args.repeat)
    t_apply, _ = timed(idiom_apply_only, args.repeat)
    t_cold, ours = timed(lambda: kaggle.read_training(member, use_cache=False), args.repeat)
    np.testing.assert_array_equal(ours["images"].reshape(len(ref), -1), ref.astype(np.uint8))
    kaggle.read_training(member)  # fills the cache
    t_warm, cached = timed(lambda: kaggle.read_training(member), args.repeat)
    np.testing.assert_array_equal(cached["images"], ours["images"])

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"file: {csv.name}, {len(ref)} rows, {size_mb:.0f} MB; median of {args.repeat}")
    print(f"idiom (read_csv + apply fromstring)  {t_idiom:7.3f} s")
    print(f"idiom apply fromstring only          {t_apply:7.3f} s")
    print(f"fkd cold parse                       {t_cold:7.3f} s")
    print(f"fkd warm (cached)                    {t_warm:7.3f} s")
    print(f"cold vs idiom:             {t_idiom / t_cold:6.1f}x faster")
    print(f"cold vs idiom apply only:  {t_apply / t_cold:6.1f}x faster")
    print(f"warm vs cold:              {t_cold / t_warm:6.1f}x faster")
    t_header, message = _wide_header(kaggle, work, args.header_columns)
    print(f"header of {args.header_columns} columns rejected in {t_header:.2f} s, "
          f"message {len(message)} characters")


def _wide_header(kaggle, work: Path, n: int) -> tuple[float, str]:
    wide = work / "wide"
    wide.mkdir()
    (wide / "training.csv").write_text(",".join(f"c{i}" for i in range(n)) + "\n1,2\n")
    t = time.perf_counter()
    try:
        kaggle.read_training(kaggle.locate(wide)["training.csv"], use_cache=False)
    except kaggle.KaggleFormatError as exc:
        return time.perf_counter() - t, str(exc)
    raise AssertionError("a header of unknown columns was accepted")


def _tiny_copy(csv: Path, work: Path) -> Path:
    """A 2-row copy of the file, to compile the kernels outside the timed region."""
    tiny = work / "tiny"
    tiny.mkdir(exist_ok=True)
    with open(csv, "rb") as f:
        head = [f.readline() for _ in range(3)]
    (tiny / "training.csv").write_bytes(b"".join(head))
    return tiny


if __name__ == "__main__":
    main()
