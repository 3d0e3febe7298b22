"""The inference engines side by side on this CPU: Keras on its three backends, the authors' PyTorch
model, and the exported artifacts in ONNX Runtime and OpenVINO, in one interleaved run.

    python benchmarks/engines.py [--engines a,b] [--rounds 5] [--quick]
                                 [--output-dir benchmarks/results/engines]
                                 [--cache-dir benchmarks/results/engines_cache] [--refresh]

What it does:

1. Exports (once; kept in ``--cache-dir``, ``--refresh`` redoes it) two models with the package's
   exporter, ``keras_t2t.export.export_model``, one format at a time (a format that fails leaves
   the others): the timed model, T2T-ViT-14 at 224x224 with fixed random weights (seeded; ``--quick``:
   T2T-ViT-7 at 64x64), and the digits-trained ``t2t_vit_mini`` (``--agreement-model``: the one
   ``benchmarks/run.py`` reports bfloat16 agreement on). A TensorFlow child (``--prepare``) does
   it, and also writes the agreement images (validation digits: 359 at 32x32 for the digits
   model, ``--agreement-images`` upsampled ones for the timed model), the Keras float32 logits on
   them (TensorFlow backend: the reference), calibration images for the calibrated formats
   (training digits) and the timed model's weights in the authors' layout.
2. Runs every engine (``ENGINES``) in its own worker process (``--worker``), which loads its model,
   warms up at both batch sizes, and then waits for commands on stdin: only one engine computes at
   a time. An engine whose export format the exporter does not have (``keras_t2t.export.formats``),
   whose runtime is not installed, or whose export failed is reported, not run.
3. Top-1 agreement of each engine with the Keras float32 reference on both models' agreement
   images (the authors' code has no ``t2t_vit_mini``: not applicable there).
4. Timing on the timed model, in interleaved rounds: in round r every engine runs once, the order
   rotated by r; each turn times ``--steps-b32`` steps at batch ``--batch-size`` (32) and
   ``--steps-b1`` steps at batch 1. Per engine and batch the median of all its timed steps is
   reported, and the spread of its per-round medians (max / min: the machine's noise).
   Every engine uses all cores (ONNX Runtime's ``intra_op_num_threads``, OpenVINO's
   ``INFERENCE_NUM_THREADS``, torch's ``set_num_threads``; TensorFlow and XLA take them all).

Writes ``engines.json`` and ``engines.md`` (img/s, ms, ratio to the authors' PyTorch float32 at
the same batch, agreement, the CPU's model and ISA flags, load average, versions) to
``--output-dir``. ``--quick`` (T2T-ViT-7 at 64x64, batch 4, one round, few steps) only checks
that everything runs; its numbers mean nothing.

Test hook (``tests/test_benchmarks.py``): ``T2T_BENCH_TEST_FAULT=<engine>:raise`` makes that
engine's worker raise while loading (it is then reported failed and the run goes on).
"""

import argparse
import datetime
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

LOADED_AT = time.perf_counter()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

INSTALL_EXPORT = "pip install 'keras-t2t[export]'"
FAULT_ENV = "T2T_BENCH_TEST_FAULT"
PROTOCOL = "@@ "
# The digits-trained model (benchmarks/cases.py's AGREEMENT_MODEL; that module imports Keras).
AGREEMENT_MODEL = os.path.join(REPO, "tests", "export", "fixtures", "digits_t2t_vit_mini", "model.keras")
RUNTIME_PACKAGES = ("keras", "tensorflow", "jax", "torch", "onnxruntime", "openvino", "nncf", "onnx", "tf2onnx",
                    "numpy")
DIGITS_KEY = "digits"


class Engine:
    """One contender: ``kind`` says how its worker runs it (keras, authors, onnxruntime, openvino),
    ``format`` which export format it reads (None: the Keras model itself)."""

    def __init__(self, name, kind, runtime, precision, format=None, backend=None, hint=None):
        self.name, self.kind, self.runtime, self.precision = name, kind, runtime, precision
        self.format, self.backend, self.hint = format, backend, hint


