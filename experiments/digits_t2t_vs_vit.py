"""T2T-ViT vs a parameter-matched ViT, trained from scratch on the built-in digits.

    python experiments/digits_t2t_vs_vit.py                      # the full digits recipe, both models
    python experiments/digits_t2t_vs_vit.py --quick              # a tiny run (seconds) to check the setup

Both models go through the same generic trainer with the same recipe (the
``digits`` preset: 18 + 2 epochs, AdamW, cosine, label smoothing, drop path)
and the same seed; only ``recipe.model`` differs: ``t2t_vit_mini`` (soft
splits + a performer T2T layer, 64 tokens) and ``vit_mini`` (4x4 patches, 64
tokens, MLP widened to match the weight count). Writes into ``--output-dir``:
``t2t_vit_mini/`` and ``vit_mini/`` (the trainer's files), ``results.json``
(weights, final validation accuracy and loss, times, machine load),
``curves.png`` (validation accuracy and loss per epoch) and, per model, the
feature and class-token attention pictures of ``keras-t2t-visualize`` on a
validation digit (copied to ``--figures-dir`` when given).
"""

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = ("t2t_vit_mini", "vit_mini")


def _load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def tracked_files(folder):
    """The files under ``folder`` that git tracks (none outside a repository, or without git)."""
    if not os.path.isdir(folder):
        return []
    try:
        listed = subprocess.run(["git", "-C", folder, "ls-files", "--", "."], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return listed.stdout.split() if listed.returncode == 0 else []


def read_history(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in rows[0]} if rows else {}


def plot_curves(histories, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from keras_t2t.io_utils import write_atomic

    fig = Figure(figsize=(8, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    top1, loss = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, history in histories.items():
        epochs = [int(e) + 1 for e in history["epoch"]]
        top1.plot(epochs, [100 * v for v in history["val_top1"]], marker="o", markersize=3, label=name)
        loss.plot(epochs, history["val_ce"], marker="o", markersize=3, label=name)
    top1.set(xlabel="epoch", ylabel="validation top-1 (%)", title="accuracy")
    loss.set(xlabel="epoch", ylabel="validation cross-entropy", title="loss")
    for ax in (top1, loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("digits (32x32), same recipe and budget: T2T-ViT mini vs parameter-matched ViT", fontsize=9)
    fig.tight_layout()
    return write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=100))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--output-dir", default="runs/digits_t2t_vs_vit")
    parser.add_argument("--figures-dir", default=None, help="also copy the PNGs here (e.g. docs/images; not with "
                        "--quick when the folder holds files tracked by git)")
    parser.add_argument("--quick", action="store_true", help="128 training / 64 validation digits, 2 epochs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # The README's figures come from the full run: a smoke run must not replace them.
    tracked = tracked_files(args.figures_dir) if args.quick and args.figures_dir else []
    if tracked:
        parser.error(f"--quick makes smoke-run figures, and --figures-dir {args.figures_dir} holds files tracked by "
                     f"git ({', '.join(tracked[:2])}{', ...' if len(tracked) > 2 else ''}): give another folder, "
                     "or run without --quick")

    import keras

    from keras_t2t import visualize
    from keras_t2t.data.digits import digits_sample
    from keras_t2t.io_utils import write_json_atomic
    from keras_t2t.training import DIGITS, train

    recipe = dataclasses.replace(DIGITS, seed=args.seed)
    if args.quick:
        recipe = dataclasses.replace(recipe, train_limit=128, val_limit=64, batch_size=32, lr_base_batch=32,
                                     epochs=2, cooldown_epochs=0, warmup_epochs=0.0)
    os.makedirs(args.output_dir, exist_ok=True)
    results = {"recipe": recipe.to_dict(), "backend": keras.backend.backend(), "keras": keras.__version__,
               "cpus": os.cpu_count(), "machine": platform.machine(), "quick": args.quick, "models": {}}
    histories = {}
    image, label = digits_sample(recipe.image_size, recipe.image_size, index=0)
    figures = []
    for name in MODELS:
        out = os.path.join(args.output_dir, name)
        load_before = _load()
        start = time.perf_counter()
        model, summary = train(dataclasses.replace(recipe, model=name), out, verbose=2)
        wall = time.perf_counter() - start
        histories[name] = read_history(os.path.join(out, "history.csv"))
        results["models"][name] = {
            "weights": model.count_params(),
            "trainable_weights": int(sum(math.prod(v.shape) for v in model.trainable_weights)),
            "val_top1": summary["val_top1"],
            "val_loss": summary["val_loss"],
            "best_val_top1": max(histories[name]["val_top1"]),
            "epochs": summary["epochs"],
            "train_seconds": summary["train_seconds"],
            "wall_seconds": wall,
            "train_images_per_second": summary["train_images_per_second"],
            "load_average_before": load_before,
            "load_average_after": _load(),
        }
        print(f"{name}: {results['models'][name]}", flush=True)
        shown = visualize.visualize(model, image, os.path.join(args.output_dir, "figures"),
                                    prefix=f"digits_{name}_", block=-1, channels=16)
        figures += [shown["files"]["features"], shown["files"]["attention"]]
    figures.append(plot_curves(histories, os.path.join(args.output_dir, "curves.png")))
    results["figures"] = figures
    results["visualized_digit"] = {"validation_index": 0, "label": label}
    write_json_atomic(os.path.join(args.output_dir, "results.json"), results)
    if args.figures_dir:
        os.makedirs(args.figures_dir, exist_ok=True)
        for path in figures:
            target = os.path.join(args.figures_dir, "digits_t2t_vs_vit_curves.png"
                                  if path.endswith("curves.png") else os.path.basename(path))
            shutil.copyfile(path, target)
            print(f"copied {target}")
    print(json.dumps({n: {k: r[k] for k in ("weights", "val_top1", "val_loss", "train_seconds")}
                      for n, r in results["models"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
