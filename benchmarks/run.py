"""T2T-ViT speed benchmarks on the Keras 3 backends (CPU).

    python benchmarks/run.py [--variants t2t_vit_7,t2t_vit_14,t2t_vit_t_14]
                             [--backends tensorflow,jax,torch] [--cases default]
                             [--quick] [--process-per-case]
                             [--output-dir benchmarks/results]

Every (backend, variant) pair runs its cases in sequence in one child process
(``KERAS_BACKEND`` set): the framework is imported and the float32 model built
once, and the cases reuse it. The order is infer_b32, latency_b1, tflite_b1,
tflite_int8_b1, infer_b32_bf16, train_b32 (training last: it leaves optimizer
state and changed weights behind). Before each case the child writes "5" to
``/proc/self/clear_refs``, which resets the kernel's peak RSS (``VmHWM``) to
the current RSS, so ``peak_rss_mb`` (``VmHWM`` at the end of the case) is the
peak of that case, on top of ``rss_start_mb`` (``VmRSS`` when it started);
where ``clear_refs`` is not writable it falls back to the process's monotonic
``ru_maxrss``. ``--process-per-case`` runs every case in a fresh process
instead, as before: ``peak_rss_mb`` is then that process's ``ru_maxrss``,
framework import and model build included.

The parent reads the child's ``START case`` / ``RESULT {json}`` lines as they
come. A case that raises is reported failed (traceback tail) and the child goes
on with the next one; a case that runs longer than ``--timeout`` or whose
child dies (crash, OOM kill) is reported failed, and a new child runs the
pair's remaining cases. Cases:

* ``infer_b32``: ``predict_on_batch`` images/s at batch 32 (compiled: XLA
  ``jit_compile`` on TensorFlow, jitted on JAX; eager on torch).
* ``latency_b1``: median ``predict_on_batch`` latency at batch 1, same compilation.
* ``tflite_b1`` (TensorFlow only): float32 ``.tflite`` median latency at batch 1
  with the LiteRT interpreter (all cores).
* ``tflite_int8_b1`` (TensorFlow only): the same with dynamic-range int8 weights
  (``tflite_dynamic_int8``).
* ``infer_b32_bf16``: as ``infer_b32`` under the ``mixed_bfloat16`` policy (its
  own model, float32 model's weights).
* ``infer_b32_bfloat16`` / ``latency_b1_bfloat16``: as ``infer_b32`` / ``latency_b1``
  with the model built in ``dtype="bfloat16"`` (weights in bfloat16, the float32
  islands of ``keras_t2t.precision``), prepared by ``precision.prepare_for_inference``
  (TensorFlow: no XLA, so that oneDNN's bfloat16 matmul runs).
* ``train_b32_mixed_bf16``: as ``train_b32`` under ``mixed_bfloat16`` (its own model).
* ``authors_b32`` / ``authors_bf16_blocks_b32`` (torch backend, performer variants):
  the authors' model in plain PyTorch (``benchmarks/authors_torch.py``), eager, in
  float32 / with its blocks in bfloat16 and its T2T module in float32: the anchor
  of the bfloat16 targets, measured in the same run.
* The bfloat16 cases' agreement columns come from a TRAINED model, not the random
  weights they time: the package's digits-trained t2t_vit_mini
  (``tests/export/fixtures/digits_t2t_vit_mini/``, or ``--agreement-model``) in the case's
  dtype against itself in float32, on the 359 validation digits.
* ``train_b32``: ``train_on_batch`` images/s at batch 32, AdamW, after warm-up.

``--cases default`` (the default) runs every case but ``infer_b32_bf16`` for
every variant, and ``infer_b32_bf16`` for the variants of
``DEFAULT_BF16_VARIANTS`` (T2T-ViT-14) only; ``--quick`` runs every case;
an explicit ``--cases a,b`` applies to every variant.

For T2T-ViT_t variants every result also gives ``attention_materialised_mb``:
the float32 (B, 1, N, N) logits of the first T2T layer's N-token attention
(3136 at 224: 1.26 GB at batch 32), what materialising it would need on top of
the rest; compare with ``peak_rss_mb``.

Achieved GFLOP/s use ``keras_t2t.flops`` (training: 3 x forward, an estimate)
and are compared with the machine's float32 and bfloat16 matmul peak: the best
over a few matmul shapes (2048^3, 4096^3 and a transformer block's
6304x384 @ 384x1152), measured at the start and at the end of the run, the
highest reading of each dtype. Writes ``results.json``, ``results.md`` and
``results.png`` to ``--output-dir``. ``--quick`` (batch 4, one warm-up, two
timed steps, one small variant, a small matmul peak) only checks that
everything runs; its numbers mean nothing.

Test hook (for tests/test_benchmarks.py, read by the child only): the
environment variable ``T2T_BENCH_TEST_FAULT=case:action[,case:action]`` makes
the child, at the start of that case, raise (``raise``), exit at once without
a result (``exit``, as a crash would) or sleep (``sleep=SECONDS``).
"""

