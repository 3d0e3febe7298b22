"""bfloat16 where the hardware runs it fast, float32 elsewhere.

``recommended_dtype()`` reads the machine and names the dtype to build a model
in for inference:

* a GPU the backend sees with bfloat16 arithmetic (NVIDIA compute capability
  8.0 or newer, or any TPU): ``"bfloat16"``;
* a CPU with bfloat16 arithmetic (``amx_bf16``, ``avx512_bf16`` or ARM's
  ``bf16`` in ``/proc/cpuinfo``; on TensorFlow only ``amx_bf16``, see
  ``TENSORFLOW_NO_AMX_REASON``): it measures a bfloat16 and a float32 matmul of
  a T2T-ViT block's shape on the backend in use (``bfloat16_speedup``, ~0.1 s,
  once per process) and takes bfloat16 when it is at least ``MIN_SPEEDUP``
  times as fast (1.3 on torch, 2.0 on TensorFlow). Measured, not assumed from the flags: an Intel Xeon with
  AVX512_BF16 but no AMX ran bfloat16 matmuls at half the float32 rate, an AMD
  EPYC (Zen 5, family 26) with the same flag at about 4 times it (torch, 2
  threads), and AMX Xeons at 20 times it;
* JAX on a CPU, or a CPU without bfloat16 arithmetic: ``"float32"``.

How each backend runs a bfloat16 matmul on a CPU (checked with
``ONEDNN_VERBOSE=1`` and the compiled XLA program; see the README):

* PyTorch: oneDNN's bfloat16 ``brg_matmul`` (AMX kernels where the CPU has them);
  the backbone's attention runs as matmul, softmax, matmul over chunks of
  images (``layers.attention_by_batch_chunks``), 2.3x faster than torch's fused
  bfloat16 kernel on a CPU.
* TensorFlow without XLA: the same oneDNN bfloat16 matmul. With XLA (Keras'
  default ``jit_compile="auto"`` for ``predict``) no oneDNN call is made, so
  ``prepare_for_inference`` turns XLA off for bfloat16 models.
* JAX (XLA:CPU, jaxlib 0.10): every bfloat16 dot is compiled as
  convert-to-float32, a float32 dot, convert back; no bfloat16 path, so
  bfloat16 only adds the conversions.

A model built with ``dtype="bfloat16"`` keeps these in float32: the T2T
module's first soft split (the raw pixels) and each T2T layer's input
LayerNorm (``layers.first_stage_dtype``), the
performer's random features and their ``exp``, the attention logits and
softmax sums, LayerNorm statistics (Keras computes them in float32), the fixed
position table, and the returned scores.
"""

import platform

import keras

from keras_t2t.models.base import ClassifierModel

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "mixed_bfloat16")
# CPU flags of bfloat16 arithmetic: Intel AMX, AVX512_BF16 (Intel Cooper Lake and later, AMD Zen 4
# and later), ARM's BF16 extension. Without one of them bfloat16 is emulated: never faster.
BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
ISA_FLAGS = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx2")
# bfloat16 is chosen when its matmul runs at least this many times as fast as float32's: the
# float32 islands and the memory-bound layers take part of the gain back, and on TensorFlow
# bfloat16 also gives up XLA. Measured on an AMD EPYC (Zen 5), T2T-ViT-14: torch's matmul
# ~4x -> the model 2.6x at batch 32 and 1.5x at batch 1; TensorFlow's matmul ~1.5x -> the
# model 1.23x at batch 32 but slightly slower at batch 1 (42.9 vs 41.4 ms), hence its 2.0.
MIN_SPEEDUP = {"torch": 1.3, "tensorflow": 2.0}
# The matmul measured: a block's qkv projection at batch 8 of T2T-ViT-14 (8 x 197 tokens, 384 -> 1152).
SPEEDUP_SHAPE = (1576, 384, 1152)
# Measured on an AMD EPYC (Zen 5, avx512_bf16, no AMX), T2T-ViT-14: TensorFlow's bfloat16 matmul
# read 1.5x float32 in one session and 2.8x in another, while the bfloat16 model (no XLA) was
# 1.1-1.2x float32 (XLA) at batch 32 and slower at batch 1 both times (44.2-45.7 vs 41.4-42.2 ms).
TENSORFLOW_NO_AMX_REASON = ("TensorFlow runs bfloat16 without XLA, which was slower than float32 at batch 1 "
                            "on such a CPU (an AMD EPYC with avx512_bf16: 44.2 vs 42.2 ms for T2T-ViT-14)")
