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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="t2t_vit_14")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="also write the report here as JSON")
    args = parser.parse_args(argv)
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
