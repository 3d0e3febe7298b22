"""The benchmark's cases and the child process that runs them (``benchmarks/run.py --child``).

One child runs the cases of one (backend, variant) in order, its backend chosen
by ``KERAS_BACKEND``; ``benchmarks/run.py``'s docstring describes every case.
The child prints ``START case`` when a case begins and ``RESULT {json}`` when it
ends, and goes on with the next case after one that raised.

``--dtype`` sets the dtype of the plain cases (``DTYPE_CASES``), resolved here in
the child with ``keras_t2t.precision.resolve_dtype``: ``auto`` measures the
backend this child runs. Every result records the dtype that ran (``dtype``)
and why (``dtype_reason``).
"""

import functools
import gc
import json
import os
import resource
import tempfile
import time
import traceback

import keras
import numpy as np

from keras_t2t import create_model, flops, precision, preprocess_input
from keras_t2t.resolve import resolve_model
from keras_t2t.data.digits import load_digits_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The order the cases run in inside a child (training last: it changes the weights).
CASES = ("infer_b32", "latency_b1", "tflite_b1", "tflite_int8_b1", "infer_b32_bf16", "infer_b32_bfloat16",
         "latency_b1_bfloat16", "authors_b32", "authors_bf16_blocks_b32", "train_b32", "train_b32_mixed_bf16")
# The cases --dtype sets; the others keep their own dtype.
DTYPE_CASES = ("infer_b32", "latency_b1", "train_b32")
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
BATCH_1_CASES = ("latency_b1", "latency_b1_bfloat16", "tflite_b1", "tflite_int8_b1")
DEFAULT_VARIANTS = ("t2t_vit_7", "t2t_vit_14", "t2t_vit_t_14")
# ``--cases default``: infer_b32_bf16 (~60-110 s per backend, its 256-image agreement
# check included) only for these variants; the bfloat16 target is T2T-ViT-14.
DEFAULT_BF16_VARIANTS = ("t2t_vit_14",)
FAULT_ENV = "T2T_BENCH_TEST_FAULT"
PEAK_METHOD_RESET = "VmHWM reset per case"
PEAK_METHOD_MONOTONIC = "process ru_maxrss (monotonic)"
PEAK_METHOD_PROCESS = "fresh process per case: ru_maxrss (import and model build included)"
# At least this many timed steps, whatever the time budget (training: a step of
# T2T-ViT_t-14 takes 5-11 s here, and steps vary little).
MIN_TIMED_STEPS = 3
MIN_TIMED_TRAIN_STEPS = 2
TRAIN_BFLOAT16_NOTE = "trained under mixed_bfloat16 (float32 variables): pure bfloat16 training is not offered"


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