JAX_CPU_REASON = ("XLA:CPU compiles every bfloat16 dot as a float32 dot between two conversions "
                  "(no bfloat16 path), so bfloat16 is slower than float32")


def cpu_info(path="/proc/cpuinfo"):
    """``{"model": str, "flags": sorted list}`` of the first CPU in ``path`` (Linux); empty flags elsewhere."""
    model, flags = "", set()
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(), "flags": sorted(flags)}


def isa_flags(path="/proc/cpuinfo"):
    """``{flag: bool}`` for the flags of ``ISA_FLAGS``: the CPU features that decide how fast bfloat16 can be."""
    flags = set(cpu_info(path)["flags"])
    return {flag: flag in flags for flag in ISA_FLAGS}


def _gpu_bfloat16(backend):
    """(has a bfloat16 GPU/TPU, description) for ``backend``; never raises."""
    try:
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                name = torch.cuda.get_device_name(0)
                return bool(torch.cuda.is_bf16_supported()), f"GPU {name}"
        elif backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform in ("gpu", "tpu"):
                kind = getattr(device, "device_kind", device.platform)
                capability = getattr(device, "compute_capability", None)
                fast = device.platform == "tpu" or capability is None or float(capability) >= 8.0
                return fast, f"{device.platform.upper()} {kind}"
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                capability = details.get("compute_capability", (0, 0))
                return tuple(capability) >= (8, 0), f"GPU {details.get('device_name', gpus[0].name)}"
    except Exception:  # a broken driver is no reason to fail a dtype choice
        pass
    return False, None


def _timed_matmul(backend, dtype, repeats=5):
    """Best seconds of one (m, k) @ (k, n) matmul of ``SPEEDUP_SHAPE`` in ``dtype``, run the way the
    package runs a model on ``backend`` (TensorFlow and torch eager, so through oneDNN)."""
    import time

    import numpy as np

    m, k, n = SPEEDUP_SHAPE
    rng = np.random.default_rng(0)
    a = keras.ops.cast(rng.standard_normal((m, k)).astype("float32"), dtype)
    b = keras.ops.cast(rng.standard_normal((k, n)).astype("float32"), dtype)
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[:1, :1])  # warm-up
    best = float("inf")
    for _ in range(repeats):  # the best of a few: a busy machine slows some calls
        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[:1, :1])
        best = min(best, time.perf_counter() - start)
    return best


_SPEEDUPS = {}


def bfloat16_speedup(backend=None):
    """How many times as fast a bfloat16 matmul of a T2T-ViT block's shape runs as a float32 one on
    this machine and ``backend`` (measured once per process, ~0.1 s; the backend must be Keras')."""
    backend = backend or keras.backend.backend()
    if backend != keras.backend.backend():
        raise ValueError(f"bfloat16_speedup measures the backend in use ({keras.backend.backend()!r}), "
                         f"not {backend!r}.")
    if backend not in _SPEEDUPS:
        _SPEEDUPS[backend] = _timed_matmul(backend, "float32") / _timed_matmul(backend, "bfloat16")
    return _SPEEDUPS[backend]


