"""Where a training runs: TensorFlow's distribution strategies and mixed precision.

``fkd train --strategy``:

- ``default``: one device (the first GPU if any, else the CPU), as before strategies existed;
- ``mirrored``: :class:`tf.distribute.MirroredStrategy`, one replica per local GPU;
- ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` across the machines
  that ``TF_CONFIG`` lists, each running the same ``fkd train`` command;
- ``auto``: ``multiworker`` when ``TF_CONFIG`` is set, else ``mirrored`` with more than one
  GPU, else ``default``.

``--batch-size`` is per replica: the global batch is ``batch_size × replicas`` and the
learning rate is scaled linearly with it (``lr × replicas``), so one epoch takes fewer steps
of proportionally larger updates. With one replica nothing changes.

``--precision mixed`` computes in float16 with float32 weights (Keras's ``mixed_float16``
policy; the output layers stay float32). It is refused without a GPU: on a CPU float16 is
no faster, only less accurate, and a run would record a precision that bought nothing.
Runs are saved and scored as float32 models whatever they trained with, so they load and
predict the same on any machine.

Every worker of a multi-worker training runs the whole training (collective operations need
all of them); only the chief writes the run folder, the others write into a throwaway
temporary folder, as TensorFlow's multi-worker guide recommends.

``TF_CONFIG`` is untrusted input and is validated here, with errors naming it. A
``MultiWorkerMirroredStrategy`` can only be made before TensorFlow runs anything, so
:func:`prepare` makes at most one strategy per process and keeps it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed")
#: The strategies a run records (``auto`` is resolved before it trains).
USED_STRATEGIES = STRATEGIES[1:]
_ADDRESS = re.compile(r"[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}")
_TASK_TYPES = ("chief", "worker")


class DistributeError(ValueError):
    """A strategy or precision that cannot be used here; the message says why."""


def read_tf_config(text: str) -> dict:
    """``TF_CONFIG`` checked: ``{"cluster": {"worker": ["host:port", ...], "chief": [...]},
    "task": {"type": "worker", "index": i}}``, this task inside the cluster."""
    where = "TF_CONFIG"
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise DistributeError(f"{where} is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DistributeError(f"{where} must be a JSON object")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise DistributeError(f"{where}: cluster must be an object of task lists")
    for kind, addresses in cluster.items():
        if kind not in _TASK_TYPES:
            raise DistributeError(f"{where}: cluster.{kind}: only {' and '.join(_TASK_TYPES)} "
                                  "tasks train")
        if not isinstance(addresses, list) or not addresses or not all(
                isinstance(a, str) and _ADDRESS.fullmatch(a) for a in addresses):
            raise DistributeError(f"{where}: cluster.{kind} must list HOST:PORT addresses")
    if len(cluster.get("chief", [])) > 1:
        raise DistributeError(f"{where}: cluster.chief lists more than one chief")
    if not isinstance(task, dict):
        raise DistributeError(f"{where}: task must be an object {{type, index}}")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise DistributeError(f"{where}: task.type {kind!r} is not in the cluster")
    if isinstance(index, bool) or not isinstance(index, int) or not \
            0 <= index < len(cluster[kind]):
        raise DistributeError(f"{where}: task.index must be 0 to {len(cluster[kind]) - 1}")
    return config


def is_chief(config: dict) -> bool:
    """The task that writes: the chief, or worker 0 of a cluster without one."""
    kind, index = config["task"]["type"], config["task"]["index"]
    return kind == "chief" or (kind == "worker" and index == 0
                               and "chief" not in config["cluster"])


def resolve(strategy: str) -> str:
    """The strategy ``auto`` stands for on this machine (others are checked and returned)."""
    if strategy not in STRATEGIES:
        raise DistributeError(f"strategy must be one of {', '.join(STRATEGIES)}, "
                              f"not {strategy!r}")
    if strategy != "auto":
        return strategy
    if os.environ.get("TF_CONFIG"):
        return "multiworker"
    import tensorflow as tf

    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"


@dataclass
class Placement:
    """The strategy a training runs under, what it spans, and whether this process writes."""

    name: str
    strategy: object
    replicas: int
    workers: int
    chief: bool
    devices: list
    cluster: dict | None = None

    def record(self, precision: str, batch_size: int, lr: float) -> dict:
        """config.json's ``distribute``: how the run was spread and scaled."""
        return {
            "strategy": self.name, "replicas": self.replicas, "workers": self.workers,
            "devices": list(self.devices), "precision": precision,
            "batch_size_per_replica": batch_size, "global_batch_size": self.global_batch(
                batch_size), "lr": lr, "scaled_lr": self.scaled_lr(lr),
            **({"cluster": self.cluster} if self.cluster else {}),
        }

    def global_batch(self, batch_size: int) -> int:
        return batch_size * self.replicas

    def scaled_lr(self, lr: float) -> float:
        return lr * self.replicas


