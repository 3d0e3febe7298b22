"""T2T-ViT speed benchmarks on the Keras 3 backends (CPU).

    python benchmarks/run.py [--variants t2t_vit_7,t2t_vit_14,t2t_vit_t_14]
                             [--backends tensorflow,jax,torch] [--quick]
                             [--output-dir benchmarks/results]

Every (backend, variant, case) runs in its own child process, so the child's
``ru_maxrss`` is the peak resident memory of that case alone (framework import
and model build included). Cases:

* ``infer_b32``: ``predict_on_batch`` images/s at batch 32 (compiled: XLA
  ``jit_compile`` on TensorFlow, jitted on JAX; eager on torch).
* ``latency_b1``: median ``predict_on_batch`` latency at batch 1, same compilation.
* ``train_b32``: ``train_on_batch`` images/s at batch 32, AdamW, after warm-up.
* ``tflite_b1`` (TensorFlow only): float32 ``.tflite`` median latency at batch 1
  with the LiteRT interpreter (all cores).
* ``tflite_int8_b1`` (TensorFlow only): the same with dynamic-range int8 weights
  (``tflite_dynamic_int8``).
* ``infer_b32_bf16``: as ``infer_b32`` under the ``mixed_bfloat16`` policy, plus
  the top-1 agreement with the float32 model (same weights) on real images
  (scikit-learn's digits, upsampled to the image size).

For T2T-ViT_t variants every result also gives ``attention_materialised_mb``:
the float32 (B, 1, N, N) logits of the first T2T layer's N-token attention
(3136 at 224: 1.26 GB at batch 32), what materialising it would need on top of
the rest; compare with ``peak_rss_mb``.

Achieved GFLOP/s use ``keras_t2t.flops`` (training: 3 x forward, an estimate)
and are compared with the machine's float32 and bfloat16 matmul peak measured
here. Writes ``results.json``, ``results.md`` and ``results.png`` to
``--output-dir``. ``--quick`` (batch 4, one warm-up, two timed steps, one
small variant) only checks that everything runs; its numbers mean nothing.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

BACKENDS = ("tensorflow", "jax", "torch")
CASES = ("infer_b32", "latency_b1", "train_b32", "tflite_b1", "tflite_int8_b1", "infer_b32_bf16")
# TFLite cases: the export format each converts to (keras_t2t.export).
TFLITE_FORMATS = {"tflite_b1": "tflite_float32", "tflite_int8_b1": "tflite_dynamic_int8"}
AGREEMENT_IMAGES = 256
DEFAULT_VARIANTS = ("t2t_vit_7", "t2t_vit_14", "t2t_vit_t_14")


def _rss_mb():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------
# Child: one case
# --------------------------------------------------------------------------
# At least this many timed steps, whatever the time budget.
MIN_TIMED_STEPS = 3


def _time_steps(step, warmup, iterations, budget_s, result):
    """Runs ``warmup`` untimed steps, then timed steps: ``iterations`` of them, or fewer
    (never below MIN_TIMED_STEPS) once the timed steps have used ``budget_s`` seconds
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
        if budget_s and sum(times) >= budget_s and len(times) >= min(MIN_TIMED_STEPS, iterations):
            break
    result["timed_steps"] = len(times)
    return times