import argparse
import datetime
import gc
import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.machine import cpu_info, cpu_model, package_versions  # noqa: E402  (needs REPO on sys.path)

BACKENDS = ("tensorflow", "jax", "torch")
# The order the cases run in inside a child (training last: it changes the weights).
CASES = ("infer_b32", "latency_b1", "tflite_b1", "tflite_int8_b1", "infer_b32_bf16", "infer_b32_bfloat16",
         "latency_b1_bfloat16", "authors_b32", "authors_bf16_blocks_b32", "train_b32", "train_b32_mixed_bf16")
# The authors' model in plain PyTorch (benchmarks/authors_torch.py): torch backend, performer variants only.
AUTHORS_CASES = ("authors_b32", "authors_bf16_blocks_b32")
# authors_torch.CONFIGS' names (that module imports torch; the parent process does not).
AUTHORS_VARIANTS = ("t2t_vit_7", "t2t_vit_10", "t2t_vit_12", "t2t_vit_14", "t2t_vit_19", "t2t_vit_24")
# The bfloat16 cases: by default only for DEFAULT_BF16_VARIANTS. {case: dtype policy}
BF16_CASES = {"infer_b32_bf16": "mixed_bfloat16", "infer_b32_bfloat16": "bfloat16",
              "latency_b1_bfloat16": "bfloat16", "train_b32_mixed_bf16": "mixed_bfloat16"}
# The trained model of the bfloat16 cases' agreement columns (the README's main job, saved by the trainer).
AGREEMENT_MODEL = os.path.join(REPO, "tests", "export", "fixtures", "digits_t2t_vit_mini", "model.keras")
# TFLite cases: the export format each converts to (keras_t2t.export).
TFLITE_FORMATS = {"tflite_b1": "tflite_float32", "tflite_int8_b1": "tflite_dynamic_int8"}
DEFAULT_VARIANTS = ("t2t_vit_7", "t2t_vit_14", "t2t_vit_t_14")
# ``--cases default``: infer_b32_bf16 (~60-110 s per backend, its 256-image agreement
# check included) only for these variants; the issue's bfloat16 target is T2T-ViT-14.
DEFAULT_BF16_VARIANTS = ("t2t_vit_14",)
# Matmul shapes (m, k, n) of the machine peak: square ones and a transformer block's qkv
# projection (32 images x 197 tokens, 384 -> 3 x 384).
PEAK_SHAPES = ((2048, 2048, 2048), (4096, 4096, 4096), (6304, 384, 1152))
QUICK_PEAK_SHAPES = ((1024, 1024, 1024),)
FAULT_ENV = "T2T_BENCH_TEST_FAULT"
PEAK_METHOD_RESET = "VmHWM reset per case"
PEAK_METHOD_MONOTONIC = "process ru_maxrss (monotonic)"
PEAK_METHOD_PROCESS = "fresh process per case: ru_maxrss (import and model build included)"


def square_side(text):
    """The one image-size grammar (N or HxW) of every command; the benchmark times square images."""
    # Imported here: importing keras_t2t imports Keras, which the parent process must not (children pick backends).
    from keras_t2t.cli.args import image_size

    height, width = image_size(text)
    if height != width:
        raise argparse.ArgumentTypeError(f"the benchmark times square images: give N or NxN, got {text!r}")
    return height


def select_cases(spec, variant, backend, quick=False):
    """The cases to run for ``variant`` on ``backend``, in running order.

    ``spec`` is ``"default"`` (every case but ``infer_b32_bf16``, which only the
    variants of DEFAULT_BF16_VARIANTS get; every case with ``quick``) or a
    comma-separated list applied to every variant. TFLite cases exist on the
    tensorflow backend only and are left out elsewhere."""
    if spec == "default":
        wanted = set(CASES)
        if not quick and variant not in DEFAULT_BF16_VARIANTS:
            wanted -= set(BF16_CASES) | set(AUTHORS_CASES)
    else:
        wanted = {c for c in spec.split(",") if c}
        unknown = sorted(wanted - set(CASES))
        if unknown:
            raise ValueError(f"unknown case(s) {', '.join(unknown)}; accepted: default or {', '.join(CASES)}")
    def runs_here(case):
        if case in TFLITE_FORMATS:
            return backend == "tensorflow"
        if case in AUTHORS_CASES:
            return backend == "torch" and variant in AUTHORS_VARIANTS
        return True

    return [c for c in CASES if c in wanted and runs_here(c)]


# --------------------------------------------------------------------------
# Memory: /proc/self/status
# --------------------------------------------------------------------------
def _status_mb(key):
    """``VmRSS`` / ``VmHWM`` of this process in MiB (None without /proc)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _maxrss_mb():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss():
    """Resets the kernel's peak RSS (VmHWM) of this process to its current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return _status_mb("VmHWM") is not None


def _current_rss_mb():
    rss = _status_mb("VmRSS")
    return _maxrss_mb() if rss is None else rss