def recommended_dtype(backend=None, explain=False, cpuinfo="/proc/cpuinfo"):
    """The dtype to build a model in for inference on this machine: ``"bfloat16"`` or ``"float32"``.

    ``backend``: the Keras backend (default: the one in use). ``explain=True``
    returns ``(dtype, reason)``. ``cpuinfo``: the file to read the CPU's flags
    from. bfloat16 is chosen only where it is faster than float32: a bfloat16
    GPU, or a CPU with bfloat16 arithmetic on which the backend's bfloat16
    matmul was just measured at least ``MIN_SPEEDUP[backend]`` times as fast as float32
    (``bfloat16_speedup``); the module's docstring says what was found where.
    """
    backend = backend or keras.backend.backend()
    if backend not in ("tensorflow", "jax", "torch"):
        raise ValueError(f"Unknown backend {backend!r}; accepted: 'tensorflow', 'jax', 'torch'.")
    fast_gpu, gpu = _gpu_bfloat16(backend)
    if gpu is not None:
        choice = ("bfloat16", f"{gpu} computes in bfloat16") if fast_gpu else (
            "float32", f"{gpu} has no fast bfloat16 (compute capability below 8.0)")
        return choice if explain else choice[0]
    info = cpu_info(cpuinfo)
    cpu = info["model"] or "this CPU"
    flags = [flag for flag in BFLOAT16_FLAGS if flag in info["flags"]]
    if not flags:
        choice = ("float32", f"{cpu} has no bfloat16 arithmetic (none of {', '.join(BFLOAT16_FLAGS)})")
    elif backend == "jax":
        choice = ("float32", f"{cpu} has {', '.join(flags)}, but {JAX_CPU_REASON}")
    elif backend == "tensorflow" and "amx_bf16" not in flags:
        choice = ("float32", f"{cpu} has {', '.join(flags)} but no AMX, and {TENSORFLOW_NO_AMX_REASON}")
    elif backend != keras.backend.backend():
        choice = ("float32", f"{cpu} has {', '.join(flags)}; bfloat16 on {backend} is measured only in a "
                             f"process running that backend")
    else:
        speedup = bfloat16_speedup(backend)
        measured = (f"{cpu} ({', '.join(flags)}): a bfloat16 matmul of a T2T-ViT block's shape ran "
                    f"{speedup:.1f}x as fast as float32 on {backend}")
        needed = MIN_SPEEDUP[backend]
        choice = ("bfloat16", measured) if speedup >= needed else (
            "float32", f"{measured}, below the {needed}x at which the whole model runs faster")
    return choice if explain else choice[0]


def resolve_dtype(value, backend=None, cpuinfo="/proc/cpuinfo"):
    """A ``--dtype`` value -> (Keras dtype policy name, reason). ``"auto"`` asks ``recommended_dtype``."""
    if value not in DTYPE_CHOICES:
        raise ValueError(f"Unknown dtype {value!r}; accepted: {', '.join(repr(c) for c in DTYPE_CHOICES)}.")
    if value == "auto":
        dtype, reason = recommended_dtype(backend, explain=True, cpuinfo=cpuinfo)
        return dtype, f"auto: {reason}"
    return value, "as requested"


def compute_dtype(model):
    """The compute dtype most of ``model``'s weighted layers run in ("float32", "bfloat16", ...).

    A functional model's own policy does not say: its layers carry the dtype
    they were built with (``dtype=`` of the builders, or a saved file's).
    """
    counts = {}
    for layer in model.layers:
        if layer.weights:
            dtype = layer.dtype_policy.compute_dtype
            counts[dtype] = counts.get(dtype, 0) + len(layer.weights)
    return max(counts, key=counts.get) if counts else model.dtype_policy.compute_dtype


# The inference path of each backend on a CPU: whether ``predict`` compiles (``jit_compile``),
# and why. Chosen from the quiet-machine run of ``python benchmarks/engines.py`` (T2T-ViT-14,
# float32, every engine interleaved over 5 rounds, Keras' ``predict_on_batch``; docs/deploy_cpu.md),
# which times TensorFlow with and without XLA side by side. ``python benchmarks/breakdown.py
# --profile`` (per part, on a loaded machine: benchmarks/measured/2026-12-07-profile-t2t_vit_14.md)
# had put TensorFlow's own kernels first; the quiet run reversed that, at both batches. The profile
# also timed ``keras.ops.dot_product_attention`` against ``layers.attend``: it was faster on no
# backend, so the attention stays as it is.
INFERENCE_PATHS = {
    "tensorflow": (True, "XLA ran T2T-ViT-14 in float32 at 1.12x the speed of TensorFlow's own kernels at "
                         "batch 32 (32.2 vs 28.8 img/s) and 1.34x at batch 1 (33.4 vs 44.7 ms), 2-core AMD "
                         "EPYC with AVX512_BF16, quiet, 2026-12-07"),
    "jax": (True, "JAX runs a model op by op without jit; XLA is its compiler"),
    "torch": (False, "torch.compile hits dynamo's recompile limit on Keras' functional model (8 recompiles "
                      "in Functional.call) and falls back to eager after minutes of compiling; eager runs "
                      "torch's fused attention kernel"),
}