ENGINES = {e.name: e for e in (
    # The Keras backends on the path precision.prepare_for_inference picks (TensorFlow with XLA, JAX jit,
    # torch eager), and TensorFlow without XLA beside it: the check of that choice in the same run.
    Engine("keras_tensorflow", "keras", "Keras 3, TensorFlow backend (recommended: XLA)", "float32",
           backend="tensorflow"),
    Engine("keras_tensorflow_no_xla", "keras", "Keras 3, TensorFlow backend (no XLA)", "float32",
           backend="tensorflow", hint="no_xla"),
    Engine("keras_jax", "keras", "Keras 3, JAX backend (jit)", "float32", backend="jax"),
    Engine("keras_torch", "keras", "Keras 3, PyTorch backend (eager)", "float32", backend="torch"),
    Engine("authors_torch", "authors", "the authors' PyTorch model (eager)", "float32"),
    Engine("ort_fp32", "onnxruntime", "ONNX Runtime (CPU)", "float32", format="onnx"),
    Engine("ort_int8", "onnxruntime", "ONNX Runtime (CPU)", "int8 dynamic (weights int8)",
           format="onnx_dynamic_int8"),
    Engine("openvino_fp32", "openvino", "OpenVINO (CPU), precision hint f32", "float32", format="openvino",
           hint="f32"),
    # The CPU plugin's default inference precision is bfloat16 on CPUs that have it (AVX512_BF16, AMX).
    Engine("openvino_default", "openvino", "OpenVINO (CPU), default precision hint", "plugin's choice",
           format="openvino"),
    Engine("openvino_int8", "openvino", "OpenVINO (CPU), NNCF int8, the rest f32", "int8 (calibrated)",
           format="openvino_int8", hint="f32"),
    Engine("openvino_int8_default", "openvino", "OpenVINO (CPU), NNCF int8, default hint",
           "int8 (calibrated), rest plugin's choice", format="openvino_int8"),
)}
ANCHOR = "authors_torch"
# The formats the engines read, in the order they are exported.
ENGINE_FORMATS = tuple(dict.fromkeys(e.format for e in ENGINES.values() if e.format))


def _send(stream, kind, payload=None):
    stream.write(f"{PROTOCOL}{kind} {json.dumps(payload)}\n")
    stream.flush()


def _protocol_stream():
    """The worker's protocol channel: the original stdout; fd 1 then goes to stderr so that what
    libraries print cannot be taken for an answer."""
    stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return stream


def _timing_images(batch, image_size, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, image_size, image_size, 3)).astype("float32")


# --------------------------------------------------------------------------
# The TensorFlow child: models, exports, agreement images and their reference logits
# --------------------------------------------------------------------------
def _write_pngs(folder, images):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(np.clip(image, 0, 255).astype("uint8")).save(os.path.join(folder, f"{index:04d}.png"))


def prepare_model(spec, formats, refresh):
    """Writes one model's folder in the cache; returns its manifest (also ``manifest.json`` there)."""
    import keras

    from benchmarks.cases import AUTHORS_VARIANTS, logits_model
    from keras_t2t import create_model, preprocess_input
    from keras_t2t.data.digits import load_digits_images
    from keras_t2t.export import export_model
    from keras_t2t.export.formats import ARTIFACT_FILES, format_spec
    from keras_t2t.resolve import resolve_model
    from keras_t2t.weights.mapping import model_state_dict

    folder = spec["folder"]
    manifest_path = os.path.join(folder, "manifest.json")
    if refresh and os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    manifest = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as handle:
            manifest = json.load(handle)
    identity = {key: spec[key] for key in ("key", "variant", "image_size", "seed", "source", "agreement_images",
                                           "num_calibration")}
    if manifest.get("identity") != identity:
        manifest = {"identity": identity, "exports": {}}

    if spec["source"]:
        model_path = spec["source"]
        model = resolve_model(model_path).model
    else:  # fixed random weights: the same on every run
        model_path = os.path.join(folder, "model.keras")
        if not os.path.exists(model_path):
            keras.utils.set_random_seed(spec["seed"])
            size = spec["image_size"]
            create_model(spec["variant"], input_shape=(size, size, 3)).save(model_path)
        model = resolve_model(model_path).model
    size = int(model.input.shape[1])
    manifest.update(model_path=model_path, image_size=size, variant=spec["variant"],
                    classes=int(model.output.shape[-1]))

    inputs_path, reference_path = os.path.join(folder, "inputs.npy"), os.path.join(folder, "reference.npy")
    calibration = os.path.join(folder, "calibration")
    if not (os.path.exists(inputs_path) and os.path.exists(reference_path) and os.path.isdir(calibration)):
        (x_train, _), (x_val, _) = load_digits_images(image_size=size, validation_fraction=0.2, seed=0)
        count = spec["agreement_images"] or len(x_val)
        inputs = np.asarray(preprocess_input(x_val[:count]), "float32")
        reference = np.asarray(logits_model(model).predict(inputs, batch_size=32, verbose=0), "float32")
        shutil.rmtree(calibration, ignore_errors=True)
        _write_pngs(calibration, x_train[: spec["num_calibration"]])
        np.save(inputs_path, inputs)
        np.save(reference_path, reference)
    manifest.update(inputs=inputs_path, reference=reference_path)
    if spec["variant"] in AUTHORS_VARIANTS and not spec["source"]:
        authors_path = os.path.join(folder, "authors_state.npz")
        if not os.path.exists(authors_path):
            np.savez(authors_path, **model_state_dict(model))
        manifest["authors_state"] = authors_path

    # The formats not exported yet, in one export (the model, its samples and reference logits once); a
    # format that fails is recorded and the others are kept (a fresh folder installs those that passed).
    todo = [f for f in formats if not (manifest["exports"].get(f, {}).get("status") == "ok"
                                       and os.path.exists(manifest["exports"][f].get("artifact", "")))]
    if todo:
        out = os.path.join(folder, "export", "_".join(todo))
        shutil.rmtree(out, ignore_errors=True)
        calibrated = any(format_spec(f).needs_calibration for f in todo)
        print(f"[engines] exporting {spec['key']} to {', '.join(todo)} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            report = export_model(
                model_path, out, formats=todo, representative_dir=calibration if calibrated else None,
                num_calibration=spec["num_calibration"], num_samples=4, latency_runs=1,
                # Every artifact is kept: this benchmark measures its agreement itself, on more images.
                int8_agreement=0.0, overwrite=True, verbose=False,
            )
            rows, failure = report.get("artifacts", []), None
        except Exception as error:  # noqa: BLE001 - recorded in every format's row
            rows, failure = [], f"{type(error).__name__}: {error}"[-1500:]
        seconds = time.perf_counter() - start
        for fmt in todo:
            entry = {"artifact": os.path.join(out, ARTIFACT_FILES[fmt]), "export_s": seconds, "exported_with": todo}
            errors = [r.get("error") or "outside tolerance" for r in rows if r["artifact"] == fmt and not r["passed"]]
            if failure or errors or not os.path.exists(entry["artifact"]):
                entry.update(status="failed", error=failure or (errors[0] if errors else "no artifact written"))
            else:
                entry["status"] = "ok"
            manifest["exports"][fmt] = entry
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle, indent=1)
    return manifest


