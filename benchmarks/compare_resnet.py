"""The T2T-ViT paper's table (T2T-ViT against ResNets of the same size), with measured columns beside it.

    KERAS_BACKEND=tensorflow python benchmarks/compare_resnet.py
        [--models t2t_vit_14,resnet50,...] [--batch-size 32] [--warmup 1] [--repeats 5]
        [--image-size 224] [--output benchmarks/results] [--no-timing] [--note TEXT]

Builds, on the backend in use, T2T-ViT-7/10/12/14/19/24 and T2T-ViT_t-14/19/24
(``keras_t2t``, random weights) and ``keras.applications`` ResNet50/101/152
(``weights=None``: nothing is downloaded), and gives for each:

* what its authors report: the T2T-ViT paper's table (arXiv:2101.11986v1; its
  ResNet rows, with ResNet* = retrained by the T2T-ViT authors with their
  recipe) and the released weights (the T2T-ViT README and this package's
  registry, ``keras_t2t.list_weights()``; Keras' own ImageNet weights for the
  ResNets), each row with its sources;
* what is measured here: weights (``count_params``, every weight), MACs per
  image (T2T-ViT: ``keras_t2t.flops.count_flops``, every matrix product;
  ResNets: ``keras_t2t.flops.count_layer_macs``, every Conv/Dense) and, for
  both, the MACs of the layer modules alone (Dense / Conv: what counters that
  hook layer modules, thop or mmcv's, report), inference images/s at
  ``--batch-size`` and the median batch-1 latency (``predict_on_batch``,
  compiled as ``benchmarks/run.py`` compiles: XLA on TensorFlow and JAX, eager
  on torch; the median of ``--repeats`` calls after ``--warmup`` calls).

Writes ``compare_resnet.json`` and ``compare_resnet.md`` to ``--output`` (atomic
writes) and prints the Markdown. ``--no-timing``: the counts only (seconds).
The machine (CPU model and SIMD flags from /proc/cpuinfo, load before and
after), backend, versions and date go into both files; ``--note`` adds a line
(e.g. that other jobs shared the machine).
"""

import argparse
import datetime
import gc
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.machine import cpu_info, load_average, package_versions  # noqa: E402
from keras_t2t import create_model, flops, list_weights  # noqa: E402
from keras_t2t.cli.args import IMAGE_SIZE_HELP, OneLineParser, UsageError, image_size, positive_int  # noqa: E402
from keras_t2t.io_utils import check_output_folder, write_json_atomic, write_text_atomic  # noqa: E402

SOURCES = {
    "P": "Yuan et al., Tokens-to-Token ViT, arXiv:2101.11986v1 (January 2021), the table of T2T-ViT against "
         "ResNets; ResNet* = ResNet retrained by the T2T-ViT authors with their training recipe",
    "R": "the T2T-ViT README (github.com/yitu-opensource/T2T-ViT, section 2, T2T-ViT Models) for the released "
         "checkpoints; their top-1 is also in keras_t2t.list_weights()",
    "K": "keras.io/api/applications: Keras' own ImageNet weights of keras.applications.ResNet50/101/152",
}

# name -> (label, paper (top-1, M params, G MACs) or None, ResNet* top-1, released (M params, G MACs), sources).
# Released top-1 of the T2T-ViT rows comes from the registry (keras_t2t.list_weights()); of the ResNets, from K.
# In the paper's order: each ResNet, then the T2T-ViTs of its size; then the small T2T-ViTs of the README.
REPORTED = {
    "resnet50": ("ResNet50", (76.2, 25.5, 4.3), 79.1, (74.9, 25.6, None), "P, K"),
    "t2t_vit_14": ("T2T-ViT-14", (80.6, 21.4, 4.8), None, (None, 21.5, 4.8), "P, R"),
    "t2t_vit_t_14": ("T2T-ViT_t-14", (80.7, 21.5, 5.2), None, (None, 21.5, 6.1), "P, R"),
    "resnet101": ("ResNet101", (77.4, 44.6, 7.9), 79.9, (76.4, 44.7, None), "P, K"),
    "t2t_vit_19": ("T2T-ViT-19", (81.2, 39.0, 8.0), None, (None, 39.2, 8.5), "P, R"),
    "t2t_vit_t_19": ("T2T-ViT_t-19", (81.4, 39.0, 8.4), None, (None, 39.2, 9.8), "P, R"),
    "resnet152": ("ResNet152", (78.3, 60.2, 11.6), 80.8, (76.6, 60.4, None), "P, K"),
    "t2t_vit_24": ("T2T-ViT-24", (81.8, 63.9, 12.6), None, (None, 64.1, 13.8), "P, R"),
    "t2t_vit_t_24": ("T2T-ViT_t-24", (82.2, 64.1, None), None, (None, 64.1, 15.0), "P, R"),
    "t2t_vit_7": ("T2T-ViT-7", None, None, (None, 4.3, 1.1), "R"),
    "t2t_vit_10": ("T2T-ViT-10", None, None, (None, 5.9, 1.5), "R"),
    "t2t_vit_12": ("T2T-ViT-12", None, None, (None, 6.9, 1.8), "R"),
}
RESNETS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}
# count_flops parts by what they are: the T2T layers' softmax attention, the performer's random features.
T2T_ATTENTION_PARTS = ("q_kT", "attn_v")
PERFORMER_PARTS = ("prm", "normaliser", "kptv", "qp_kptv")