# --------------------------------------------------------------------------
# Child: the cases of one (backend, variant)
# --------------------------------------------------------------------------
# At least this many timed steps, whatever the time budget (training: a step of
# T2T-ViT_t-14 takes 5-11 s here, and steps vary little).
MIN_TIMED_STEPS = 3
MIN_TIMED_TRAIN_STEPS = 2


def _time_steps(step, warmup, iterations, budget_s, result, min_steps=MIN_TIMED_STEPS):
    """Runs ``warmup`` untimed steps, then timed steps: ``iterations`` of them, or fewer
    (never below ``min_steps``) once the timed steps have used ``budget_s`` seconds
    (0 = no budget). Returns the step times; notes the counts in ``result``."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    result["warmup_s"] = time.perf_counter() - start
    times = []
    while len(times) < iterations:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        if budget_s and sum(times) >= budget_s and len(times) >= min(min_steps, iterations):
            break
    result["timed_steps"] = len(times)
    return times


class CaseRunner:
    """Runs the cases of one (backend, variant) in this process. The float32 model is
    built (and compiled for inference) by the first case that needs it and reused by
    the next ones; ``infer_b32_bf16`` builds its own mixed_bfloat16 model."""

    def __init__(self, backend, variant, batch_size, image_size, warmup, iterations, budget_s=0.0,
                 agreement_model=AGREEMENT_MODEL):
        import keras

        assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
        # The same initial weights on every run and backend: the bfloat16 agreement of a
        # random model depends on them (near-tied scores).
        keras.utils.set_random_seed(0)
        self.backend, self.variant = backend, variant
        self.batch_size, self.image_size = batch_size, image_size
        self.warmup, self.iterations, self.budget_s = warmup, iterations, budget_s
        self.shape = (image_size, image_size, 3)
        self.jit = backend in ("tensorflow", "jax")
        self.agreement_model = agreement_model
        self._agreements = {}  # {dtype: the trained model's agreement columns}: the same for every case of a dtype
        self._model = None
        self._flops_per_image = None

    def _build(self, policy):
        from keras_t2t import create_model

        return create_model(self.variant, input_shape=self.shape, dtype=policy)

    def float32_model(self, result=None):
        """The shared float32 model; notes in ``result`` whether this call built it."""
        built = self._model is None
        if built:
            from keras_t2t import flops

            start = time.perf_counter()
            self._model = self._build("float32")
            self._model.compile(jit_compile=self.jit)
            self._flops_per_image = flops.count_flops(self._model)["total_flops"]
            if result is not None:
                result["build_s"] = time.perf_counter() - start
        if result is not None:
            result["model_built"] = built
        return self._model

    def run(self, case):
        import keras
        import numpy as np

        from keras_t2t import flops

        if case not in CASES:
            raise ValueError(f"unknown case {case!r}")
        result = {"backend": self.backend, "variant": self.variant, "case": case}
        model = self.float32_model(result)
        batch = 1 if case in ("latency_b1", "latency_b1_bfloat16") + tuple(TFLITE_FORMATS) else self.batch_size
        rng = np.random.default_rng(0)
        images = rng.standard_normal((batch,) + self.shape).astype("float32")
        result.update(
            batch_size=batch,
            image_size=self.image_size,
            warmup=self.warmup,
            iterations=self.iterations,
            flops_per_image=self._flops_per_image,
            rss_after_build_mb=_current_rss_mb(),
        )
        if model.t2t_type == "transformer":
            tokens = model.get_layer("tokens_to_token").stage_grids(self.image_size, self.image_size)[0]
            result["attention_materialised_mb"] = batch * (tokens[0] * tokens[1]) ** 2 * 4 / 2**20
        result["compiled"] = TFLITE_FORMATS.get(case, self.jit)

        def timed(step, min_steps=MIN_TIMED_STEPS):
            return _time_steps(step, self.warmup, self.iterations, self.budget_s, result, min_steps)

        if case in ("infer_b32", "latency_b1"):
            times = timed(lambda: np.asarray(model.predict_on_batch(images)))
            step_flops = self._flops_per_image * batch
        elif case in ("infer_b32_bf16", "infer_b32_bfloat16", "latency_b1_bfloat16"):
            from keras_t2t import precision

            bf16 = precision.cast_model(model, BF16_CASES[case])
            bf16.compile(jit_compile=self.jit)
            precision.prepare_for_inference(bf16)
            result.update(policy=BF16_CASES[case], compiled=bool(bf16.jit_compile))
            dtype = BF16_CASES[case]
            if dtype not in self._agreements:
                self._agreements[dtype] = _top1_agreement(dtype, self.agreement_model)
            result.update(self._agreements[dtype])
            times = timed(lambda: np.asarray(bf16.predict_on_batch(images)))
            del bf16
            step_flops = self._flops_per_image * batch
        elif case in AUTHORS_CASES:
            import torch

            from benchmarks import authors_torch

            if self.backend != "torch":
                raise ValueError(f"{case} runs on the torch backend only")
            anchor = authors_torch.T2TViT(self.variant, image_size=self.image_size).eval()
            if case == "authors_bf16_blocks_b32":
                anchor = authors_torch.BlocksInBfloat16(anchor).eval()
            pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

            def step():
                with torch.no_grad():
                    return anchor(pixels).float().numpy()

            result.update(policy="float32" if case == "authors_b32" else "blocks bfloat16, T2T module float32",
                          compiled=False)
            times = timed(step)
            del anchor
            step_flops = self._flops_per_image * batch
        elif case == "train_b32_mixed_bf16":
            from keras_t2t import precision

            mixed = precision.cast_model(model, "mixed_bfloat16")
            mixed.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
                          loss="sparse_categorical_crossentropy", jit_compile=self.jit)
            labels = rng.integers(0, 1000, size=(batch,))
            result["policy"] = "mixed_bfloat16"
            times = timed(lambda: float(np.asarray(mixed.train_on_batch(images, labels))), MIN_TIMED_TRAIN_STEPS)
            del mixed
            step_flops = flops.TRAIN_FLOPS_FACTOR * self._flops_per_image * batch
        elif case == "train_b32":
            labels = rng.integers(0, 1000, size=(batch,))
            model.compile(
                optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
                loss="sparse_categorical_crossentropy",
                jit_compile=self.jit,
            )
            times = timed(lambda: float(np.asarray(model.train_on_batch(images, labels))), MIN_TIMED_TRAIN_STEPS)
            step_flops = flops.TRAIN_FLOPS_FACTOR * self._flops_per_image * batch
        else:  # TFLite
            if self.backend != "tensorflow":
                raise ValueError(f"{case} runs on the tensorflow backend only")
            from keras_t2t import export

            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                classifier = export.classifier_for_export(model)
                saved = os.path.join(tmp, "saved_model")
                export.write_saved_model(classifier, saved, uint8_signature=False)
                path = os.path.join(tmp, "model.tflite")
                with open(path, "wb") as handle:
                    handle.write(export.convert_tflite(saved, TFLITE_FORMATS[case].removeprefix("tflite_")))
                result["convert_s"] = time.perf_counter() - start
                result["tflite_mb"] = os.path.getsize(path) / 1e6
                run = export.tflite_runner(path)
                times = timed(lambda: run(images))
                del run, classifier
            step_flops = self._flops_per_image
        median = float(np.median(times))
        result.update(
            step_s_median=median,
            step_s_min=float(np.min(times)),
            images_per_s=batch / median,
            latency_ms=1000.0 * median,
            achieved_gflops=step_flops / median / 1e9,
            status="ok",
        )
        return result


def _top1_agreement(dtype, path=AGREEMENT_MODEL):
    """Top-1 agreement and largest relative logit error of the TRAINED model at ``path`` in
    ``dtype`` against itself in float32, on the validation digits at its own image size."""
    import keras
    import numpy as np

    from keras_t2t import precision, preprocess_input
    from keras_t2t.data.digits import load_digits_images

    saved = keras.saving.load_model(path, compile=False)
    reference = saved.__class__.from_config(dict(saved.get_config(), classifier_activation=None))
    reference.set_weights(saved.get_weights())
    model = precision.prepare_for_inference(precision.cast_model(reference, dtype))
    size = int(reference.input.shape[1])
    _, (images, _) = load_digits_images(image_size=size, validation_fraction=0.2, seed=0)
    images = preprocess_input(images)
    want = np.asarray(reference.predict(images, batch_size=128, verbose=0), "float64")
    got = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(model.predict(images, batch_size=128, verbose=0),
                                                                "float32")), "float64")
    return {
        "agreement_model": os.path.relpath(path, REPO) if path.startswith(REPO) else path,
        "agreement_images": int(len(images)),
        "top1_agreement": float(np.mean(want.argmax(-1) == got.argmax(-1))),
        "max_relative_logit_error": float(np.abs(got - want).max() / np.abs(want).max()),
    }


def _test_faults():
    """The test hook: ``T2T_BENCH_TEST_FAULT=case:action,...`` -> {case: action}."""
    faults = {}
    for item in os.environ.get(FAULT_ENV, "").split(","):
        if item.strip():
            case, _, action = item.strip().partition(":")
            faults[case] = action
    return faults


def _apply_fault(action):
    if action == "raise":
        raise RuntimeError(f"fault injected by {FAULT_ENV} (test hook)")
    if action == "exit":
        os._exit(3)
    if action.startswith("sleep="):
        time.sleep(float(action.split("=", 1)[1]))
    elif action:
        raise ValueError(f"{FAULT_ENV}: unknown action {action!r} (raise, exit or sleep=SECONDS)")


def child_main(backend, variant, cases, settings, reset_peak):
    """Runs ``cases`` in order; prints ``START case`` when one begins and ``RESULT {json}`` when it ends."""
    import importlib

    # Imported before the first case: not part of its time or memory.
    for module in ("keras", "keras_t2t"):
        importlib.import_module(module)
    faults = _test_faults()
    runner = CaseRunner(backend, variant, **settings)
    for case in cases:
        gc.collect()
        print(f"START {case}", flush=True)
        method = PEAK_METHOD_PROCESS
        if reset_peak:
            method = PEAK_METHOD_RESET if _reset_peak_rss() else PEAK_METHOD_MONOTONIC
        rss_start = _current_rss_mb()
        start = time.perf_counter()
        try:
            _apply_fault(faults.get(case, ""))
            result = runner.run(case)
        except Exception:
            result = {
                "backend": backend,
                "variant": variant,
                "case": case,
                "status": "failed",
                "error": traceback.format_exc()[-2000:],
            }
        # The kernel syncs VmHWM with the RSS counters lazily: a case that allocates little can read a
        # high-water mark a fraction of a MB below the RSS seen at its start, so both readings count.
        peak = max(_status_mb("VmHWM"), rss_start, _current_rss_mb()) if method == PEAK_METHOD_RESET else None
        result.update(
            case_s=time.perf_counter() - start,
            rss_start_mb=rss_start,
            peak_rss_mb=_maxrss_mb() if peak is None else peak,
            peak_rss_method=method,
            pid=os.getpid(),
        )
        print("RESULT " + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------
# Machine peak: large matmuls
# --------------------------------------------------------------------------
def matmul_peak(shapes=PEAK_SHAPES, repeats=3, min_time_s=0.5, when="start", only=None):
    """Matmul readings: for float32 and bfloat16 (torch; numpy float32 without it) and every
    (m, k, n) of ``shapes`` (or, with ``only`` = {dtype: shape}, that one shape per dtype),
    the GFLOP/s (2 m k n FLOPs) of the fastest of at least ``repeats`` runs (more until
    ``min_time_s`` seconds, at most 50) after one warm-up. Returns (method, readings)."""
    readings = []

    def shapes_of(dtype):
        return [tuple(only[dtype])] if only and dtype in only else shapes

    def measure(dtype, shape, matmul, a, b):
        matmul(a, b)
        times = []
        while len(times) < 50 and (len(times) < repeats or sum(times) < min_time_s):
            times.append(_timed(matmul, a, b))
        m, k, n = shape
        readings.append(
            {"when": when, "dtype": dtype, "shape": list(shape), "runs": len(times), "best_s": min(times),
             "gflops": 2 * m * k * n / min(times) / 1e9}
        )

    try:
        import torch

        method = f"torch {torch.__version__} matmul, {torch.get_num_threads()} threads"
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            for m, k, n in shapes_of(name):
                measure(name, (m, k, n), torch.matmul, torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype))
    except ImportError:
        import numpy as np

        method = f"numpy {np.__version__} matmul (torch missing: no bfloat16)"
        rng = np.random.default_rng(0)
        for m, k, n in shapes_of("float32"):
            a = rng.standard_normal((m, k)).astype("float32")
            b = rng.standard_normal((k, n)).astype("float32")
            measure("float32", (m, k, n), np.matmul, a, b)
    return method, readings


def best_shapes(readings):
    """{dtype: shape} of the fastest reading of each dtype."""
    best = {}
    for r in readings:
        if r["dtype"] not in best or r["gflops"] > best[r["dtype"]][1]:
            best[r["dtype"]] = (tuple(r["shape"]), r["gflops"])
    return {dtype: shape for dtype, (shape, _) in best.items()}


def peak_summary(method, readings, shapes, repeats):
    """The report's ``peak``: every reading, and the highest float32 / bfloat16 one."""
    peak = {"method": method, "shapes": [list(s) for s in shapes], "repeats": repeats, "readings": readings}
    for dtype in ("float32", "bfloat16"):
        values = [r["gflops"] for r in readings if r["dtype"] == dtype]
        peak[f"{dtype}_gflops"] = max(values) if values else None
        for when in ("start", "end"):
            values = [r["gflops"] for r in readings if r["dtype"] == dtype and r["when"] == when]
            peak[f"{dtype}_gflops_{when}"] = max(values) if values else None
    return peak


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# --------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------
def _pump(stream, lines):
    for line in stream:
        lines.put(line)
    lines.put(None)