def case_dtype(case, requested):
    """(the dtype ``case`` runs in, why) given ``requested`` = ``precision.resolve_dtype``'s answer
    to ``--dtype``, which only the cases of ``DTYPE_CASES`` follow."""
    dtype, reason = requested
    if case in DTYPE_CASES:
        if case == "train_b32" and dtype == "bfloat16":
            return "mixed_bfloat16", f"{reason}; {TRAIN_BFLOAT16_NOTE}"
        return dtype, reason
    if case in BF16_CASES:
        return BF16_CASES[case], "the case's own dtype (--dtype sets only " + ", ".join(DTYPE_CASES) + ")"
    if case in TFLITE_FORMATS:
        return TFLITE_FORMATS[case].removeprefix("tflite_"), f"the float32 model converted to {TFLITE_FORMATS[case]} (--dtype does not apply)"
    if case == "authors_b32":
        return "float32", "the authors' PyTorch model (--dtype does not apply)"
    if case == "authors_bf16_blocks_b32":
        return ("blocks bfloat16, T2T module float32",
                "the authors' PyTorch model, its blocks cast to bfloat16 (--dtype does not apply)")
    raise ValueError(f"unknown case {case!r}; accepted: {', '.join(CASES)}")


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
# The cases of one (backend, variant)
# --------------------------------------------------------------------------
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
    the next ones; a case in another dtype builds its own copy of it in that dtype
    (``precision.cast_model``). ``dtype`` is the ``--dtype`` value of ``DTYPE_CASES``,
    resolved by the first case that needs it (``auto``: measured on this backend)."""

    def __init__(self, backend, variant, batch_size, image_size, warmup, iterations, budget_s=0.0,
                 agreement_model=AGREEMENT_MODEL, dtype="float32"):
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
        self.requested_dtype = dtype
        self._resolved_dtype = None
        self._agreements = {}  # {dtype: the trained model's agreement columns}: the same for every case of a dtype
        self._model = None
        self._flops_per_image = None

    def float32_model(self, result=None):
        """The shared float32 model; notes in ``result`` whether this call built it."""
        built = self._model is None
        if built:
            start = time.perf_counter()
            self._model = create_model(self.variant, input_shape=self.shape, dtype="float32")
            self._model.compile(jit_compile=self.jit)
            self._flops_per_image = flops.count_flops(self._model)["total_flops"]
            if result is not None:
                result["build_s"] = time.perf_counter() - start
        if result is not None:
            result["model_built"] = built
        return self._model

    def dtype_of(self, case):
        """(dtype, reason) of ``case``; ``--dtype`` is resolved once, by the first case it sets."""
        if case in DTYPE_CASES and self._resolved_dtype is None:
            self._resolved_dtype = precision.resolve_dtype(self.requested_dtype)
        return case_dtype(case, self._resolved_dtype or (self.requested_dtype, "not resolved"))

    def agreement(self, dtype):
        """The trained model's agreement columns in ``dtype``, computed once per dtype."""
        if dtype not in self._agreements:
            self._agreements[dtype] = _top1_agreement(dtype, self.agreement_model)
        return self._agreements[dtype]

    def _inference_model(self, model, dtype, result):
        """``model`` rebuilt in ``dtype`` and prepared for inference as the commands prepare it."""
        cast = precision.cast_model(model, dtype)
        cast.compile(jit_compile=self.jit)
        precision.prepare_for_inference(cast)
        result.update(policy=dtype, compiled=bool(cast.jit_compile))
        result.update(self.agreement(dtype))
        return cast

    def run(self, case):
        if case not in CASES:
            raise ValueError(f"unknown case {case!r}")
        result = {"backend": self.backend, "variant": self.variant, "case": case}
        dtype, result["dtype_reason"] = self.dtype_of(case)
        result["dtype"] = dtype
        model = self.float32_model(result)
        batch = 1 if case in BATCH_1_CASES else self.batch_size
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

        if case in ("infer_b32", "latency_b1") and dtype == "float32":
            times = timed(lambda: np.asarray(model.predict_on_batch(images)))
            step_flops = self._flops_per_image * batch
        elif case in ("infer_b32", "latency_b1", "infer_b32_bf16", "infer_b32_bfloat16", "latency_b1_bfloat16"):
            cast = self._inference_model(model, dtype, result)
            times = timed(lambda: np.asarray(cast.predict_on_batch(images)))
            del cast
            step_flops = self._flops_per_image * batch
        elif case in AUTHORS_CASES:
            times = self._run_authors(case, images, result, timed)
            step_flops = self._flops_per_image * batch
        elif case in ("train_b32", "train_b32_mixed_bf16"):
            # train_b32 in float32 trains the shared model itself (training runs last).
            trained = model if dtype == "float32" else precision.cast_model(model, dtype)
            trained.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
                            loss="sparse_categorical_crossentropy", jit_compile=self.jit)
            labels = rng.integers(0, 1000, size=(batch,))
            if case == "train_b32_mixed_bf16":
                result["policy"] = dtype
            elif dtype != "float32":
                result.update(policy=dtype, **self.agreement(dtype))
            times = timed(lambda: float(np.asarray(trained.train_on_batch(images, labels))), MIN_TIMED_TRAIN_STEPS)
            del trained
            step_flops = flops.TRAIN_FLOPS_FACTOR * self._flops_per_image * batch
        else:  # TFLite
            times = self._run_tflite(case, model, images, result, timed)
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

    def _run_authors(self, case, images, result, timed):
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

        result.update(policy=result["dtype"], compiled=False)
        return timed(step)

    def _run_tflite(self, case, model, images, result, timed):
        if self.backend != "tensorflow":
            raise ValueError(f"{case} runs on the tensorflow backend only")
        from keras_t2t import export  # TensorFlow

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
            return timed(lambda: run(images))


def logits_model(model):
    """``model`` without its classifier activation (same weights): its logits, what every exported artifact
    outputs and what agreement is measured on."""
    if getattr(model, "classifier_activation", "x") is None:
        return model
    logits = model.__class__.from_config(dict(model.get_config(), classifier_activation=None))
    logits.set_weights(model.get_weights())
    return logits


@functools.cache
def _agreement_reference(path):
    """(the TRAINED model at ``path`` without its softmax, its validation digits, its float32
    logits): the same for every dtype, so computed once per process."""
    saved = resolve_model(path).model  # a .keras file, a preset folder or name: the one resolver
    reference = logits_model(saved)
    size = int(reference.input.shape[1])
    _, (images, _) = load_digits_images(image_size=size, validation_fraction=0.2, seed=0)
    images = preprocess_input(images)
    return reference, images, np.asarray(reference.predict(images, batch_size=128, verbose=0), "float64")


def _top1_agreement(dtype, path=AGREEMENT_MODEL):
    """Top-1 agreement and largest relative logit error of the TRAINED model at ``path`` in
    ``dtype`` against itself in float32, on the validation digits at its own image size."""
    reference, images, want = _agreement_reference(path)
    model = precision.prepare_for_inference(precision.cast_model(reference, dtype))
    got = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(model.predict(images, batch_size=128, verbose=0),
                                                                "float32")), "float64")
    return {
        "agreement_model": os.path.relpath(path, REPO) if path.startswith(REPO) else path,
        "agreement_images": len(images),
        "top1_agreement": float(np.mean(want.argmax(-1) == got.argmax(-1))),
        "max_relative_logit_error": float(np.abs(got - want).max() / np.abs(want).max()),
    }


# --------------------------------------------------------------------------
# The child process
# --------------------------------------------------------------------------
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