def recommended_inference(backend=None, batch_size=None, dtype="float32", explain=False):
    """How to run inference on ``backend`` on a CPU: ``{"jit_compile": bool}``.

    ``batch_size`` (1, 32, ... or None) and ``dtype`` (the model's compute
    dtype) are the case asked about; ``explain=True`` returns ``(choice, reason)``.
    The choice is the fastest path measured for T2T-ViT-14 at batch 1 and
    batch 32 (``INFERENCE_PATHS``); both batches chose the same on every
    backend, so the batch only enters the reason. On a GPU Keras' own default
    (``"auto"``) is kept.
    """
    backend = backend or keras.backend.backend()
    if backend not in INFERENCE_PATHS:
        raise ValueError(f"Unknown backend {backend!r}; accepted: 'tensorflow', 'jax', 'torch'.")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive number of images or None; got {batch_size!r}.")
    jit_compile, reason = INFERENCE_PATHS[backend]
    if backend == "tensorflow" and keras.backend.standardize_dtype(dtype) == "bfloat16":
        jit_compile = False
        reason = "a bfloat16 model on TensorFlow reaches oneDNN's bfloat16 matmul only without XLA"
    batch = "any batch" if batch_size is None else f"batch {int(batch_size)}"
    choice = {"jit_compile": jit_compile}
    if backend == "torch":
        path = "torch.compile" if jit_compile else "eager"
    else:
        path = "XLA" if jit_compile else "no XLA"
    return (choice, f"{backend}, {dtype}, {batch}: {path} ({reason})") if explain else choice


def prepare_for_inference(model, batch_size=None):
    """Sets up ``model`` for the fastest inference in its dtype (``recommended_inference``); returns it.

    The reason is kept as ``model.inference_reason``. A GPU keeps Keras' default.
    """
    backend = keras.backend.backend()
    if _gpu_bfloat16(backend)[1] is not None:
        return model
    choice, reason = recommended_inference(backend, batch_size, compute_dtype(model), explain=True)
    if model.jit_compile != choice["jit_compile"]:
        model.jit_compile = choice["jit_compile"]
        # Keras caches the predict function it made under the previous setting.
        model.predict_function = None
    model.inference_reason = reason
    return model


# Attributes the loaders set on a model (``resolve.Resolved``, visualize) that a cast copy keeps.
TRAVELS_WITH_THE_MODEL = ("preprocessing", "resolved_from")


def cast_model(model, dtype):
    """A copy of the keras_t2t ``model`` built in ``dtype`` (a policy name), its weights cast to it.

    Use it for a model loaded from a ``.keras`` file, whose layers keep the dtype
    they were saved with; the builders take ``dtype=`` directly. The float32
    islands of the layers stay float32.
    """
    policy = keras.dtype_policies.get(dtype)
    if policy.name == compute_dtype(model) and policy.name == policy.compute_dtype:
        return model
    config = dict(model.get_config(), dtype=policy.name)
    twin = model.__class__.from_config(config)
    for target, source in zip(twin.weights, model.weights, strict=True):
        if target.path != source.path or tuple(target.shape) != tuple(source.shape):
            raise ValueError(
                f"Cannot cast {model.name!r} to {dtype}: its rebuilt weight {target.path} {tuple(target.shape)} "
                f"does not line up with {source.path} {tuple(source.shape)}."
            )
        # Through NumPy: a new buffer for every variable (JAX may donate a shared one).
        target.assign(keras.ops.convert_to_numpy(keras.ops.cast(source.value, target.dtype)))
    for name in TRAVELS_WITH_THE_MODEL:  # what the loaders attached: the twin is fed and described alike
        if hasattr(model, name):
            setattr(twin, name, getattr(model, name))
    return twin


def apply_dtype(model, value="auto", backend=None):
    """``model`` in the dtype a ``--dtype`` value names -> (model, dtype, reason).

    ``"auto"`` asks ``recommended_dtype``. A keras_t2t model (``T2TViT``, ``ViT``) is
    rebuilt in that dtype (``cast_model``) and prepared for inference; any other
    Keras model (e.g. a ``keras.applications`` ResNet) stays as it is, and the
    reason says so.
    """
    dtype, reason = resolve_dtype(value, backend)
    if not isinstance(model, ClassifierModel):
        if dtype != compute_dtype(model):
            reason = f"kept in {compute_dtype(model)}: only keras_t2t models are rebuilt in another dtype"
        return model, compute_dtype(model), reason
    return prepare_for_inference(cast_model(model, dtype)), dtype, reason