WHY_COUNTS_DIFFER = """\
* **T2T-ViT MACs.** `count_flops` counts every matrix product: the Dense layers, the backbone's attention
  products (q k^T, attn v) and the T2T layers' (the performer's random features, or the softmax attention
  of T2T-ViT_t). That reproduces the README's figures (4.8 / 8.5 / 13.8 G for T2T-ViT-14/19/24,
  6.1 / 9.8 / 15.0 G for T2T-ViT_t, 1.1 / 1.5 / 1.8 G for 7/10/12) to within 0.15 G. A counter that only
  hooks layer modules (thop, mmcv's) sees the Dense layers alone (column *layer modules*): the same
  4.33 G for T2T-ViT-14 and T2T-ViT_t-14 (mmpretrain lists 4.34 G for T2T-ViT_t-14). The _t models'
  extra 1.3 G is the softmax attention of their first T2T layer over 56 x 56 = 3136 tokens:
  q k^T and attn v cost 2 x 3136^2 x 64 = 1.26 G MACs (0.08 G more in the second layer, 784 tokens),
  where the performer spends 0.03 G. See the breakdown below.
* **The paper's first version** (arXiv v1, January 2021) gives 5.2 G for T2T-ViT_t-14 and 8.0 / 8.4 /
  12.6 G for T2T-ViT-19, T2T-ViT_t-19 and T2T-ViT-24, which no one convention reproduces for the
  released architecture (its 4.8 G for T2T-ViT-14 is the full count, its 12.6 G for T2T-ViT-24 near the
  layer-module count, 12.7 G, and 5.2 G for T2T-ViT_t-14 lies between 4.3 and 6.1 G); its parameter
  counts differ too (21.4 / 39.0 / 63.9 M against the released models' 21.5 / 39.2 / 64.1 M): it
  describes the models as they were then. Its top-1 figures are also below the
  released checkpoints' (80.6 against 81.5 for T2T-ViT-14), which were trained later (README, March
  2021).
* **ResNet MACs.** `keras.applications`' ResNets stride a downsampling block in its first 1x1
  convolution, as the original ResNet does: 3.86 / 7.57 / 11.28 G, the ResNet paper's 3.8 / 7.6 /
  11.3 G. torchvision's ResNet ("v1.5", which PyTorch papers measure) strides in the 3x3 convolution:
  4.09 / 7.80 / 11.51 G. The T2T-ViT paper's 4.3 / 7.9 / 11.6 G are above both; it does not say how it
  counted. Both layouts are hand-counted in `tests/models/test_layer_macs.py`.
* **Parameters.** Here: every weight (`count_params`). Keras' ResNets have a bias in every convolution
  and count BatchNorm's moving statistics (25.64 M for ResNet50 against torchvision's 25.56 M, the
  paper's 25.5). The T2T-ViTs' total includes the fixed sinusoid position table and the performer's
  fixed random features (21.55 M for T2T-ViT-14; 21.47 M trainable), as the README's 21.5 M does.
* **Top-1** is never measured here: the models have random weights. The released column gives what the
  released weights score according to their authors.
"""


def model_names():
    """Every name ``--models`` accepts, in the table's order."""
    return list(REPORTED)


def parse_models(text):
    """``a,b`` -> the names in the table's order; an argparse error names what is accepted."""
    wanted = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in REPORTED]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, unknown)) or 'empty list'}; accepted: "
                                         f"{', '.join(model_names())}")
    return [n for n in REPORTED if n in wanted]


def build(name, shape):
    """The named model at ``shape`` with 1000 classes and random weights."""
    if name in RESNETS:
        return getattr(keras.applications, RESNETS[name])(weights=None, input_shape=shape, classes=1000)
    return create_model(name, input_shape=shape)