def _stderr_tail(handle, chars=2000):
    handle.flush()
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - 4 * chars))
    return handle.read().decode("utf-8", "replace")[-chars:]


def _run_child(backend, variant, cases, args, on_start, on_result):
    """Runs ``cases`` of one pair in one child process until they are done, one times out
    or the child dies. Calls ``on_start(case)`` and ``on_result(result)`` as cases begin
    and end; returns the results (at least one: the case that failed, if any)."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"{backend}:{variant}:{','.join(cases)}",
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--warmup",
        str(args.warmup),
        "--iterations",
        str(args.iterations),
        "--time-budget",
        str(args.time_budget),
    ]
    if args.process_per_case:
        cmd.append("--process-per-case")
    if args.keep_freed_memory:
        cmd.append("--keep-freed-memory")
    results, pending, current = [], list(cases), None
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        lines = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        reader.start()
        spawned = last_event = previous_end = time.perf_counter()
        startup_s = None
        try:
            while pending:
                deadline = last_event + args.timeout
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    line = "TIMEOUT"
                now = time.perf_counter()
                if line is None or line == "TIMEOUT":
                    if line is None:  # stdout closed: the child is exiting; keep its own return code
                        try:
                            proc.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            pass
                    if proc.poll() is None:
                        proc.kill()
                    returncode = proc.wait()
                    case = current or pending[0]
                    if current is None:
                        on_start(case)
                    failure = {"backend": backend, "variant": variant, "case": case, "status": "failed",
                               "pid": proc.pid, "wall_s": now - previous_end}
                    if line == "TIMEOUT":
                        failure["error"] = f"timed out after {args.timeout:g} s" + (
                            "" if current else " (child start-up, before the case began)"
                        )
                    else:
                        failure["returncode"] = returncode
                        failure["error"] = _stderr_tail(stderr) + (
                            f"\nchild process died {'during the case' if current else 'before the case began'} "
                            f"(return code {returncode})"
                        )
                    on_result(failure)
                    results.append(failure)
                    break
                line = line.rstrip("\n")
                if line.startswith("START "):
                    current = line[len("START ") :]
                    if startup_s is None:
                        startup_s = now - spawned
                    on_start(current)
                    last_event = now
                elif line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT ") :])
                    # From the previous case's end (or the child's spawn: start-up included) to this one's.
                    result["wall_s"] = now - previous_end
                    if not results:
                        result["child_startup_s"] = startup_s
                    on_result(result)
                    results.append(result)
                    if result["case"] in pending:
                        pending.remove(result["case"])
                    current, last_event, previous_end = None, now, now
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            reader.join(timeout=10)
            proc.stdout.close()
    return results


def run_pair(backend, variant, cases, args, on_start, on_result):
    """All ``cases`` of one (backend, variant): one child (or one per case with
    ``--process-per-case``), and a new child for the rest after a timeout or a crash."""
    results, pending = [], list(cases)
    while pending:
        chunk = pending[:1] if args.process_per_case else pending
        done = _run_child(backend, variant, chunk, args, on_start, on_result)
        results.extend(done)
        finished = {r["case"] for r in done}
        pending = [c for c in pending if c not in finished]
    return results


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _failure(result):
    lines = (result.get("error") or "").strip().splitlines()
    return "FAILED" + (": " + lines[-1][:120].replace("|", "/") if lines else "")


def _shape_text(shape):
    m, k, n = shape
    return f"{m}^3" if m == k == n else f"{m}x{k} @ {k}x{n}"


def _minutes(seconds):
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def markdown(report):
    m, peak, settings = report["machine"], report["peak"], report["settings"]
    methods = sorted({r["peak_rss_method"] for r in report["results"] if r.get("peak_rss_method")})
    lines = [
        f"# T2T-ViT benchmarks ({'QUICK: checks only, not a measurement' if report['quick'] else 'measurement'})",
        "",
        (
            f"- date: {report['date']}; wall time of the run: {_minutes(report['wall_s'])} (cases: "
            + ", ".join(f"{b} {_minutes(s)}" for b, s in report.get("wall_s_per_backend", {}).items())
            + ")"
        ),
        (
            f"- CPU: {m['cpu_model']}, {m['cpus']} logical CPUs, bfloat16 ISA flags: "
            f"{', '.join(m.get('isa_flags') or []) or 'none'}; load average before {m['loadavg_before']}, "
            f"after {m['loadavg_after']}"
        ),
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        (
            f"- matmul peak ({peak.get('method')}; best over {', '.join(_shape_text(s) for s in peak['shapes'])}; "
            f"the highest of the readings at the start and at the end of the run): float32 "
            f"{_fmt(peak.get('float32_gflops'), '.1f')} GFLOP/s (start {_fmt(peak.get('float32_gflops_start'), '.1f')}, "
            f"end {_fmt(peak.get('float32_gflops_end'), '.1f')}), bfloat16 {_fmt(peak.get('bfloat16_gflops'), '.1f')} "
            f"GFLOP/s (start {_fmt(peak.get('bfloat16_gflops_start'), '.1f')}, "
            f"end {_fmt(peak.get('bfloat16_gflops_end'), '.1f')})"
        ),
        (
            f"- image size {settings['image_size']}, warm-up {settings['warmup']}, "
            f"timed steps: up to {settings['iterations']}, stopping after "
            f"{settings.get('time_budget_s', 0):g} s of them (at least {MIN_TIMED_STEPS}; 0 = no budget; "
            "median reported); training FLOPs = 3 x forward (estimate)"
        ),
        (
            f"- cases: {settings.get('cases')}; "
            + (
                "one process per case"
                if settings.get("process_per_case")
                else "one process per (backend, variant), cases in the table's order, model built once"
            )
            + f"; peak RSS: {', '.join(methods) or '-'} (rss at start: VmRSS when the case began)"
            + ("; keras_t2t.allocator.keep_freed_memory() in every child" if settings.get("keep_freed_memory") else "")
        ),
        "",
        "| backend | variant | case | batch | images/s | latency ms | GFLOP/s | % fp32 peak | rss at start MB "
        "| peak RSS MB | NxN attention MB | bf16 top-1 agreement (trained model) | bf16 max rel. logit error | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ok = r.get("status") == "ok"
        lines.append(
            f"| {r['backend']} | {r['variant']} | {r['case']} | {r.get('batch_size', '-')} | "
            f"{_fmt(r.get('images_per_s'), '.2f')} | {_fmt(r.get('latency_ms'), '.1f')} | "
            f"{_fmt(r.get('achieved_gflops'), '.1f')} | {_fmt(r.get('fraction_of_fp32_peak') and 100 * r['fraction_of_fp32_peak'], '.1f')} | "
            f"{_fmt(r.get('rss_start_mb'), '.0f')} | "
            f"{_fmt(r.get('peak_rss_mb'), '.0f')} | {_fmt(r.get('attention_materialised_mb'), '.0f')} | "
            f"{_fmt(None if r.get('top1_agreement') is None else 100 * r['top1_agreement'], '.1f')} | "
            f"{_fmt(None if r.get('max_relative_logit_error') is None else 100 * r['max_relative_logit_error'], '.1f')}"
            " | "
            f"{'ok' if ok else _failure(r)} |"
        )
    return "\n".join(lines) + "\n"


def chart(report, path):
    """One panel per variant: achieved GFLOP/s per case, one bar per backend, peak lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_t2t.io_utils import write_atomic

    rows = [r for r in report["results"] if r.get("status") == "ok"]
    variants = list(dict.fromkeys(r["variant"] for r in rows)) or ["(none)"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    width = 0.8 / max(1, len(backends))
    fig, axes = plt.subplots(
        1, len(variants), figsize=(4.2 * len(variants) + 1, 4.2), sharey=True, squeeze=False
    )
    for ax, variant in zip(axes[0], variants):
        # The cases this variant ran (the default runs infer_b32_bf16 for T2T-ViT-14 only).
        cases = [c for c in CASES if any(r["case"] == c and r["variant"] == variant for r in rows)]
        for b, backend in enumerate(backends):
            by_case = {r["case"]: r for r in rows if r["variant"] == variant and r["backend"] == backend}
            xs = [i + (b - (len(backends) - 1) / 2) * width for i, c in enumerate(cases) if c in by_case]
            ys = [by_case[c]["achieved_gflops"] for c in cases if c in by_case]
            ax.bar(xs, ys, width, label=backend)
        for key, style in (("float32_gflops", "--"), ("bfloat16_gflops", ":")):
            if report["peak"].get(key):
                ax.axhline(report["peak"][key], linestyle=style, color="tab:red", linewidth=1,
                           label=f"{key.split('_')[0]} matmul peak")
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, fontsize=7, rotation=35, ha="right")
        ax.set_title(variant, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("achieved GFLOP/s (matmul FLOPs / time)")
    axes[0][-1].legend(loc="upper right", fontsize=7)
    title = "T2T-ViT on the Keras backends, CPU" + (" (QUICK: not a measurement)" if report["quick"] else "")
    fig.suptitle(f"{title}: {report['machine']['cpu_model']}, {report['date'][:10]}", fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)


def main(argv=None):
    run_start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated (default: {}; quick t2t_vit_7)".format(",".join(DEFAULT_VARIANTS)),
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--cases",
        default="default",
        help="'default' (every case but the bfloat16 ones, which run for {} only; every case with --quick) "
        "or a comma-separated subset of {}, for every variant".format(",".join(DEFAULT_BF16_VARIANTS), ",".join(CASES)),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny batches, t2t_vit_7 only, every case, small matmul peak: checks that it runs",
    )
    parser.add_argument(
        "--process-per-case",
        action="store_true",
        help="a fresh process per case (slower; peak RSS of that process alone, import and build included) "
        "instead of one per (backend, variant)",
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="every child first calls keras_t2t.allocator.keep_freed_memory() (glibc: freed activations "
        "are reused instead of refaulted; faster on torch)",
    )
    parser.add_argument("--output-dir", default=os.path.join("benchmarks", "results"))
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch of the *_b32 cases (default 32; quick 4)",
    )
    parser.add_argument("--image-size", type=square_side, default=224,
                        help="input size, N or NxN (square only; default 224)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 1: the first call compiles or warms up)"
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="timed steps at most (default 10; quick 2)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help=f"seconds of timed steps per case, after which timing stops (at least {MIN_TIMED_STEPS} steps; "
        "default 3, quick 0; 0 = always --iterations; training stops after at least 2)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds per case (and for a child's start-up); a case over it is recorded failed and a new "
        "child runs the pair's remaining cases",
    )
    parser.add_argument("--agreement-model", default=AGREEMENT_MODEL,
                        help="the trained .keras model whose bfloat16 top-1 agreement with float32 the bfloat16 "
                             "cases report (default: the package's digits-trained t2t_vit_mini)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (4 if args.quick else 32)
    # One warm-up step: the first call compiles (XLA) or warms up (torch); later ones run as timed.
    args.warmup = args.warmup if args.warmup is not None else 1
    args.iterations = args.iterations or (2 if args.quick else 10)
    args.time_budget = args.time_budget if args.time_budget is not None else (0.0 if args.quick else 3.0)

    if args.child:
        backend, variant, cases = args.child.split(":")
        settings = dict(
            batch_size=args.batch_size,
            image_size=args.image_size,
            warmup=args.warmup,
            iterations=args.iterations,
            budget_s=args.time_budget,
            agreement_model=args.agreement_model,
        )
        if args.keep_freed_memory:
            from keras_t2t.allocator import keep_freed_memory

            keep_freed_memory()
        return child_main(backend, variant, cases.split(","), settings, reset_peak=not args.process_per_case)

    backends = [b for b in args.backends.split(",") if b]
    variants = [
        v
        for v in (
            args.variants or ("t2t_vit_7" if args.quick else ",".join(DEFAULT_VARIANTS))
        ).split(",")
        if v
    ]
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}; accepted: {', '.join(BACKENDS)}")
    try:
        plan = [(b, v, select_cases(args.cases, v, b, args.quick)) for b in backends for v in variants]
    except ValueError as error:
        parser.error(str(error))
    from keras_t2t.io_utils import write_atomic, write_json_atomic
    from keras_t2t import flops
    from keras_t2t.models.presets import VARIANTS

    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; accepted: {', '.join(VARIANTS)}")

    os.makedirs(args.output_dir, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "quick": args.quick,
        "settings": {
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "warmup": args.warmup,
            "iterations": args.iterations,
            "time_budget_s": args.time_budget,
            "timeout_s": args.timeout,
            "cases": args.cases,
            "process_per_case": args.process_per_case,
            "keep_freed_memory": args.keep_freed_memory,
            "train_flops_factor": flops.TRAIN_FLOPS_FACTOR,
        },
        "machine": {
            "cpu_model": cpu_model(),
            # The ISA flags that decide whether bfloat16 can be fast (AMX) or merely run (AVX512_BF16).
            "isa_flags": [f for f in ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16") if f in cpu_info()["flags"]],
            "cpus": os.cpu_count(),
            "loadavg_before": list(os.getloadavg()),
        },
        "versions": package_versions(),
    }
    shapes = QUICK_PEAK_SHAPES if args.quick else PEAK_SHAPES
    peak_kwargs = dict(shapes=shapes, repeats=3, min_time_s=0.2 if args.quick else 0.5)
    print("matmul peak (start) ...", flush=True)
    method, readings = matmul_peak(when="start", **peak_kwargs)

    def on_start(case):
        print(f"{backend} {variant} {case} ...", end=" ", flush=True)

    def on_result(r):
        if r.get("status") == "ok":
            print(
                f"{r['images_per_s']:.2f} img/s, {r['latency_ms']:.1f} ms, {r['achieved_gflops']:.1f} GFLOP/s, "
                f"RSS {r['rss_start_mb']:.0f} -> peak {r['peak_rss_mb']:.0f} MB ({r['wall_s']:.0f} s)",
                flush=True,
            )
        else:
            print(f"FAILED ({(r.get('error') or '')[-300:]}) ({r['wall_s']:.0f} s)", flush=True)

    results = []
    for backend, variant, cases in plan:
        results.extend(run_pair(backend, variant, cases, args, on_start, on_result))
    print("matmul peak (end) ...", flush=True)
    # At the end only the shape that was fastest at the start, per dtype: the drift is what counts.
    readings += matmul_peak(when="end", only=best_shapes(readings), **peak_kwargs)[1]
    report["peak"] = peak_summary(method, readings, shapes, peak_kwargs["repeats"])
    for r in results:
        if r.get("status") == "ok":
            r["fraction_of_fp32_peak"] = r["achieved_gflops"] / report["peak"]["float32_gflops"]
            if report["peak"].get("bfloat16_gflops"):
                r["fraction_of_bf16_peak"] = r["achieved_gflops"] / report["peak"]["bfloat16_gflops"]
    report["results"] = results
    report["machine"]["loadavg_after"] = list(os.getloadavg())
    for key in ("loadavg_before", "loadavg_after"):
        report["machine"][key] = [round(v, 2) for v in report["machine"][key]]
    report["wall_s"] = time.perf_counter() - run_start
    # Children only (start-up included); the rest of wall_s is the parent's imports and matmul peaks.
    report["wall_s_per_backend"] = {b: sum(r["wall_s"] for r in results if r["backend"] == b) for b in backends}

    write_json_atomic(os.path.join(args.output_dir, "results.json"), report)
    text = markdown(report)
    write_atomic(os.path.join(args.output_dir, "results.md"), lambda handle: handle.write(text.encode("utf-8")))
    chart(report, os.path.join(args.output_dir, "results.png"))
    print(f"wrote {args.output_dir}/results.json, results.md, results.png")
    per_backend = ", ".join(f"{b} {_minutes(s)}" for b, s in report["wall_s_per_backend"].items())
    print(f"total wall time: {_minutes(report['wall_s'])} ({per_backend})", flush=True)
    return 0 if all(r.get("status") == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