def prepare_main(request):
    from keras_t2t.export.formats import ARTIFACT_FILES, FORMATS

    stream = _protocol_stream()
    try:
        formats = [f for f in request["formats"] if f in FORMATS]
        manifests = {spec["key"]: prepare_model(spec, formats, request["refresh"]) for spec in request["models"]}
        _send(stream, "RESULT", {"formats": list(FORMATS), "artifact_files": ARTIFACT_FILES, "models": manifests})
    except Exception:
        _send(stream, "ERROR", traceback.format_exc()[-3000:])
        return 1
    return 0


# --------------------------------------------------------------------------
# The worker: one engine on one model
# --------------------------------------------------------------------------
class Unavailable(Exception):
    """The engine cannot run here (its runtime is not installed)."""


def need_runtime(module):
    """The runtime module ``module``, imported; Unavailable (naming the extra to install) when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise Unavailable(f"{module} is not installed ({error}): {INSTALL_EXPORT}") from None


def _keras_runner(engine, task):
    from benchmarks.cases import logits_model
    from keras_t2t.resolve import resolve_model

    from keras_t2t import precision

    model = logits_model(resolve_model(task["model_path"]).model)
    if engine.hint == "no_xla":
        model.compile(jit_compile=False)
        info = {"jit_compile": False}
    else:
        model.compile()
        precision.prepare_for_inference(model)
        info = {"jit_compile": bool(model.jit_compile), "path": model.inference_reason}
    return lambda images: np.asarray(model.predict_on_batch(images)), info


def _authors_runner(engine, task):
    torch = need_runtime("torch")
    from benchmarks import authors_torch

    torch.set_num_threads(os.cpu_count())
    state = np.load(task["authors_state"])
    model = authors_torch.T2TViT(task["variant"], image_size=task["image_size"], classes=task["classes"]).eval()
    model.load_state_dict({key: torch.from_numpy(state[key]) for key in state.files}, strict=True)

    def run(images):
        with torch.no_grad():
            return model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()

    return run, {"threads": torch.get_num_threads()}


def _onnxruntime_runner(engine, task):
    ort = need_runtime("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(task["artifact"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    output = "logits" if "logits" in outputs else outputs[0]
    return lambda images: session.run([output], {name: images})[0], {"threads": os.cpu_count()}


def _openvino_xml(path):
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".xml"))
        if not found:
            raise FileNotFoundError(f"no OpenVINO .xml model in {path}")
        path = os.path.join(path, found[0])
    return path


def _type_name(element_type):
    """An OpenVINO element type as its short name ("f32", "bf16")."""
    name = getattr(element_type, "get_type_name", None)
    return name() if name else str(element_type)


def _openvino_runner(engine, task):
    ov = need_runtime("openvino")
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": os.cpu_count()}
    if engine.hint:
        config["INFERENCE_PRECISION_HINT"] = engine.hint
    path = _openvino_xml(task["artifact"])
    compiled = {}

    def compiled_for(batch):
        # One compiled model per batch size, its shapes static (the plugin's fastest form).
        if batch not in compiled:
            model = core.read_model(path)
            shape = model.inputs[0].get_partial_shape()
            model.reshape([batch] + [shape[i].get_length() if shape[i].is_static else task["image_size"]
                                     for i in range(1, shape.rank.get_length())])
            net = core.compile_model(model, "CPU", config)
            output = next((o for o in net.outputs if "logits" in o.get_names()), net.outputs[0])
            compiled[batch] = (net.create_infer_request(), output, net)
        return compiled[batch]

    def run(images):
        request, output, _ = compiled_for(len(images))
        return np.array(request.infer({0: images})[output])

    _, _, net = compiled_for(task["batch_sizes"][0])
    info = {"threads": int(net.get_property("INFERENCE_NUM_THREADS")),
            "inference_precision": _type_name(net.get_property("INFERENCE_PRECISION_HINT"))}
    return run, info


RUNNERS = {"keras": _keras_runner, "authors": _authors_runner, "onnxruntime": _onnxruntime_runner,
           "openvino": _openvino_runner}


def _logits_of(run, images, batch):
    """Logits of ``images`` in chunks of ``batch`` (the last one padded: static-shape engines)."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        count = len(chunk)
        if count < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, axis=0)])
        out.append(np.asarray(run(chunk), "float32")[:count])
    return np.concatenate(out)


