"""Local against Ray: what the same small sweep costs with each ``fkd sweep`` backend.

Usage: python benchmarks/bench_sweep.py [--trials-grid lr=1e-3,3e-4 width=0.25,0.5]
                                        [--epochs 1] [--steps 4] [--out FILE.json]

Runs the same sweep (tiny demo trainings) as separate ``fkd sweep`` commands, each on a
fresh models folder, one after another in this run:

  local        trials one after another in the sweep's process (the default)
  local-par2   --parallel 2: two `fkd train` processes at a time
  ray-par2     --backend ray --parallel 2: a local Ray instance with 2 CPUs, started and
               shut down by the sweep

and reports each one's wall time, the sum of its trials' own seconds (sweep.json), and the
overhead per trial: (wall - the time a sweep with no trial to train takes) / trials. The
ratios are against ``local`` measured in the same run, so the machine's load at the time
affects both sides. Ray's own start-up is timed alone too (``ray.init`` + ``shutdown``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["--arch", "simple", "--head", "regression", "--batch-size", "16",
        "--val-fraction", "0.25", "--augment", "none"]
BACKENDS = {
    "local": [],
    "local-par2": ["--parallel", "2"],
    "ray-par2": ["--backend", "ray", "--parallel", "2"],
}


def sweep(data: Path, models: Path, grid: list[str], extra: list[str], epochs: int,
          steps: int) -> float:
    command = [sys.executable, "-m", "fkd_core.cli", "sweep", "--data", str(data),
               "--models", str(models), *TINY, "--epochs", str(epochs),
               "--steps-per-epoch", str(steps), "--sweep-id", "bench", *extra]
    for g in grid:
        command += ["--grid", g]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall


def ray_startup() -> float:
    code = ("import time, ray; t = time.perf_counter(); "
            "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False); "
            "ray.shutdown(); print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--grid", nargs="+", default=["lr=0.001,0.0003", "width=0.25,0.5"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from fkd_core import sweeps, synthetic

    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        data = Path(tmp) / "demo"
        synthetic.write_demo(data, n_train=200, n_test=20, seed=0)
        startup = ray_startup()
        for name, extra in BACKENDS.items():
            models = Path(tmp) / name
            wall = sweep(data, models, args.grid, extra, args.epochs, args.steps)
            record = sweeps.read_record(models / "_sweeps" / "bench" / "sweep.json")
            trials = record["trials"]
            assert all(t["status"] == "done" for t in trials), trials
            # The same command again trains nothing: what a sweep costs besides its trials
            # (Python, TensorFlow and data loading; Ray is not started when nothing is left).
            idle = sweep(data, models, args.grid, extra, args.epochs, args.steps)
            results[name] = {
                "wall_s": round(wall, 2), "idle_s": round(idle, 2), "trials": len(trials),
                "trial_s_sum": round(sum(t["seconds"] for t in trials), 2),
                "per_trial_s": round((wall - idle) / len(trials), 2),
            }
    base = results["local"]
    for r in results.values():
        r["wall_ratio"] = round(r["wall_s"] / base["wall_s"], 2)
        r["per_trial_ratio"] = round(r["per_trial_s"] / base["per_trial_s"], 2)
    load_after = os.getloadavg()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "grid": args.grid, "epochs": args.epochs, "steps_per_epoch": args.steps,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_avg_before": [round(v, 2) for v in load_before],
        "load_avg_after": [round(v, 2) for v in load_after],
        "ray_init_shutdown_s": round(startup, 2), "backends": results,
    }
    print(f"{report['date']}, {os.cpu_count()} cores, load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"{results['local']['trials']} trials of {args.epochs} epoch x {args.steps} steps")
    print(f"ray.init + shutdown alone: {startup:.1f} s")
    print(f"{'backend':<12}{'wall s':>8}{'no-op s':>9}{'per trial s':>13}{'trial s sum':>13}"
          f"{'wall/local':>12}{'per trial/local':>17}")
    for name, r in results.items():
        print(f"{name:<12}{r['wall_s']:>8.1f}{r['idle_s']:>9.1f}{r['per_trial_s']:>13.1f}"
              f"{r['trial_s_sum']:>13.1f}{r['wall_ratio']:>12.2f}{r['per_trial_ratio']:>17.2f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