_PREPARED: dict[str, Placement] = {}


def prepare(strategy: str = "auto") -> Placement:
    """The (one, kept) strategy for ``strategy``, made now: call it before TensorFlow runs
    anything when the strategy may be ``multiworker``."""
    name = resolve(strategy)
    if name in _PREPARED:
        return _PREPARED[name]
    if _PREPARED and "multiworker" in (name, *_PREPARED):
        raise DistributeError(f"this process already trains with the {next(iter(_PREPARED))} "
                              f"strategy; {name} needs a process of its own")
    import tensorflow as tf

    cluster = None
    if name == "multiworker":
        text = os.environ.get("TF_CONFIG")
        if not text:
            raise DistributeError("--strategy multiworker needs TF_CONFIG (the cluster's "
                                  "addresses and this task's place in it)")
        config = read_tf_config(text)
        try:
            made = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:  # TensorFlow ran before the strategy was made
            raise DistributeError(f"the multi-worker strategy could not start: {exc}") from None
        _patch_keras_multiworker(made)
        chief, cluster = is_chief(config), config["cluster"]
        workers = sum(len(v) for v in cluster.values())
    elif name == "mirrored":
        made, chief, workers = tf.distribute.MirroredStrategy(), True, 1
    else:
        made, chief, workers = tf.distribute.get_strategy(), True, 1
    if name == "default":  # the one device Keras places a training on
        devices = [d.name for d in (tf.config.list_logical_devices("GPU")
                                    or tf.config.list_logical_devices("CPU"))[:1]]
    else:
        devices = list(made.extended.worker_devices)
    placement = Placement(name, made, int(made.num_replicas_in_sync), workers, chief,
                          [str(d) for d in devices], cluster)
    _PREPARED[name] = placement
    return placement


def install_conflict() -> str | None:
    """What to do when both TensorFlow builds are installed, else None.

    ``tensorflow-cpu`` (fkd's base dependency on x86_64) and ``tensorflow`` (what
    ``fkd[gpu]`` adds) write the same ``tensorflow`` package: the build in use is whichever
    was installed last, and uninstalling one deletes the other's files."""
    from importlib import metadata

    found = {}
    for name in ("tensorflow", "tensorflow-cpu"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if len(found) < 2:
        return None
    return ("both tensorflow and tensorflow-cpu are installed and share one set of files, "
            "so the CUDA build may not be the one in place; for GPUs run: pip uninstall -y "
            "tensorflow-cpu && pip install --force-reinstall --no-deps "
            f"tensorflow=={found['tensorflow']}")


def check_precision(precision: str) -> str:
    """``precision`` if this machine can use it (``mixed`` needs a GPU)."""
    if precision not in PRECISIONS:
        raise DistributeError(f"precision must be one of {', '.join(PRECISIONS)}, "
                              f"not {precision!r}")
    if precision == "mixed":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            hint = install_conflict()
            raise DistributeError("--precision mixed needs a GPU (TensorFlow sees none here): "
                                  "on a CPU float16 is no faster, only less accurate"
                                  + (f"; {hint}" if hint else ""))
    return precision


@contextlib.contextmanager
def building(placement: Placement, precision: str):
    """Make the model and its optimizer inside: the strategy's scope and, for ``mixed``,
    Keras's ``mixed_float16`` policy (the previous policy is put back after)."""
    import keras

    previous = keras.config.dtype_policy()
    if precision == "mixed":
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with placement.strategy.scope():
            yield
    finally:
        keras.config.set_dtype_policy(previous)


def shard_by_data(dataset):
    """A ``tf.data`` pipeline of in-memory arrays split between workers by batch: it has no
    files, so TensorFlow's default auto-sharding by file would only warn and fall back."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@contextlib.contextmanager
def throwaway_folder():
    """Where a non-chief worker writes its copy of the run: removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fkd-worker-") as folder:
        yield Path(folder)


def _patch_keras_multiworker(strategy) -> None:
    """Two fixes that let Keras 3's ``fit`` run under ``MultiWorkerMirroredStrategy``
    (keras-team/keras#20585; Keras 3.15 with TensorFlow 2.21 still fails without them):

    - ``fit`` builds the model from a first batch that it all-reduces as a whole
      structure, which the collective strategy cannot; the local replica's batch has the
      same shapes and is all the build needs;
    - the step's scalar logs are reduced with ``axis=0``, which a scalar has not; they are
      averaged across workers without an axis.

    Applied only in a process that has made the multi-worker strategy."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_fkd_multiworker_patched", False):
        return
    build, reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0], batch)
                break
            iterator = None
        return build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(
                strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._fkd_multiworker_patched = True
