"""Where the inference time of a T2T-ViT goes, on the active Keras backend.

    KERAS_BACKEND=jax python benchmarks/breakdown.py [--variant t2t_vit_14]
        [--batch-size 32] [--image-size 224] [--repeats 5] [--output FILE.json]

Times, compiled as ``benchmarks/run.py`` compiles (XLA on TensorFlow and JAX,
eager on torch), the best of ``--repeats`` calls after two warm-ups, inputs
already on the backend:

* ``model``: the whole classifier;
* ``t2t_module``: the T2T module alone (images -> tokens);
* ``blocks``: the transformer blocks and the final norm alone, on tokens;
* ``block_matmuls``: only the dense matmuls of those blocks (qkv, proj, fc1,
  fc2 of every block, chained, no bias, norm, activation or attention): what
  the blocks would cost if everything but their dense layers were free.

and reports the GFLOP/s of each part (FLOPs of ``keras_t2t.flops``, matmuls
only), the T2T module's and the blocks' shares of the model's time and of its
FLOPs, and the model's rate as a fraction of ``block_matmuls``' rate (the
matmul speed this backend reaches on the model's own dense shapes).
Standard-block T2T-ViT variants only.
"""

import argparse
import contextlib
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def _compiled(fn):
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    import torch

    def no_grad(*args):
        with torch.no_grad():
            return fn(*args)

    return no_grad


def _best_time(fn, args, repeats):
    """Best wall time of ``fn(*args)`` (seconds) over ``repeats`` calls after two warm-ups."""
    import keras

    args = [keras.ops.convert_to_tensor(a) for a in args]
    for _ in range(2):
        keras.ops.convert_to_numpy(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def breakdown(variant="t2t_vit_14", batch_size=32, image_size=224, repeats=5):
    import keras
    import numpy as np

    from keras_t2t import create_model, flops
    from keras_t2t.models.presets import STUDY_VARIANTS

    if variant in STUDY_VARIANTS:
        raise ValueError(f"breakdown needs a standard-block T2T-ViT variant; got {variant!r}.")
    keras.utils.set_random_seed(0)
    model = create_model(variant, input_shape=(image_size, image_size, 3))
    counted = flops.count_flops(model)
    t2t = model.get_layer("tokens_to_token")
    blocks = [model.get_layer(name) for name in model.block_names]
    norm = model.get_layer("norm")
    tokens, dim = model.get_layer("pos_embed").output.shape[1:]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, image_size, image_size, 3)).astype("float32")
    x = rng.standard_normal((batch_size, tokens, dim)).astype("float32")

    def run_blocks(h):
        for block in blocks:
            h = block(h, training=False)
        return norm(h)

    kernels = []
    for block in blocks:
        for dense in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
            kernels.append(dense.kernel)

    def run_matmuls(h):
        # qkv and fc1 read the block's input; proj and fc2 read their own width.
        h = keras.ops.reshape(h, (-1, dim))
        for i in range(0, len(kernels), 4):
            qkv, proj, fc1, fc2 = kernels[i : i + 4]
            h = h + keras.ops.matmul(keras.ops.matmul(h, qkv)[:, :dim], proj)
            h = h + keras.ops.matmul(keras.ops.matmul(h, fc1), fc2)
        return h

    parts = {
        "model": (lambda im: model(im, training=False), images),
        "t2t_module": (lambda im: t2t(im, training=False), images),
        "blocks": (run_blocks, x),
        "block_matmuls": (run_matmuls, x),
    }
    seconds = {name: _best_time(_compiled(fn), (arg,), repeats) for name, (fn, arg) in parts.items()}

    t2t_flops = counted["t2t_flops"] * batch_size
    block_flops = counted["backbone_flops"] * batch_size
    dense_flops = sum(2 * batch_size * tokens * int(k.shape[0]) * int(k.shape[1]) for k in kernels)
    model_flops = counted["total_flops"] * batch_size
    dense_rate = dense_flops / seconds["block_matmuls"]
    report = {
        "backend": keras.backend.backend(),
        "variant": variant,
        "batch_size": batch_size,
        "image_size": image_size,
        "seconds": seconds,
        "flops": {"model": model_flops, "t2t_module": t2t_flops, "blocks": block_flops, "block_matmuls": dense_flops},
        "gflops_per_s": {
            "model": model_flops / seconds["model"] / 1e9,
            "t2t_module": t2t_flops / seconds["t2t_module"] / 1e9,
            "blocks": block_flops / seconds["blocks"] / 1e9,
            "block_matmuls": dense_rate / 1e9,
        },
        "share_of_model_time": {k: seconds[k] / seconds["model"] for k in ("t2t_module", "blocks")},
        "share_of_model_flops": {"t2t_module": t2t_flops / model_flops, "blocks": block_flops / model_flops},
        "model_fraction_of_block_matmul_rate": model_flops / seconds["model"] / dense_rate,
    }
    return report



