"""Where the replicas come from, per backend.

- TensorFlow: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several
  workers; else ``MirroredStrategy`` over all visible GPUs (two or more), or over
  ``cpu_replicas`` logical CPU devices; else the default one-device strategy.
- JAX: ``keras.distribution.DataParallel`` over the visible devices (with
  ``cpu_replicas``, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be
  set before JAX starts; ``prepare_environment`` does that).
- PyTorch: one device (Keras 3 has no multi-device data parallelism for torch).

``setup_distribution`` must run before any other TensorFlow or JAX work: device
configuration cannot change once a runtime has started.
"""

import contextlib
import dataclasses
import json
import os


@dataclasses.dataclass
class Distribution:
    backend: str
    kind: str  # "default", "mirrored", "multi_worker", "jax_data_parallel", "torch_single"
    num_replicas: int
    devices: list
    strategy: object = None  # the tf.distribute strategy (TensorFlow backend)
    num_workers: int = 1
    worker_index: int = 0

    @property
    def is_chief(self):
        return self.worker_index == 0

    def scope(self):
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    def describe(self):
        names = {
            "default": "one device",
            "mirrored": "tf.distribute.MirroredStrategy",
            "multi_worker": "tf.distribute.MultiWorkerMirroredStrategy",
            "jax_data_parallel": "keras.distribution.DataParallel",
            "torch_single": "one device (the PyTorch backend trains on a single device)",
        }
        workers = f", {self.num_workers} workers (this is worker {self.worker_index})" if self.num_workers > 1 else ""
        return f"{names[self.kind]}: {self.num_replicas} replica(s){workers}; devices {', '.join(self.devices)}"

    def check_batch_size(self, global_batch_size):
        if global_batch_size % self.num_replicas:
            raise ValueError(
                f"The global batch size {global_batch_size} does not split over {self.num_replicas} replicas "
                f"({self.describe()}); use a multiple of {self.num_replicas}, e.g. "
                f"{max(self.num_replicas, global_batch_size // self.num_replicas * self.num_replicas)}."
            )
        return global_batch_size // self.num_replicas


def tf_config_workers(environ=None):
    """The number of workers ``TF_CONFIG`` names (1 when it is unset), or a ValueError."""
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "")
    if not text.strip():
        return 1, 0
    try:
        config = json.loads(text)
        workers = config.get("cluster", {}).get("worker", [])
        task = config.get("task", {})
    except (ValueError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is not valid JSON with cluster.worker and task: {error}") from error
    if len(workers) > 1 and task.get("type", "worker") != "worker":
        raise ValueError(f"TF_CONFIG task type {task.get('type')!r} is not supported; only 'worker'.")
    return max(len(workers), 1), int(task.get("index", 0))


def prepare_environment(backend, cpu_replicas=0):
    """Environment that must be set before the backend is imported (JAX host devices)."""
    if backend == "jax" and cpu_replicas and cpu_replicas > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cpu_replicas}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


def setup_distribution(cpu_replicas=0, backend=None):
    import keras

    backend = backend or keras.backend.backend()
    if cpu_replicas is not None and cpu_replicas < 0:
        raise ValueError(f"cpu_replicas must be >= 0; got {cpu_replicas}.")
    if backend == "tensorflow":
        return _tensorflow(cpu_replicas)
    if backend == "jax":
        return _jax(cpu_replicas)
    if cpu_replicas and cpu_replicas > 1:
        raise ValueError(
            f"--cpu-replicas {cpu_replicas} needs the TensorFlow or JAX backend; the PyTorch backend "
            "trains on one device."
        )
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    return Distribution(backend, "torch_single", 1, [device])


def _tensorflow(cpu_replicas):
    import tensorflow as tf

    workers, index = tf_config_workers()
    if workers > 1:
        if cpu_replicas and cpu_replicas > 1:
            raise ValueError("--cpu-replicas cannot be combined with a multi-worker TF_CONFIG.")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        _patch_keras_for_multi_worker()
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["/cpu:0"]
        return Distribution("tensorflow", "multi_worker", strategy.num_replicas_in_sync, devices, strategy,
                            workers, index)
    if cpu_replicas and cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)]
            )
        except RuntimeError as error:
            if len(tf.config.list_logical_devices("CPU")) < cpu_replicas:
                raise RuntimeError(
                    f"--cpu-replicas {cpu_replicas}: TensorFlow had already started with "
                    f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s); set it up before any "
                    "other TensorFlow work (a fresh process)."
                ) from error
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
        return Distribution("tensorflow", "mirrored", cpu_replicas, devices, strategy)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        return Distribution("tensorflow", "mirrored", strategy.num_replicas_in_sync, [g.name for g in gpus], strategy)
    device = gpus[0].name if gpus else "/cpu:0"
    return Distribution("tensorflow", "default", 1, [device], None)


def _jax(cpu_replicas):
    import jax
    import keras

    devices = jax.devices()
    if cpu_replicas and cpu_replicas > 1:
        devices = jax.devices("cpu")
        if len(devices) < cpu_replicas:
            raise RuntimeError(
                f"--cpu-replicas {cpu_replicas}: JAX sees {len(devices)} CPU device(s). Set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={cpu_replicas} before JAX is imported "
                "(training/train.py does; in a notebook set it before importing keras)."
            )
        devices = devices[:cpu_replicas]
    names = [str(d) for d in devices]
    if len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return Distribution("jax", "jax_data_parallel", len(devices), names)
    return Distribution("jax", "default", 1, names)


_PATCHED = False


def _patch_keras_for_multi_worker():
    """Two Keras 3.15 TensorFlow-trainer bugs under MultiWorkerMirroredStrategy.

    1. ``_maybe_symbolic_build`` reduces the whole first input batch (a tuple of
       PerReplica values) with one ``strategy.reduce`` call, which the collective
       implementation cannot take; only shapes are needed, so the local value is used.
    2. ``reduce_per_replica`` averages the logged scalars with ``axis=0``, which is
       invalid for scalars; ``axis=None`` averages them across workers.
    """
    global _PATCHED
    if _PATCHED:
        return
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if tf_trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            def reduce(value):
                if getattr(value, "shape", None) is not None and value.shape.rank not in (0, None):
                    return strategy.reduce("MEAN", value, axis=0)
                return strategy.reduce("MEAN", value, axis=None)

            return tree.map_structure(reduce, values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v,
                    batch,
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    _PATCHED = True


def make_train_input(distribution, build_dataset, global_batch_size):
    """The training input for ``model.fit``: one pipeline per worker under tf.distribute.

    ``build_dataset(batch_size, num_shards, shard_index)`` returns a tf.data.Dataset.
    """
    distribution.check_batch_size(global_batch_size)
    if distribution.strategy is not None:
        import tensorflow as tf

        def fn(context):
            return build_dataset(
                context.get_per_replica_batch_size(global_batch_size),
                context.num_input_pipelines,
                context.input_pipeline_id,
            )

        return distribution.strategy.distribute_datasets_from_function(
            fn, options=tf.distribute.InputOptions(experimental_fetch_to_device=True)
        )
    return build_dataset(global_batch_size, 1, 0)


def shard_validation(distribution, dataset):
    """Validation under MultiWorkerMirroredStrategy: each worker evaluates its share of the batches."""
    if distribution.kind == "multi_worker":
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)
    return dataset


__all__ = ["Distribution", "setup_distribution", "prepare_environment", "make_train_input", "tf_config_workers"]