def worker_main(task):
    """Loads one engine on each model of ``task["models"]``, warms it up on the timed one, then answers
    ``agree`` (logits of a model's agreement images) and ``time`` (steps on the timed model)."""
    stream = _protocol_stream()
    engine = ENGINES[task["engine"]]
    try:
        fault = dict(item.partition(":")[::2] for item in os.environ.get(FAULT_ENV, "").split(",") if item)
        if fault.get(engine.name) == "raise":
            raise RuntimeError(f"fault injected by {FAULT_ENV} (test hook)")
        start = time.perf_counter()
        runs, info = {}, {}
        for key, model in task["models"].items():
            runs[key], info[key] = RUNNERS[engine.kind](engine, dict(model, batch_sizes=task["batch_sizes"]))
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        timed = task["timed_model"]
        images = {}
        if timed in runs:
            size = task["models"][timed]["image_size"]
            images = {batch: _timing_images(batch, size) for batch in task["batch_sizes"]}
            for batch in task["batch_sizes"]:
                for _ in range(task["warmup"]):
                    runs[timed](images[batch])
        for key in info:
            info[key].update(load_s=load_s, warmup_s=time.perf_counter() - start)
    except Unavailable as error:
        _send(stream, "UNAVAILABLE", str(error))
        return 0
    except Exception:
        _send(stream, "ERROR", traceback.format_exc()[-3000:])
        return 1
    _send(stream, "READY", info)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["op"] == "time":
                run, batch_images, times = runs[timed], images[command["batch"]], []
                for _ in range(command["steps"]):
                    start = time.perf_counter()
                    run(batch_images)
                    times.append(time.perf_counter() - start)
                _send(stream, "RESULT", times)
            elif command["op"] == "agree":
                inputs = np.load(command["inputs"])
                np.save(command["output"], _logits_of(runs[command["model"]], inputs, task["batch_sizes"][0]))
                _send(stream, "RESULT", None)
            else:
                break
        except Exception:
            _send(stream, "ERROR", traceback.format_exc()[-3000:])
    return 0


# --------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------
class WorkerFailed(Exception):
    pass


