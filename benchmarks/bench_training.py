"""Training-pipeline cost and inference rate of the default architecture, measured in one run.

Usage: python benchmarks/bench_training.py [--arch resnet] [--head heatmap] [--steps 40]

  arrays    model.fit on in-memory float arrays, no augmentation (the baseline)
  pipeline  model.fit on fkd's tf.data pipeline with the full default augmentation
  inference predict_keypoints on 2048 faces, batch 256 (images/s)

Besides wall-clock throughput it reports this process's CPU time per image, which other
jobs on the machine disturb far less: with both cores busy training, the extra CPU time the
pipeline spends is the throughput it costs.

Both training runs use the same model, batch size and number of steps; the first epoch of
each (graph tracing) is excluded. Faces come from the demo generator.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", default="resnet")
    ap.add_argument("--head", default="heatmap")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras

    from fkd_core.architectures import create_model
    from fkd_core.augment import AugmentConfig
    from fkd_core.losses import masked_mse
    from fkd_core.predict import predict_keypoints
    from fkd_core.synthetic import generate_faces
    from fkd_core.targets import normalise_keypoints
    from fkd_core.training import make_dataset

    n = args.batch_size * args.steps
    images, keypoints = generate_faces(n, seed=0)
    model = create_model(args.arch, head=args.head, width=args.width)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=masked_mse)
    x = images.astype(np.float32)[..., None] / 255.0
    y = normalise_keypoints(keypoints)
    pipeline = make_dataset(images, keypoints, args.batch_size,
                            augment=AugmentConfig().to_dict(), shuffle=True)

    def fit_arrays():
        model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0, shuffle=True)

    def fit_pipeline():
        model.fit(pipeline, epochs=1, verbose=0)

    fit_arrays()  # trace both graphs before timing
    fit_pipeline()
    rates = {"arrays": [], "pipeline": []}
    cpu = {"arrays": [], "pipeline": []}
    for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
        for name, fn in (("arrays", fit_arrays), ("pipeline", fit_pipeline)):
            t, c = time.perf_counter(), time.process_time()
            fn()
            rates[name].append(n / (time.perf_counter() - t))
            cpu[name].append(1000.0 * (time.process_time() - c) / n)
    arrays, piped = max(rates["arrays"]), max(rates["pipeline"])
    cpu_arrays, cpu_piped = min(cpu["arrays"]), min(cpu["pipeline"])

    test = images[:2048] if n >= 2048 else np.resize(images, (2048, 96, 96))
    predict_keypoints(model, test[:256])
    t = time.perf_counter()
    predict_keypoints(model, test, batch_size=256)
    infer = len(test) / (time.perf_counter() - t)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, Keras {keras.__version__}")
    print(f"model: {args.arch}/{args.head} width {args.width}, {model.count_params():,} params; "
          f"batch {args.batch_size}, {args.steps} steps per epoch, best of {args.repeat}")
    print(f"train, in-memory arrays, no augmentation   {arrays:8.1f} images/s")
    print(f"train, tf.data pipeline, full augmentation {piped:8.1f} images/s")
    print(f"pipeline cost: {100 * (1 - piped / arrays):+.1f} % throughput vs arrays")
    print(f"CPU time per image: arrays {cpu_arrays:.2f} ms, pipeline {cpu_piped:.2f} ms "
          f"({100 * (cpu_piped / cpu_arrays - 1):+.1f} %; what throughput loses when the cores "
          "are saturated)")
    print(f"inference (batch 256)                      {infer:8.1f} images/s")


if __name__ == "__main__":
    main()
