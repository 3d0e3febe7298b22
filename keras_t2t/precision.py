"""bfloat16 where the hardware runs it fast, float32 elsewhere.

``recommended_dtype()`` reads the machine (the CPU's ISA flags, a GPU of the
backend in use) and names the dtype to build a model in for inference:

* a GPU the backend sees with bfloat16 arithmetic (NVIDIA compute capability
  8.0 or newer, or any TPU): ``"bfloat16"``;
* a CPU with AMX (``amx_bf16`` and ``amx_tile`` in ``/proc/cpuinfo``: Intel
  Xeon Sapphire Rapids and later) on a backend whose bfloat16 matmuls reach
  AMX, measured faster than float32 there: ``"bfloat16"``;
* anything else (AVX512_BF16 only, no bfloat16 at all, a backend without an
  AMX path): ``"float32"``, because bfloat16 is slower there.

How each backend runs a bfloat16 matmul on a CPU (checked with
``ONEDNN_VERBOSE=1`` and the compiled XLA program; see the README):

* PyTorch: oneDNN's bfloat16 ``brg_matmul`` (AMX kernels where the CPU has
  them). Measured on a 2-vCPU AMX Xeon (issue 14): T2T-ViT-14 in bfloat16
  36.6-38.5 images/s against 14-18 for the authors' float32 model.
* TensorFlow without XLA: the same oneDNN bfloat16 matmul. With XLA (Keras'
  default ``jit_compile="auto"`` for ``predict``) no oneDNN call is made, so
  ``prepare_for_inference`` turns XLA off for bfloat16 models. Not yet
  measured on an AMX machine: the automatic choice stays float32 there
  until it is (``--dtype bfloat16`` runs it).
* JAX (XLA:CPU, jaxlib 0.10): every bfloat16 dot is compiled as
  convert-to-float32, a float32 dot, convert back; no AMX path, so bfloat16
  only adds the conversions.

A model built with ``dtype="bfloat16"`` keeps these in float32: the
performer's random features and their ``exp`` (``TokenPerformer``), the
attention logits and softmax sums, LayerNorm statistics (Keras computes them
in float32), the fixed position table, and the returned scores.
"""

import os
import platform

import keras

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "mixed_bfloat16")
# The CPU flags that make a bfloat16 matmul fast (Intel AMX) or merely possible (AVX512_BF16).
AMX_FLAGS = ("amx_bf16", "amx_tile")
ISA_FLAGS = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx2")
# Backends whose bfloat16 inference on an AMX CPU was measured faster than float32.
AMX_MEASURED_FASTER = {
    "torch": "PyTorch runs bfloat16 matmuls through oneDNN's AMX kernels "
    "(T2T-ViT-14: 36.6-38.5 images/s in bfloat16 against 14-18 for the authors' float32 model on a 2-vCPU AMX Xeon)",
}
AMX_NOT_CHOSEN = {
    "tensorflow": "TensorFlow reaches oneDNN's bfloat16 matmul only without XLA, and that path is not yet "
    "measured faster on an AMX CPU; pass dtype='bfloat16' to use it",
    "jax": "XLA:CPU compiles every bfloat16 dot as a float32 dot between two conversions (no AMX path), "
    "so bfloat16 is slower than float32",
}


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
    """``{flag: bool}`` for the flags of ``ISA_FLAGS``: what the benchmark records beside every figure."""
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


def recommended_dtype(backend=None, explain=False, cpuinfo="/proc/cpuinfo"):
    """The dtype to build a model in for inference on this machine: ``"bfloat16"`` or ``"float32"``.

    ``backend``: the Keras backend (default: the one in use). ``explain=True``
    returns ``(dtype, reason)``. ``cpuinfo``: the file to read the CPU's flags
    from. bfloat16 is chosen only where it is faster than float32: a bfloat16
    GPU, or an AMX CPU on a backend measured faster there (the module's
    docstring says which and why).
    """
    backend = backend or keras.backend.backend()
    if backend not in ("tensorflow", "jax", "torch"):
        raise ValueError(f"Unknown backend {backend!r}; accepted: 'tensorflow', 'jax', 'torch'.")
    fast_gpu, gpu = _gpu_bfloat16(backend)
    if gpu is not None:
        choice = ("bfloat16", f"{gpu} computes in bfloat16") if fast_gpu else (
            "float32", f"{gpu} has no fast bfloat16 (compute capability below 8.0)")
    else:
        info = cpu_info(cpuinfo)
        flags = set(info["flags"])
        cpu = info["model"] or "this CPU"
        if all(flag in flags for flag in AMX_FLAGS):
            if backend in AMX_MEASURED_FASTER:
                choice = ("bfloat16", f"{cpu} has AMX; {AMX_MEASURED_FASTER[backend]}")
            else:
                choice = ("float32", f"{cpu} has AMX, but {AMX_NOT_CHOSEN[backend]}")
        elif "avx512_bf16" in flags:
            choice = ("float32", f"{cpu} has AVX512_BF16 but no AMX: a bfloat16 matmul runs at about half "
                                 "the float32 speed there")
        else:
            choice = ("float32", f"{cpu} has no bfloat16 arithmetic (neither AMX nor AVX512_BF16)")
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


def prepare_for_inference(model):
    """Sets up ``model`` for the fastest inference in its dtype; returns it.

    On TensorFlow a bfloat16 model predicts without XLA (``jit_compile=False``):
    only TensorFlow's own kernels reach oneDNN's bfloat16 matmul. Float32
    models keep Keras' default.
    """
    if keras.backend.backend() == "tensorflow" and compute_dtype(model) == "bfloat16":
        model.jit_compile = False
    return model


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
    return twin


def environment_report():
    """What a figure needs beside it: the CPU, its ISA flags, the backend, and the recommended dtype."""
    info = cpu_info()
    dtype, reason = recommended_dtype(explain=True)
    return {
        "cpu": info["model"],
        "isa_flags": isa_flags(),
        "cores": os.cpu_count(),
        "backend": keras.backend.backend(),
        "recommended_dtype": dtype,
        "reason": reason,
    }


def apply_dtype(model, value="auto", backend=None):
    """``model`` in the dtype a ``--dtype`` value names -> (model, dtype, reason).

    ``"auto"`` asks ``recommended_dtype``. A keras_t2t model (``T2TViT``, ``ViT``) is
    rebuilt in that dtype (``cast_model``) and prepared for inference; any other
    Keras model (e.g. a ``keras.applications`` ResNet) stays as it is, and the
    reason says so.
    """
    dtype, reason = resolve_dtype(value, backend)
    if not hasattr(model, "t2t_type") and not hasattr(model, "patch_size"):
        if dtype != compute_dtype(model):
            reason = f"kept in {compute_dtype(model)}: only keras_t2t models are rebuilt in another dtype"
        return model, compute_dtype(model), reason
    return prepare_for_inference(cast_model(model, dtype)), dtype, reason