class Worker:
    """A child process answering one command at a time over its stdin / protocol lines."""

    def __init__(self, argv, env, timeout, name):
        self.name, self.timeout = name, timeout
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv], env=env, cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                self.lines.put(line[len(PROTOCOL):].rstrip("\n"))
        self.lines.put(None)

    def stderr_tail(self, chars=1500):
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")[-chars:]

    def receive(self):
        """``(kind, payload)`` of the next answer; WorkerFailed on a timeout or a dead child."""
        try:
            line = self.lines.get(timeout=self.timeout)
        except queue.Empty:
            self.close()
            raise WorkerFailed(f"timed out after {self.timeout:g} s") from None
        if line is None:
            code = self.proc.wait()
            raise WorkerFailed(f"the worker died (return code {code}): {self.stderr_tail()}")
        kind, _, payload = line.partition(" ")
        return kind, json.loads(payload)

    def ask(self, **command):
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        kind, payload = self.receive()
        if kind != "RESULT":
            raise WorkerFailed(str(payload))
        return payload

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def _child_env(backend="tensorflow"):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def prepare(model_specs, formats, refresh, timeout):
    """Runs the TensorFlow child that exports and writes the agreement data; returns its answer."""
    request = {"models": model_specs, "formats": list(formats), "refresh": refresh}
    worker = Worker(["--prepare", json.dumps(request)], _child_env("tensorflow"), timeout, "prepare")
    try:
        kind, payload = worker.receive()
        if kind != "RESULT":
            raise RuntimeError(f"preparing the models failed:\n{payload}")
        return payload
    finally:
        worker.close()


def unavailable_reason(engine, manifest, formats):
    """Why ``engine`` cannot run on the model of ``manifest`` (None: it can), given the exporter's ``formats``."""
    if engine.kind == "authors" and "authors_state" not in manifest:
        return "not applicable: the authors' code has no " + manifest["variant"]
    if engine.format is None:
        return None
    if engine.format not in formats:
        return (f"not available: the exporter has no format {engine.format!r} yet "
                "(keras_t2t.export.formats.FORMATS)")
    export = manifest["exports"].get(engine.format, {})
    if export.get("status") != "ok":
        return "failed: export failed: " + (export.get("error") or "not exported").strip().splitlines()[-1][:300]
    return None


def agreement(logits, reference):
    top = reference.argmax(-1)
    ordered = np.sort(reference, axis=-1)
    return {
        "images": len(reference),
        "top1_agreement": float(np.mean(logits.argmax(-1) == top)),
        "max_relative_logit_error": float(np.abs(logits - reference).max() / np.abs(reference).max()),
        "reference_median_top1_top2_margin": float(np.median(ordered[:, -1] - ordered[:, -2])),
    }


def _model_task(manifest, engine):
    return {"model_path": manifest["model_path"], "image_size": manifest["image_size"],
            "variant": manifest["variant"], "classes": manifest["classes"],
            "authors_state": manifest.get("authors_state"),
            "artifact": manifest["exports"].get(engine.format, {}).get("artifact")}


def _fail(entries, error):
    text = str(error).strip()
    for entry in entries:
        entry.update(status="failed: " + (text.splitlines() or ["?"])[-1][:300], error=text)