# ---------------------------------------------------------------------------------------------
# The profile (``--profile``): every inference path of this backend, per part, at each batch.

# The attention forms the profile swaps in (``attention_form``): "as_now" is the package's
# ``layers.attention.attend`` untouched; "fused" is ``keras.ops.dot_product_attention`` (the
# backend's fused or reference kernel); "matmul" is matmul, softmax, matmul with nothing deferred.
ATTENTION_FORMS = ("as_now", "fused", "matmul")
# The (compilation, attention form) pairs profiled per backend. JAX always jits.
PROFILE_PATHS = {
    "tensorflow": (("xla", "as_now"), ("xla", "fused"), ("no_xla", "as_now"), ("no_xla", "fused")),
    "jax": (("jit", "as_now"), ("jit", "fused")),
    "torch": (("eager", "as_now"), ("eager", "matmul"), ("compile", "as_now")),
}
PROFILE_PARTS = ("model", "t2t_module", "blocks", "blocks_attention", "blocks_mlp", "head")
# torch.compile is timed on the whole model only: on Keras' functional model dynamo hits its
# recompile limit (8; guards on each operation's type in ``Functional.call``) and compiling
# every part took minutes (torch 2.13, CPU).
COMPILED_PARTS = {"compile": ("model",)}


def _attend_form(form, original):
    """An ``attend`` that runs ``form`` in inference and the package's own otherwise."""
    from keras import ops

    def attend(q, k, v, scale, tracing="fast", dropout=None, training=None):
        if training:
            return original(q, k, v, scale, tracing, dropout=dropout, training=training)
        if form == "fused":
            t = (0, 2, 1, 3)
            out = ops.dot_product_attention(ops.transpose(q, t), ops.transpose(k, t), ops.transpose(v, t),
                                            scale=scale)
            return ops.transpose(out, t)
        logits = ops.matmul(q * scale, ops.transpose(k, (0, 1, 3, 2)))
        return ops.matmul(ops.softmax(logits, axis=-1), v)

    return attend


@contextlib.contextmanager
def attention_form(form):
    """Within the block every backbone attention (``MultiHeadSelfAttention``) runs ``form``."""
    from keras_t2t.layers import attention

    if form not in ATTENTION_FORMS:
        raise ValueError(f"attention form must be one of {ATTENTION_FORMS}; got {form!r}.")
    original = attention.attend
    if form != "as_now":
        attention.attend = _attend_form(form, original)
    try:
        yield
    finally:
        attention.attend = original


def _compiled_as(fn, compilation):
    """``fn`` compiled as ``compilation`` says: "xla"/"no_xla" (tf.function), "jit" (JAX),
    "eager"/"compile" (torch, under no_grad; "compile" is ``torch.compile``)."""
    if compilation in ("xla", "no_xla"):
        import tensorflow as tf

        return tf.function(fn, jit_compile=compilation == "xla")
    if compilation == "jit":
        import jax

        return jax.jit(fn)
    import torch

    target = torch.compile(fn) if compilation == "compile" else fn

    def no_grad(*args):
        with torch.no_grad():
            return target(*args)

    return no_grad