def run_case(backend, variant, case, batch_size, image_size, warmup, iterations, budget_s=0.0):
    import keras
    import numpy as np

    from keras_t2t import create_model, flops

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    shape = (image_size, image_size, 3)
    if case == "infer_b32_bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = create_model(variant, input_shape=shape)
    keras.mixed_precision.set_global_policy("float32")
    flops_per_image = flops.count_flops(model)["total_flops"]
    batch = 1 if case in ("latency_b1",) + tuple(TFLITE_FORMATS) else batch_size
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch,) + shape).astype("float32")
    result = {
        "backend": backend,
        "variant": variant,
        "case": case,
        "batch_size": batch,
        "image_size": image_size,
        "warmup": warmup,
        "iterations": iterations,
        "flops_per_image": flops_per_image,
        "rss_after_build_mb": _rss_mb(),
    }
    if model.t2t_type == "transformer":
        tokens = model.get_layer("tokens_to_token").stage_grids(image_size, image_size)[0]
        result["attention_materialised_mb"] = batch * (tokens[0] * tokens[1]) ** 2 * 4 / 2**20
    jit = backend in ("tensorflow", "jax")
    result["compiled"] = TFLITE_FORMATS.get(case, jit)
    if case == "infer_b32_bf16":
        result["policy"] = "mixed_bfloat16"
        result.update(_top1_agreement(model, variant, shape, batch, jit))
    if case in ("infer_b32", "latency_b1", "infer_b32_bf16"):
        model.compile(jit_compile=jit)
        times = _time_steps(lambda: np.asarray(model.predict_on_batch(images)), warmup, iterations, budget_s, result)
        step_flops = flops_per_image * batch
    elif case == "train_b32":
        labels = rng.integers(0, 1000, size=(batch,))
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=1e-4),
            loss="sparse_categorical_crossentropy",
            jit_compile=jit,
        )
        times = _time_steps(
            lambda: float(np.asarray(model.train_on_batch(images, labels))), warmup, iterations, budget_s, result
        )
        step_flops = flops.TRAIN_FLOPS_FACTOR * flops_per_image * batch
    elif case in TFLITE_FORMATS:
        if backend != "tensorflow":
            raise ValueError(f"{case} runs on the tensorflow backend only")
        from keras_t2t import export

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            classifier = export.classifier_for_export(model)
            saved = os.path.join(tmp, "saved_model")
            export._write_saved_model(classifier, saved, uint8_signature=False)
            path = os.path.join(tmp, "model.tflite")
            with open(path, "wb") as handle:
                handle.write(export._convert_tflite(saved, TFLITE_FORMATS[case]))
            result["convert_s"] = time.perf_counter() - start
            result["tflite_mb"] = os.path.getsize(path) / 1e6
            run = export._tflite_runner(path)
            times = _time_steps(lambda: run(images), warmup, iterations, budget_s, result)
        step_flops = flops_per_image
    else:
        raise ValueError(f"unknown case {case!r}")
    median = float(np.median(times))
    result.update(
        step_s_median=median,
        step_s_min=float(np.min(times)),
        images_per_s=batch / median,
        latency_ms=1000.0 * median,
        achieved_gflops=step_flops / median / 1e9,
        peak_rss_mb=_rss_mb(),
        status="ok",
    )
    return result


def _top1_agreement(model, variant, shape, batch, jit):
    """Top-1 agreement of ``model`` (bfloat16) with a float32 copy of its weights on real images."""
    import numpy as np

    from keras_t2t import create_model, preprocess_input
    from keras_t2t.datasets import load_digits_images

    reference = create_model(variant, input_shape=shape)
    reference.set_weights(model.get_weights())
    (x_train, _), _ = load_digits_images(image_size=8, validation_fraction=0.2, seed=0)
    digits = x_train[:AGREEMENT_IMAGES]
    # 8x8 scans -> the model's image size (nearest neighbour; crops if not a multiple of 8).
    reps = -(-shape[0] // 8), -(-shape[1] // 8)
    images = np.repeat(np.repeat(digits, reps[0], axis=1), reps[1], axis=2)[:, : shape[0], : shape[1]]
    images = preprocess_input(images)
    reference.compile(jit_compile=jit)
    model.compile(jit_compile=jit)
    ref_scores, bf16_scores = [], []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        ref_scores.append(np.asarray(reference.predict_on_batch(chunk), "float32"))
        bf16_scores.append(np.asarray(model.predict_on_batch(chunk), "float32"))
    ref_scores, bf16_scores = np.concatenate(ref_scores), np.concatenate(bf16_scores)
    del reference
    return {
        "agreement_images": int(len(images)),
        "top1_agreement": float(np.mean(ref_scores.argmax(-1) == bf16_scores.argmax(-1))),
        "max_abs_score_diff": float(np.abs(ref_scores - bf16_scores).max()),
        # A randomly initialised model scores classes almost alike: report how close
        # the float32 top-2 are, since that decides how easily rounding flips top-1.
        "median_top1_top2_margin": float(np.median(np.diff(np.sort(ref_scores, -1)[:, -2:], axis=-1))),
    }


# --------------------------------------------------------------------------
# Machine peak: large matmuls
# --------------------------------------------------------------------------
def matmul_peak(n=2048, repeats=5):
    """GFLOP/s of an n x n x n matmul (2 n^3 FLOPs), best of ``repeats``, float32 and bfloat16 (torch)."""
    peak = {"matrix_size": n, "repeats": repeats}
    try:
        import torch

        peak["method"] = (
            f"torch {torch.__version__} matmul, {torch.get_num_threads()} threads, best of {repeats}"
        )
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            a = torch.randn(n, n).to(dtype)
            b = torch.randn(n, n).to(dtype)
            torch.matmul(a, b)
            best = min(_timed(torch.matmul, a, b) for _ in range(repeats))
            peak[f"{name}_gflops"] = 2 * n**3 / best / 1e9
    except ImportError:
        import numpy as np

        peak["method"] = (
            f"numpy {np.__version__} matmul (torch missing: no bfloat16), best of {repeats}"
        )
        a = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
        best = min(_timed(np.matmul, a, a) for _ in range(repeats))
        peak["float32_gflops"] = 2 * n**3 / best / 1e9
        peak["bfloat16_gflops"] = None
    return peak


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# --------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------
def _cpu_model():
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def _versions():
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("keras", "tensorflow", "jax", "torch", "ai-edge-litert", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return versions


def _spawn(backend, variant, case, args, timeout):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"{backend}:{variant}:{case}",
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
    start = time.perf_counter()
    failure = {"backend": backend, "variant": variant, "case": case, "status": "failed"}
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return dict(
            failure,
            error=f"timed out after {timeout} s",
            wall_s=time.perf_counter() - start,
        )
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]), wall_s=wall)
    return dict(
        failure,
        error=(proc.stderr or proc.stdout)[-2000:],
        returncode=proc.returncode,
        wall_s=wall,
    )


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _failure(result):
    lines = (result.get("error") or "").strip().splitlines()
    return "FAILED" + (": " + lines[-1][:120].replace("|", "/") if lines else "")


