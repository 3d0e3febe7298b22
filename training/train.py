"""Train a T2T-ViT (first cut: the built-in digits default).

    python training/train.py --output-dir runs/digits

Trains a small T2T-ViT from scratch on scikit-learn's handwritten digits
(no download), prints the Keras progress bar, and writes ``model.keras``,
``history.csv`` and ``summary.json`` into ``--output-dir``. The full recipe,
tf.distribute and TFDS data are tracked in issue 4.
"""

import argparse
import json
import os
import sys
import tempfile
import time

# Runs from a checkout without installing too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_t2t  # noqa: E402
from keras_t2t.datasets import load_digits_images  # noqa: E402

DIGITS_MODEL = dict(
    input_shape=(32, 32, 3),
    t2t_stages=((3, 2, 1), (3, 2, 1)),
    token_dim=32,
    embed_dim=128,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    drop_path_rate=0.1,
    classes=10,
    classifier_activation=None,
)


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0; got {text}")
        return value

    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="where the model, logs and summary.json go")
    parser.add_argument("--epochs", type=_positive(int), default=30)
    parser.add_argument("--batch-size", type=_positive(int), default=64)
    parser.add_argument("--lr", type=_positive(float), default=1e-3, help="peak learning rate (AdamW)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_val, y_val) = load_digits_images(32, seed=args.seed)
    x_train, x_val = keras_t2t.preprocess_input(x_train), keras_t2t.preprocess_input(x_val)

    model = keras_t2t.T2TViT(name="t2t_vit_digits", **DIGITS_MODEL)
    steps = args.epochs * int(np.ceil(len(x_train) / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-6, steps - steps // 10, alpha=0.01, warmup_target=args.lr, warmup_steps=steps // 10
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
        ],
    )
    print(f"backend {keras.backend.backend()}; {model.count_params():,} weights; "
          f"{len(x_train)} training and {len(x_val)} validation digits")
    start = time.time()
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        callbacks=[keras.callbacks.CSVLogger(os.path.join(args.output_dir, "history.csv"))],
        verbose=2,
    )
    seconds = time.time() - start
    _, top1, top5 = model.evaluate(x_val, y_val, batch_size=256, verbose=0)
    model.save(os.path.join(args.output_dir, "model.keras"))
    summary = {
        "val_top1": float(top1),
        "val_top5": float(top5),
        "epochs": args.epochs,
        "replicas": 1,
        "global_batch_size": args.batch_size,
        "train_images_per_second": len(x_train) * args.epochs / seconds,
        "train_seconds": seconds,
        "backend": keras.backend.backend(),
    }
    fd, tmp = tempfile.mkstemp(dir=args.output_dir, suffix=".json.tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(summary, handle, indent=2)
    os.replace(tmp, os.path.join(args.output_dir, "summary.json"))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