def released_top1(name):
    """The top-1 its authors report for the released 224 ImageNet weights (the registry's), or K's for a ResNet."""
    if name in RESNETS:
        return REPORTED[name][3][0]
    rows = [r for r in list_weights(name) if r.tag == "imagenet" and r.image_size == 224]
    return rows[0].top1 if rows else None


def counts(name, model):
    """Weights and MACs per image of ``model``, with what each MAC count includes."""
    weights = model.count_params()
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    if name in RESNETS:
        layer = flops.count_layer_macs(model)
        return dict(params=weights, trainable_params=trainable, macs=layer["total_macs"],
                    layer_module_macs=layer["total_macs"], mac_counter="keras_t2t.flops.count_layer_macs")
    result = flops.count_flops(model)
    parts = result["parts"]

    def macs_of(keep):
        return sum(v for k, v in parts.items() if keep(k.partition(".")[0], k.rpartition(".")[2])) // 2

    breakdown = {
        "dense": result["dense_macs"],
        "backbone_attention": macs_of(lambda layer, part: layer.startswith("blocks_") and part == "attention"),
        "t2t_attention": macs_of(lambda layer, part: layer.startswith("attention") and part in T2T_ATTENTION_PARTS),
        "performer_features": macs_of(lambda layer, part: layer.startswith("attention") and part in PERFORMER_PARTS),
    }
    assert sum(breakdown.values()) == result["total_macs"], breakdown
    return dict(params=weights, trainable_params=trainable, macs=result["total_macs"],
                layer_module_macs=result["dense_macs"], macs_breakdown=breakdown,
                mac_counter="keras_t2t.flops.count_flops")


def median_seconds(model, batch, shape, warmup, repeats):
    """Median wall time of ``predict_on_batch`` on ``batch`` images after ``warmup`` calls."""
    images = np.random.default_rng(0).standard_normal((batch, *shape)).astype("float32")
    for _ in range(warmup):
        np.asarray(model.predict_on_batch(images))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(model.predict_on_batch(images))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name, args):
    """One row: what is reported for ``name`` and what is measured here."""
    label, paper, retrained, released, sources = REPORTED[name]
    shape = (*args.image_size, 3)
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    model = build(name, shape)
    row = dict(model=name, label=label, sources=sources, build_s=round(time.perf_counter() - start, 2))
    row["paper"] = dict(zip(("top1", "params_m", "gmacs"), paper)) if paper else None
    row["paper_retrained_top1"] = retrained
    row["released"] = dict(top1=released_top1(name), params_m=released[1], gmacs=released[2])
    row.update(counts(name, model))
    if args.timing:
        jit = keras.backend.backend() in ("tensorflow", "jax")
        model.compile(jit_compile=jit)
        row["compiled"] = "xla" if jit else "eager"
        seconds = median_seconds(model, args.batch_size, shape, args.warmup, args.repeats)
        row["images_per_s"] = args.batch_size / seconds
        row["latency_ms"] = 1000 * median_seconds(model, 1, shape, args.warmup, args.repeats)
    del model
    keras.backend.clear_session()
    gc.collect()
    return row


def _cell(value, spec=".1f"):
    return "—" if value is None else format(value, spec)