def _parts(model):
    """{part: (fn, which input)}: "images" or "tokens" (the blocks' input)."""
    from keras import ops

    t2t = model.get_layer("tokens_to_token")
    blocks = [model.get_layer(name) for name in model.block_names]
    norm, head = model.get_layer("norm"), model.get_layer("head")

    def run_blocks(h):
        for block in blocks:
            h = block(h, training=False)
        return norm(h)

    def run_attention(h):  # the attention halves of the blocks, chained
        for block in blocks:
            h = h + block.attn(block.norm1(h), training=False)
        return h

    def run_mlp(h):  # the MLP halves
        for block in blocks:
            h = h + block.mlp(block.norm2(h), training=False)
        return h

    return {
        "model": (lambda im: model(im, training=False), "images"),
        "t2t_module": (lambda im: t2t(im, training=False), "images"),
        "blocks": (run_blocks, "tokens"),
        "blocks_attention": (run_attention, "tokens"),
        "blocks_mlp": (run_mlp, "tokens"),
        "head": (lambda h: head(ops.take(norm(h), 0, axis=1)), "tokens"),
    }


def _call_seconds(fn, arg, calls):
    """Mean wall time of ``calls`` calls of ``fn(arg)``, each result brought to NumPy."""
    import keras

    start = time.perf_counter()
    for _ in range(calls):
        keras.ops.convert_to_numpy(fn(arg))
    return (time.perf_counter() - start) / calls


def profile(variant="t2t_vit_14", batch_sizes=(1, 32), image_size=224, rounds=5, paths=None, authors=True):
    """Times every part of ``PROFILE_PARTS`` on every path of ``PROFILE_PATHS`` for this backend
    (and, on torch, the authors' model eager and compiled), at each batch size.

    The paths are interleaved: after two warm-up calls of everything, each of ``rounds``
    rounds times every (path, part) once (batch 1: the mean of 5 calls), so a busy machine
    slows all paths alike; the report keeps every round and the median. It also gives each
    path's largest logit difference from the first path's ("as now").
    """
    import statistics

    import keras
    import numpy as np

    from keras_t2t import create_model
    from keras_t2t.weights.mapping import model_state_dict

    backend = keras.backend.backend()
    paths = tuple(paths or PROFILE_PATHS[backend])
    keras.utils.set_random_seed(0)
    model = create_model(variant, input_shape=(image_size, image_size, 3))
    tokens, dim = model.get_layer("pos_embed").output.shape[1:]
    rng = np.random.default_rng(0)
    report = {"backend": backend, "variant": variant, "image_size": image_size, "rounds": rounds,
              "paths": [list(p) for p in paths], "load_before": os.getloadavg(), "batches": {}}
    authors_model = None
    if backend == "torch" and authors:
        import torch

        from benchmarks.authors_torch import T2TViT as AuthorsT2TViT

        authors_model = AuthorsT2TViT(variant, image_size=image_size).eval()
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model_state_dict(model).items()}
        authors_model.load_state_dict(state)  # every key, as the engines run loads it
    for batch in batch_sizes:
        inputs = {
            "images": keras.ops.convert_to_tensor(
                rng.standard_normal((batch, image_size, image_size, 3)).astype("float32")),
            "tokens": keras.ops.convert_to_tensor(rng.standard_normal((batch, tokens, dim)).astype("float32")),
        }
        calls = 5 if batch == 1 else 1
        runs = {}  # (path name, part) -> (fn, input, attention form)
        for compilation, form in paths:
            name = f"{compilation}+{form}"
            for part, (fn, which) in _parts(model).items():
                if part not in COMPILED_PARTS.get(compilation, PROFILE_PARTS):
                    continue
                runs[(name, part)] = (_compiled_as(fn, compilation), inputs[which], form)
        if authors_model is not None:
            authors_parts = {  # our model ends in a softmax, the authors' in logits
                "model": lambda im: torch.softmax(authors_model(im.permute(0, 3, 1, 2)), dim=-1),
                "t2t_module": lambda im: authors_model.tokens_to_token(im.permute(0, 3, 1, 2)),
            }
            for compilation in ("eager", "compile"):
                for part, fn in authors_parts.items():
                    if part not in COMPILED_PARTS.get(compilation, PROFILE_PARTS):
                        continue
                    runs[(f"authors+{compilation}", part)] = (_compiled_as(fn, compilation), inputs["images"],
                                                              "as_now")
        logits, warm = {}, {}
        for (name, part), (fn, arg, form) in runs.items():
            start = time.perf_counter()
            with attention_form(form):
                for _ in range(2):
                    out = keras.ops.convert_to_numpy(fn(arg))
            warm[f"{name}/{part}"] = time.perf_counter() - start
            if part == "model":
                logits[name] = out
        first = next(iter(logits))
        times = {key: [] for key in runs}
        for _ in range(rounds):
            for key, (fn, arg, form) in runs.items():
                with attention_form(form):
                    times[key].append(_call_seconds(fn, arg, calls))
        table = {}
        for (name, part), values in times.items():
            table.setdefault(name, {})[part] = {"median_ms": 1000 * statistics.median(values),
                                               "rounds_ms": [1000 * v for v in values]}
        report["batches"][str(batch)] = {
            "ms": table,
            "warmup_s": warm,
            "max_abs_logit_difference_from": first,
            "max_abs_logit_difference": {n: float(np.max(np.abs(v - logits[first]))) for n, v in logits.items()},
        }
    report["load_after"] = os.getloadavg()
    return report