def markdown(report):
    m, peak = report["machine"], report["peak"]
    lines = [
        f"# T2T-ViT benchmarks ({'QUICK: checks only, not a measurement' if report['quick'] else 'measurement'})",
        "",
        f"- date: {report['date']}",
        (
            f"- CPU: {m['cpu_model']}, {m['cpus']} logical CPUs; load average before {m['loadavg_before']}, "
            f"after {m['loadavg_after']}"
        ),
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        (
            f"- matmul peak ({peak.get('method')}, n={peak['matrix_size']}): float32 "
            f"{_fmt(peak.get('float32_gflops'), '.1f')} GFLOP/s, bfloat16 {_fmt(peak.get('bfloat16_gflops'), '.1f')} GFLOP/s"
        ),
        (
            f"- image size {report['settings']['image_size']}, warm-up {report['settings']['warmup']}, "
            f"timed steps: up to {report['settings']['iterations']}, stopping after "
            f"{report['settings'].get('time_budget_s', 0):g} s of them (at least {MIN_TIMED_STEPS}; 0 = no budget; "
            "median reported); training FLOPs = 3 x forward (estimate)"
        ),
        "",
        "| backend | variant | case | batch | images/s | latency ms | GFLOP/s | % fp32 peak | peak RSS MB "
        "| NxN attention MB | bf16 top-1 agreement | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ok = r.get("status") == "ok"
        lines.append(
            f"| {r['backend']} | {r['variant']} | {r['case']} | {r.get('batch_size', '-')} | "
            f"{_fmt(r.get('images_per_s'), '.2f')} | {_fmt(r.get('latency_ms'), '.1f')} | "
            f"{_fmt(r.get('achieved_gflops'), '.1f')} | {_fmt(r.get('fraction_of_fp32_peak') and 100 * r['fraction_of_fp32_peak'], '.1f')} | "
            f"{_fmt(r.get('peak_rss_mb'), '.0f')} | {_fmt(r.get('attention_materialised_mb'), '.0f')} | "
            f"{_fmt(None if r.get('top1_agreement') is None else 100 * r['top1_agreement'], '.1f')} | "
            f"{'ok' if ok else _failure(r)} |"
        )
    return "\n".join(lines) + "\n"


def chart(report, path):
    """One panel per variant: achieved GFLOP/s per case, one bar per backend, peak lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r.get("status") == "ok"]
    variants = list(dict.fromkeys(r["variant"] for r in rows)) or ["(none)"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    cases = [c for c in CASES if any(r["case"] == c for r in rows)]
    width = 0.8 / max(1, len(backends))
    fig, axes = plt.subplots(
        1, len(variants), figsize=(4.2 * len(variants) + 1, 4.2), sharey=True, squeeze=False
    )
    for ax, variant in zip(axes[0], variants):
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated (default: {})".format(",".join(DEFAULT_VARIANTS)),
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--cases", default=",".join(CASES), help="subset of " + ",".join(CASES)
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny batches, t2t_vit_7 only: checks that it runs",
    )
    parser.add_argument("--output-dir", default=os.path.join("benchmarks", "results"))
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch of the *_b32 cases (default 32; quick 4)",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 2; quick 1)"
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="timed steps at most (default 10; quick 2)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help=f"seconds of timed steps per case, after which timing stops (at least {MIN_TIMED_STEPS} steps; "
        "default 8, quick 0; 0 = always --iterations)",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per case")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (4 if args.quick else 32)
    # One warm-up step: the first call compiles (XLA) or warms up (torch); later ones run as timed.
    args.warmup = args.warmup if args.warmup is not None else 1
    args.iterations = args.iterations or (2 if args.quick else 10)
    args.time_budget = args.time_budget if args.time_budget is not None else (0.0 if args.quick else 8.0)

    if args.child:
        backend, variant, case = args.child.split(":")
        result = run_case(
            backend,
            variant,
            case,
            args.batch_size,
            args.image_size,
            args.warmup,
            args.iterations,
            args.time_budget,
        )
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    backends = [b for b in args.backends.split(",") if b]
    variants = [
        v
        for v in (
            args.variants or ("t2t_vit_7" if args.quick else ",".join(DEFAULT_VARIANTS))
        ).split(",")
        if v
    ]
    cases = [c for c in args.cases.split(",") if c]
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"unknown backend {b!r}; accepted: {', '.join(BACKENDS)}")
    for c in cases:
        if c not in CASES:
            parser.error(f"unknown case {c!r}; accepted: {', '.join(CASES)}")
    from keras_t2t.variants import VARIANTS

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
            "train_flops_factor": 3,
        },
        "machine": {
            "cpu_model": _cpu_model(),
            "cpus": os.cpu_count(),
            "loadavg_before": list(os.getloadavg()),
        },
        "versions": _versions(),
    }
    print("matmul peak ...", flush=True)
    report["peak"] = matmul_peak(
        n=1024 if args.quick else 2048, repeats=3 if args.quick else 5
    )
    results = []
    for backend in backends:
        for variant in variants:
            for case in cases:
                if case in TFLITE_FORMATS and backend != "tensorflow":
                    continue
                print(f"{backend} {variant} {case} ...", end=" ", flush=True)
                r = _spawn(backend, variant, case, args, args.timeout)
                if r.get("status") == "ok":
                    r["fraction_of_fp32_peak"] = (
                        r["achieved_gflops"] / report["peak"]["float32_gflops"]
                    )
                    if report["peak"].get("bfloat16_gflops"):
                        r["fraction_of_bf16_peak"] = (
                            r["achieved_gflops"] / report["peak"]["bfloat16_gflops"]
                        )
                    print(
                        f"{r['images_per_s']:.2f} img/s, {r['latency_ms']:.1f} ms, {r['achieved_gflops']:.1f} GFLOP/s, "
                        f"{r['peak_rss_mb']:.0f} MB ({r['wall_s']:.0f} s)",
                        flush=True,
                    )
                else:
                    print(f"FAILED ({r.get('error', '')[-300:]})", flush=True)
                results.append(r)
    report["results"] = results
    report["machine"]["loadavg_after"] = list(os.getloadavg())
    for key in ("loadavg_before", "loadavg_after"):
        report["machine"][key] = [round(v, 2) for v in report["machine"][key]]

    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    with open(os.path.join(args.output_dir, "results.md"), "w") as handle:
        handle.write(markdown(report))
    chart(report, os.path.join(args.output_dir, "results.png"))
    print(f"wrote {args.output_dir}/results.json, results.md, results.png")
    return 0 if all(r.get("status") == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