def markdown(report):
    """The report as Markdown: the table as the paper shows it, measured columns beside it, then why counts differ."""
    s = report["settings"]
    size = "x".join(map(str, s["image_size"]))
    timing = f"b{s['batch_size']} images/s | b1 ms | " if s["timing"] else ""
    lines = [
        f"## T2T-ViT against ResNets: the paper's table and this machine ({report['backend']}, {report['date']})",
        "",
        f"Reported: paper (arXiv v1) and released weights. Measured here at {size}, 1000 classes, random weights.",
        "",
        "| model | paper top-1 % (ResNet*) | paper params M | paper MACs G | released top-1 % | released params M "
        f"| released MACs G | params M | MACs G | layer modules MACs G | {timing}sources |",
        "|---" * (11 + (2 if s["timing"] else 0)) + "|",
    ]
    for r in report["rows"]:
        paper = r["paper"] or {}
        top1 = _cell(paper.get("top1"))
        if r["paper_retrained_top1"]:
            top1 += f" ({r['paper_retrained_top1']:.1f}*)"
        rel = r["released"]
        cells = [r["label"], top1, _cell(paper.get("params_m")), _cell(paper.get("gmacs")), _cell(rel["top1"]),
                 _cell(rel["params_m"]), _cell(rel["gmacs"]), f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e9:.2f}",
                 f"{r['layer_module_macs'] / 1e9:.2f}"]
        if s["timing"]:
            cells += [f"{r['images_per_s']:.1f}", f"{r['latency_ms']:.0f}"]
        lines.append("| " + " | ".join(cells + [r["sources"]]) + " |")
    lines += ["", "Sources: " + "; ".join(f"**{k}** {v}" for k, v in SOURCES.items()) + ".", ""]
    t2t = [r for r in report["rows"] if "macs_breakdown" in r]
    if t2t:
        lines += [
            "What the T2T-ViT MAC count holds (G MACs per image, `keras_t2t.flops.count_flops`):", "",
            "| model | Dense layers | backbone attention products | T2T softmax attention | performer features "
            "| total |", "|---|---|---|---|---|---|",
        ]
        for r in t2t:
            b = {k: f"{v / 1e9:.2f}" for k, v in r["macs_breakdown"].items()}
            lines.append(f"| {r['label']} | {b['dense']} | {b['backbone_attention']} | {b['t2t_attention']} | "
                         f"{b['performer_features']} | {r['macs'] / 1e9:.2f} |")
        lines.append("")
    lines += ["### Why the counts differ", "", WHY_COUNTS_DIFFER, "### Machine and settings", ""]
    m = report["machine"]
    lines += [
        f"* CPU: {m['cpu']['model']}, {m['cpu']['logical_cpus']} logical CPUs; SIMD flags: "
        f"{' '.join(m['cpu']['simd_flags']) or 'none found'}",
        f"* load average (1, 5, 15 min) before {m['load_before']}, after {m['load_after']}",
        f"* backend {report['backend']}; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
        f"* date {report['date']}; image {size}; "
        + (f"batch {s['batch_size']}, {s['warmup']} warm-up + median of {s['repeats']} timed "
           "`predict_on_batch` calls (XLA on TensorFlow/JAX, eager on torch)" if s["timing"] else "no timing"),
    ]
    lines += [f"* note: {note}" for note in s["notes"]]
    return "\n".join(lines) + "\n"


def build_parser():
    parser = OneLineParser(prog="compare_resnet.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=parse_models, default=model_names(),
                        help=f"comma-separated subset of: {', '.join(model_names())} (default: all)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="batch of the images/s column (32)")
    parser.add_argument("--warmup", type=positive_int, default=1,
                        help="untimed calls before each timing; the first compiles (default 1)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed calls; the median is reported (5)")
    parser.add_argument("--image-size", type=image_size, default=(224, 224),
                        help=f"{IMAGE_SIZE_HELP}; at least 32 (ResNets). The paper's columns are at 224 (default)")
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results"),
                        help="folder for compare_resnet.json and compare_resnet.md (default benchmarks/results)")
    parser.add_argument("--no-timing", dest="timing", action="store_false", help="counts only, no timing (fast)")
    parser.add_argument("--note", action="append", default=[], help="a line to record with the results (repeatable)")
    return parser


def run(args):
    """Measures ``args.models`` and writes the two files; returns the report."""
    if min(args.image_size) < 32:
        raise UsageError(f"--image-size must be at least 32x32 (keras.applications' ResNets); got "
                         f"{'x'.join(map(str, args.image_size))}")
    try:
        output = check_output_folder(args.output, "--output")
    except ValueError as error:
        raise UsageError(str(error)) from None
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": keras.backend.backend(),
        "settings": dict(models=args.models, batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats,
                         image_size=list(args.image_size), timing=args.timing, notes=args.note),
        "machine": dict(cpu=cpu_info(), load_before=load_average()),
        "versions": package_versions(),
        "sources": SOURCES,
    }
    rows = []
    for name in args.models:
        print(f"{name} ...", end=" ", flush=True, file=sys.stderr)
        rows.append(measure(name, args))
        r = rows[-1]
        speed = f", {r['images_per_s']:.1f} img/s, {r['latency_ms']:.0f} ms" if args.timing else ""
        print(f"{r['params'] / 1e6:.2f} M, {r['macs'] / 1e9:.2f} G MACs{speed}", flush=True, file=sys.stderr)
    report["rows"] = rows
    report["machine"]["load_after"] = load_average()
    text = markdown(report)
    os.makedirs(output, exist_ok=True)
    write_json_atomic(os.path.join(output, "compare_resnet.json"), report)
    write_text_atomic(os.path.join(output, "compare_resnet.md"), text)
    print(text)
    print(f"wrote {os.path.join(output, 'compare_resnet.json')} and compare_resnet.md", file=sys.stderr)
    return report


def main(argv=None):
    """Returns the exit code: 0, or 2 on bad arguments (one line on stderr); --help exits through argparse."""
    try:
        run(build_parser().parse_args(argv))
    except UsageError as error:
        print(f"compare_resnet.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