def run_engines(manifests, timed_key, names, formats, args, rows):
    """Every engine of ``names`` in one worker for all models (started together; each loads and warms up
    on its own): agreement on every model, then the interleaved timing rounds on ``timed_key``."""
    batch_sizes = [args.batch_size, 1]
    workers = {}
    try:
        for name in names:
            engine, models = ENGINES[name], {}
            for key, manifest in manifests.items():
                reason = unavailable_reason(engine, manifest, formats)
                rows[name]["models"][key] = {"status": reason or "starting"}
                if reason is None:
                    models[key] = _model_task(manifest, engine)
            if models:
                task = {"engine": name, "models": models, "timed_model": timed_key, "batch_sizes": batch_sizes,
                        "warmup": args.warmup}
                workers[name] = Worker(["--worker", json.dumps(task)], _child_env(engine.backend or "tensorflow"),
                                       args.timeout, name)
        live = []
        for name, worker in workers.items():
            entries = {key: e for key, e in rows[name]["models"].items() if e["status"] == "starting"}
            try:
                kind, payload = worker.receive()
            except WorkerFailed as error:
                kind, payload = "ERROR", str(error)
            if kind == "READY":
                for key, entry in entries.items():
                    entry.update(status="ok", **payload[key])
                live.append(name)
            elif kind == "UNAVAILABLE":
                for entry in entries.values():
                    entry["status"] = "not available: " + payload
            else:
                _fail(entries.values(), payload)
            print(f"  {name}: " + "; ".join(f"{k} {e['status']}" for k, e in rows[name]["models"].items()),
                  flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            for key, manifest in manifests.items():
                reference = np.load(manifest["reference"])
                for name in list(live):
                    entry = rows[name]["models"][key]
                    if entry["status"] != "ok":
                        continue
                    out = os.path.join(scratch, f"{name}_{key}.npy")
                    try:
                        workers[name].ask(op="agree", model=key, inputs=manifest["inputs"], output=out)
                        entry["agreement"] = agreement(np.load(out), reference)
                    except WorkerFailed as error:
                        _fail(rows[name]["models"].values(), error)
                        live.remove(name)
        live = [name for name in live if rows[name]["models"][timed_key]["status"] == "ok"]
        steps = {args.batch_size: args.steps_b32, 1: args.steps_b1}
        times = {name: {batch: [] for batch in batch_sizes} for name in live}
        for r in range(args.rounds):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            print(f"  round {r + 1}/{args.rounds}: {', '.join(order)}", flush=True)
            for name in order:
                for batch in batch_sizes:
                    if name not in live:
                        continue
                    try:
                        times[name][batch].append(workers[name].ask(op="time", batch=batch, steps=steps[batch]))
                    except WorkerFailed as error:
                        _fail([rows[name]["models"][timed_key]], error)
                        live.remove(name)
        for name in live:
            entry = rows[name]["models"][timed_key]
            for batch in batch_sizes:
                every = [t for round_times in times[name][batch] for t in round_times]
                medians = [float(np.median(t)) for t in times[name][batch]]
                median = float(np.median(every))
                entry[f"b{batch}"] = {"batch": batch, "steps": len(every), "step_s_median": median,
                                      "step_s_min": float(min(every)), "images_per_s": batch / median,
                                      "latency_ms": 1000 * median, "round_medians_s": medians,
                                      "round_spread": max(medians) / min(medians)}
    finally:
        for worker in workers.values():
            worker.close()


def model_specs(args):
    specs = [{"key": args.variant, "variant": args.variant, "image_size": args.image_size, "seed": 0,
              "source": None, "agreement_images": args.agreement_images, "num_calibration": args.num_calibration,
              "folder": os.path.join(args.cache_dir, f"{args.variant}_{args.image_size}_seed0")}]
    specs.append({"key": DIGITS_KEY, "variant": "t2t_vit_mini", "image_size": None, "seed": 0,
                  "source": os.path.abspath(args.agreement_model), "agreement_images": None,
                  "num_calibration": args.num_calibration,
                  "folder": os.path.join(args.cache_dir, "digits_" + os.path.basename(
                      os.path.dirname(os.path.abspath(args.agreement_model))))})
    return specs


def summarise(report):
    """Ratios to the authors' float32 model, and the targets of issue 24 as lines of the report."""
    timed = report["timed_model"]
    anchor = report["engines"].get(ANCHOR, {}).get("models", {}).get(timed, {})
    exported = [name for name in report["engines"] if ENGINES[name].format]
    summary = {}
    for batch_key in (f"b{report['settings']['batch_size']}", "b1"):
        base = anchor.get(batch_key, {}).get("images_per_s")
        best = None
        for name, row in report["engines"].items():
            result = row["models"].get(timed, {}).get(batch_key)
            if result and base:
                result["vs_authors_fp32"] = result["images_per_s"] / base
                if name in exported and (best is None or result["vs_authors_fp32"] > best[1]):
                    best = (name, result["vs_authors_fp32"])
        summary[batch_key] = {"best_exported": best and best[0], "best_exported_vs_authors_fp32": best and best[1],
                              "target": 2.0, "met": bool(best and best[1] >= 2.0)}
    int8 = {name: row["models"].get(DIGITS_KEY, {}).get("agreement", {}).get("top1_agreement")
            for name, row in report["engines"].items() if "int8" in name}
    summary["int8_digits_agreement"] = {"by_engine": int8, "target": 0.995,
                                        "met": bool(int8) and all(v is not None and v >= 0.995 for v in int8.values())}
    return summary


def _fmt(value, spec, scale=1.0):
    return "-" if value is None else format(value * scale, spec)


def markdown(report):
    settings, machine, timed = report["settings"], report["machine"], report["timed_model"]
    b = f"b{settings['batch_size']}"
    kind = "QUICK: checks only, not a measurement" if report["quick"] else "measurement"
    lines = [
        f"# Inference engines on CPU: {timed} at {settings['image_size']}x{settings['image_size']} ({kind})",
        "",
        f"- date: {report['date']}; wall time {report['wall_s']:.0f} s (exports and reference logits "
        f"{report['prepare_s']:.0f} s, engines {report['engines_s']:.0f} s)",
        f"- CPU: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs; ISA flags: "
        f"{', '.join(machine['isa_flags']) or 'none'}; SIMD flags: {', '.join(machine['simd_flags']) or 'none'}",
        f"- load average before {machine['loadavg_before']}, after {machine['loadavg_after']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        f"- {settings['rounds']} interleaved rounds (every engine once per round, order rotated); per turn "
        f"{settings['steps_b32']} step(s) at batch {settings['batch_size']} and {settings['steps_b1']} at batch 1, "
        f"after {settings['warmup']} warm-up step(s) per batch; median of all timed steps; every engine on all "
        f"{machine['logical_cpus']} cores",
        f"- agreement: top-1 agreement with Keras float32 (TensorFlow) on the trained digits model "
        f"({report['models'][DIGITS_KEY]['images']} validation digits) and on {timed} "
        f"(fixed random weights, {report['models'][timed]['images']} upsampled validation digits)",
        "",
        f"| engine | runtime | precision | batch {settings['batch_size']} img/s | batch {settings['batch_size']} ms "
        f"| x authors fp32 | batch 1 img/s | batch 1 ms | x authors fp32 | spread b{settings['batch_size']} / b1 "
        f"| top-1 agreement, digits (trained) | top-1 agreement, {timed} (random) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["engines"].items():
        t = row["models"].get(timed, {})
        d = row["models"].get(DIGITS_KEY, {})
        big, one = t.get(b, {}), t.get("b1", {})
        precision = row["precision"]
        if t.get("inference_precision"):
            precision += f" ({t['inference_precision']})"
        statuses = {t.get("status", "-"), d.get("status", "-")} - {"ok"}
        status = "ok" if not statuses else "; ".join(sorted(
            f"{key}: {entry.get('status')}" for key, entry in ((timed, t), (DIGITS_KEY, d))
            if entry.get("status") != "ok"))
        lines.append(
            f"| {name} | {row['runtime']} | {precision} | {_fmt(big.get('images_per_s'), '.2f')} | "
            f"{_fmt(big.get('latency_ms'), '.1f')} | {_fmt(big.get('vs_authors_fp32'), '.2f')} | "
            f"{_fmt(one.get('images_per_s'), '.2f')} | {_fmt(one.get('latency_ms'), '.1f')} | "
            f"{_fmt(one.get('vs_authors_fp32'), '.2f')} | "
            f"{_fmt(big.get('round_spread'), '.2f')} / {_fmt(one.get('round_spread'), '.2f')} | "
            f"{_fmt(d.get('agreement', {}).get('top1_agreement'), '.1f', 100)} | "
            f"{_fmt(t.get('agreement', {}).get('top1_agreement'), '.1f', 100)} | {status.replace('|', '/')} |"
        )
    summary = report["summary"]
    lines.append("")
    for batch_key, label in ((b, f"batch {settings['batch_size']}"), ("b1", "batch 1")):
        s = summary[batch_key]
        lines.append(f"- target: best exported artifact >= 2x the authors' PyTorch fp32 at {label}: "
                     + (f"{s['best_exported']} {s['best_exported_vs_authors_fp32']:.2f}x "
                        f"({'met' if s['met'] else 'not met'})" if s["best_exported"] else "no measurement"))
    int8 = summary["int8_digits_agreement"]
    measured = ", ".join(f"{name} {_fmt(v, '.1f', 100)}%" for name, v in int8["by_engine"].items())
    lines.append(f"- target: int8 top-1 agreement >= 99.5% on the trained digits model: {measured or '-'} "
                 f"({'met' if int8['met'] else 'not met'})")
    return "\n".join(lines) + "\n"


def main(argv=None):
    run_start = LOADED_AT if __name__ == "__main__" else time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated, from {', '.join(ENGINES)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="T2T-ViT-7 at 64x64, batch 4, one round, few steps: checks that everything runs")
    parser.add_argument("--variant", default=None, help="the timed model (default t2t_vit_14; quick t2t_vit_7)")
    parser.add_argument("--image-size", type=int, default=None, help="of the timed model (default 224; quick 64)")
    parser.add_argument("--agreement-model", default=AGREEMENT_MODEL,
                        help="the trained .keras model of the agreement column (default: the digits-trained "
                             "t2t_vit_mini)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="the large batch (default 32; quick 4)")
    parser.add_argument("--steps-b32", type=int, default=None,
                        help="timed steps per turn at the large batch (default 2; quick 1)")
    parser.add_argument("--steps-b1", type=int, default=None, help="timed steps per turn at batch 1 (default 10; "
                                                                   "quick 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per batch size when an engine loads")
    parser.add_argument("--agreement-images", type=int, default=None,
                        help="upsampled validation digits the timed model's agreement uses (default 128; quick 16)")
    parser.add_argument("--num-calibration", type=int, default=None,
                        help="training digits the calibrated int8 formats see (default 100; quick 8)")
    parser.add_argument("--output-dir", default=os.path.join("benchmarks", "results", "engines"))
    parser.add_argument("--cache-dir", default=os.path.join("benchmarks", "results", "engines_cache"),
                        help="the exported models, kept between runs")
    parser.add_argument("--refresh", action="store_true", help="export again (the cache is otherwise reused)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for any one step of a child")
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare_main(json.loads(args.prepare))
    if args.worker:
        return worker_main(json.loads(args.worker))

    quick = args.quick
    args.variant = args.variant or ("t2t_vit_7" if quick else "t2t_vit_14")
    args.image_size = args.image_size or (64 if quick else 224)
    args.rounds = args.rounds or (1 if quick else 5)
    args.batch_size = args.batch_size or (4 if quick else 32)
    args.steps_b32 = args.steps_b32 or (1 if quick else 2)
    args.steps_b1 = args.steps_b1 or (2 if quick else 10)
    args.agreement_images = args.agreement_images or (16 if quick else 128)
    args.num_calibration = args.num_calibration or (8 if quick else 100)
    if quick and args.warmup == 2:
        args.warmup = 1
    names = [n for n in args.engines.split(",") if n]
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        parser.error(f"unknown engine(s) {', '.join(unknown) or '(none)'}; accepted: {', '.join(ENGINES)}")
    if args.image_size % 8:
        parser.error(f"--image-size must be a multiple of 8 (the agreement images are digits); got {args.image_size}")
    from benchmarks.machine import cpu_info, isa_flags_present, load_average, package_versions

    cpu = cpu_info()
    machine = {"cpu_model": cpu["model"], "logical_cpus": cpu["logical_cpus"], "isa_flags": isa_flags_present(),
               "simd_flags": cpu["simd_flags"], "loadavg_before": load_average()}
    formats_wanted = [f for f in ENGINE_FORMATS if any(ENGINES[n].format == f for n in names)]
    print(f"preparing the models and exports ({', '.join(formats_wanted) or 'none'}) in {args.cache_dir} ...",
          flush=True)
    specs = model_specs(args)
    start = time.perf_counter()
    prepared = prepare(specs, formats_wanted, args.refresh, args.timeout)
    prepare_s = time.perf_counter() - start
    print(f"prepared in {prepare_s:.0f} s", flush=True)
    formats = prepared["formats"]
    rows = {n: {"engine": n, "runtime": ENGINES[n].runtime, "precision": ENGINES[n].precision,
                "format": ENGINES[n].format,
                "artifact_file": prepared["artifact_files"].get(ENGINES[n].format), "models": {}} for n in names}
    timed_key = specs[0]["key"]
    print(f"engines: loading; agreement on {', '.join(prepared['models'])}; timing on {timed_key} ...", flush=True)
    start = time.perf_counter()
    run_engines(prepared["models"], timed_key, names, formats, args, rows)
    engines_s = time.perf_counter() - start
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "timed_model": timed_key,
        "settings": {key: getattr(args, key) for key in ("variant", "image_size", "rounds", "batch_size", "steps_b32",
                                                          "steps_b1", "warmup", "agreement_images",
                                                          "num_calibration", "engines")},
        "machine": dict(machine, loadavg_after=load_average()),
        "versions": package_versions(RUNTIME_PACKAGES),
        "exporter_formats": formats,
        "models": {key: {"model": m["model_path"], "image_size": m["image_size"],
                         "images": int(np.load(m["inputs"], mmap_mode="r").shape[0]), "exports": m["exports"]}
                   for key, m in prepared["models"].items()},
        "engines": rows,
        "prepare_s": prepare_s,
        "engines_s": engines_s,
    }
    report["summary"] = summarise(report)
    report["wall_s"] = time.perf_counter() - run_start
    from keras_t2t.io_utils import write_json_atomic, write_text_atomic

    os.makedirs(args.output_dir, exist_ok=True)
    write_json_atomic(os.path.join(args.output_dir, "engines.json"), report)
    text = markdown(report)
    write_text_atomic(os.path.join(args.output_dir, "engines.md"), text)
    print(text)
    print(f"wrote {args.output_dir}/engines.json, engines.md; wall time {report['wall_s']:.0f} s", flush=True)
    ran = [entry for row in rows.values() for entry in row["models"].values()]
    return 0 if all(e["status"] == "ok" or e["status"].startswith(("not available", "not applicable"))
                    for e in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