def print_profile(report):
    """The profile's medians as Markdown tables, one per batch size."""
    lines = []
    for batch, data in report["batches"].items():
        lines.append(f"\n{report['backend']}, {report['variant']}, batch {batch} (median ms of "
                     f"{report['rounds']} interleaved rounds)\n")
        lines.append("| path | " + " | ".join(PROFILE_PARTS) + " | max abs logit diff |")
        lines.append("|---" * (len(PROFILE_PARTS) + 2) + "|")
        for name, parts in data["ms"].items():
            cells = [f"{parts[p]['median_ms']:.1f}" if p in parts else "-" for p in PROFILE_PARTS]
            diff = data["max_abs_logit_difference"].get(name)
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {diff:.1e} |")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="t2t_vit_14")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="also write the report here as JSON")
    parser.add_argument("--profile", action="store_true",
                        help="time every inference path of this backend per part (PROFILE_PATHS), "
                             "interleaved, at --batch-sizes")
    parser.add_argument("--batch-sizes", default="1,32", help="--profile: comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=5, help="--profile: interleaved timing rounds")
    parser.add_argument("--paths", default=None,
                        help="--profile: comma-separated COMPILATION+FORM pairs of this backend's PROFILE_PATHS "
                             "(default: all), e.g. eager+as_now,eager+matmul")
    args = parser.parse_args(argv)
    if args.profile:
        sizes = tuple(int(b) for b in args.batch_sizes.split(","))
        paths = None
        if args.paths:
            import keras

            known = {"+".join(p): p for p in PROFILE_PATHS[keras.backend.backend()]}
            wanted = [p for p in args.paths.split(",") if p]
            unknown = [p for p in wanted if p not in known]
            if unknown or not wanted:
                parser.error(f"unknown --paths {', '.join(unknown) or '(none)'} on {keras.backend.backend()}; "
                             f"accepted: {', '.join(known)}")
            paths = tuple(known[p] for p in wanted)
        report = profile(args.variant, sizes, args.image_size, args.rounds, paths)
        print_profile(report)
        if args.output:
            from keras_t2t.io_utils import write_json_atomic

            write_json_atomic(args.output, report)
        return 0
    report = breakdown(args.variant, args.batch_size, args.image_size, args.repeats)
    for name, secs in report["seconds"].items():
        print(f"{name:14s} {1000 * secs:8.1f} ms  {report['gflops_per_s'][name]:6.1f} GFLOP/s")
    print(json.dumps(report, indent=2))
    if args.output:
        from keras_t2t.io_utils import write_json_atomic

        write_json_atomic(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
