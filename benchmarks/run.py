"""T2T-ViT speed benchmarks on the Keras 3 backends (CPU).

    python benchmarks/run.py [--variants t2t_vit_7,t2t_vit_14,t2t_vit_t_14]
                             [--backends tensorflow,jax,torch] [--cases default]
                             [--dtype float32|auto|bfloat16|mixed_bfloat16]
                             [--quick] [--process-per-case]
                             [--output-dir benchmarks/results]

The parent (this module) plans the runs, measures the machine's matmul peak
(``benchmarks/machine.py``), starts the children and writes the report
(``benchmarks/report.py``); a child (``--child``) runs the cases
(``benchmarks/cases.py``).

Every (backend, variant) pair runs its cases in sequence in one child process
(``KERAS_BACKEND`` set): the framework is imported and the float32 model built
once, and the cases reuse it. The order is ``cases.CASES``: infer_b32,
latency_b1, the TFLite cases, the bfloat16 cases, the authors' model, then
train_b32 and train_b32_mixed_bf16 (training last: it leaves optimizer state
and changed weights behind). Before each case the child writes "5" to
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

``--dtype`` (default ``float32``: the plain cases mean what earlier reports
meant) sets the dtype of infer_b32, latency_b1 and train_b32. ``auto`` is
resolved in each child by ``keras_t2t.precision.resolve_dtype``
(``recommended_dtype`` measures the backend that child runs); ``bfloat16`` and
``mixed_bfloat16`` rebuild the float32 model in that dtype
(``precision.cast_model``) and prepare it as the commands do
(``precision.prepare_for_inference``: no XLA for bfloat16 on TensorFlow).
train_b32 under a resolved ``bfloat16`` trains under ``mixed_bfloat16`` (float32
variables; pure bfloat16 training is not offered) and its ``dtype_reason`` says
so. The TFLite, bfloat16 and authors' cases keep their own dtype. Every result
records ``dtype`` (what ran) and ``dtype_reason``; a plain case that ran in
another dtype than float32 also gets the trained model's agreement columns.

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
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

# The run's wall time includes the parent's imports (Keras and the package, below) when run as a script.
LOADED_AT = time.perf_counter()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# benchmarks.* needs REPO on sys.path.
from benchmarks.cases import (
    AGREEMENT_MODEL,
    AUTHORS_VARIANTS,  # noqa: F401  (tests/test_authors_torch.py reads run.AUTHORS_VARIANTS)
    CASES,
    DEFAULT_BF16_VARIANTS,
    DEFAULT_VARIANTS,
    DTYPE_CASES,
    MIN_TIMED_STEPS,
    child_main,
    select_cases,
)
from benchmarks.machine import (
    PEAK_SHAPES,
    QUICK_PEAK_SHAPES,
    best_shapes,
    cpu_model,
    isa_flags_present,
    load_average,
    matmul_peak,
    package_versions,
    peak_summary,
)
from benchmarks.report import chart, markdown, minutes
from keras_t2t import flops
from keras_t2t.allocator import keep_freed_memory
from keras_t2t.cli.args import image_size
from keras_t2t.io_utils import write_atomic, write_json_atomic
from keras_t2t.models.presets import VARIANTS
from keras_t2t.precision import DTYPE_CHOICES

BACKENDS = ("tensorflow", "jax", "torch")


def square_side(text):
    """The one image-size grammar (N or HxW) of every command; the benchmark times square images."""
    height, width = image_size(text)
    if height != width:
        raise argparse.ArgumentTypeError(f"the benchmark times square images: give N or NxN, got {text!r}")
    return height


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
        "--agreement-model",
        args.agreement_model,
        "--dtype",
        args.dtype,
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


def main(argv=None):
    run_start = LOADED_AT if __name__ == "__main__" else time.perf_counter()
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
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="float32",
        help="dtype of the plain cases {} (default float32, so they mean what earlier reports meant; auto: "
        "keras_t2t.precision.recommended_dtype, measured in each child on its backend; bfloat16 trains "
        "under mixed_bfloat16). The TFLite, bfloat16 and authors' cases keep their own dtype".format(
            ", ".join(DTYPE_CASES)),
    )
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
            dtype=args.dtype,
        )
        if args.keep_freed_memory:
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
            "dtype": args.dtype,
            "train_flops_factor": flops.TRAIN_FLOPS_FACTOR,
        },
        "machine": {
            "cpu_model": cpu_model(),
            # The ISA flags that decide whether bfloat16 can be fast (AMX) or merely run (AVX512_BF16).
            "isa_flags": isa_flags_present(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_average(),
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
                f"{r['dtype']}: {r['images_per_s']:.2f} img/s, {r['latency_ms']:.1f} ms, {r['achieved_gflops']:.1f} GFLOP/s, "
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
    report["machine"]["loadavg_after"] = load_average()
    report["wall_s"] = time.perf_counter() - run_start
    # Children only (start-up included); the rest of wall_s is the parent's imports and matmul peaks.
    report["wall_s_per_backend"] = {b: sum(r["wall_s"] for r in results if r["backend"] == b) for b in backends}

    write_json_atomic(os.path.join(args.output_dir, "results.json"), report)
    text = markdown(report)
    write_atomic(os.path.join(args.output_dir, "results.md"), lambda handle: handle.write(text.encode("utf-8")))
    chart(report, os.path.join(args.output_dir, "results.png"))
    print(f"wrote {args.output_dir}/results.json, results.md, results.png")
    per_backend = ", ".join(f"{b} {minutes(s)}" for b, s in report["wall_s_per_backend"].items())
    print(f"total wall time: {minutes(report['wall_s'])} ({per_backend})", flush=True)
    return 0 if all(r.get("status") == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
