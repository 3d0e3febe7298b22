"""benchmarks/compare_resnet.py: the paper's T2T-ViT vs ResNet table, measured on the backend in use.

Runs on the backend in use, on small subsets: the command line once with --no-timing (two models
at 224), the timing path in-process at 32x32 on T2T-ViT-7 (TensorFlow and torch; numbers exist and
are positive, nothing about their size is checked), and the refusals of bad input.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import keras
import pytest
from helpers import REPO

import keras_t2t
from keras_t2t.flops import count_flops, count_layer_macs

SCRIPT = os.path.join(REPO, "benchmarks", "compare_resnet.py")


def load_script():
    spec = importlib.util.spec_from_file_location("benchmarks_compare_resnet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_tables(text):
    """Each Markdown table of ``text`` as a list of rows, each a list of cells."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def check_tables(text):
    tables = markdown_tables(text)
    for table in tables:
        header, rule, *rows = table
        assert set(rule) == {"---"} and len(rule) == len(header), table[:2]
        assert all(len(row) == len(header) for row in rows), table
    return tables


@pytest.fixture(scope="module")
def counts_only(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=keras.backend.backend())
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--no-timing", "--models", "t2t_vit_7,resnet50", "--output", str(out),
         "--note", "a test run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=3600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((out / "compare_resnet.json").read_text()), (out / "compare_resnet.md").read_text()


def test_the_command_writes_the_rows_in_the_papers_order_with_measured_counts(counts_only):
    _, report, _ = counts_only
    assert report["backend"] == keras.backend.backend()
    resnet, t2t = report["rows"]
    assert (resnet["model"], t2t["model"]) == ("resnet50", "t2t_vit_7")  # the table's order, not the flag's
    # T2T-ViT-7: every weight of the reference (spec section 8), the package's FLOP count.
    assert t2t["params"] == 4_310_222
    assert t2t["macs"] == count_flops("t2t_vit_7")["total_macs"]
    assert t2t["layer_module_macs"] == count_flops("t2t_vit_7")["dense_macs"]
    assert sum(t2t["macs_breakdown"].values()) == t2t["macs"]
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    assert resnet["params"] == model.count_params()
    assert resnet["macs"] == resnet["layer_module_macs"] == count_layer_macs(model)["total_macs"]
    assert "images_per_s" not in t2t and report["settings"]["timing"] is False


def test_each_row_has_what_its_authors_report_and_its_sources(counts_only):
    _, report, _ = counts_only
    resnet, t2t = report["rows"]
    assert resnet["paper"] == {"top1": 76.2, "params_m": 25.5, "gmacs": 4.3}
    assert resnet["paper_retrained_top1"] == 79.1 and resnet["sources"] == "P, K"
    # The released checkpoint's top-1 is the registry's.
    assert t2t["released"]["top1"] == keras_t2t.list_weights("t2t_vit_7")[0].top1
    assert t2t["paper"] is None and t2t["sources"] == "R"
    assert set(report["sources"]) == {"P", "R", "K"}


def test_the_machine_is_recorded(counts_only):
    _, report, text = counts_only
    cpu = report["machine"]["cpu"]
    assert cpu["model"] and cpu["logical_cpus"] == os.cpu_count()
    assert set(cpu["simd_flags"]) <= set(cpu["flags"])
    assert report["versions"]["keras"] == keras.__version__
    assert len(report["machine"]["load_before"]) == len(report["machine"]["load_after"]) == 3
    assert report["date"] in text and cpu["model"] in text and "note: a test run" in text


def test_the_markdown_is_the_papers_table_with_the_measured_columns(counts_only):
    proc, report, text = counts_only
    assert text in proc.stdout
    table, breakdown = check_tables(text)
    header = table[0]
    assert header[:4] == ["model", "paper top-1 % (ResNet*)", "paper params M", "paper MACs G"]
    assert {"params M", "MACs G", "layer modules MACs G", "sources"} <= set(header)
    resnet = dict(zip(header, table[2]))
    assert resnet["model"] == "ResNet50" and resnet["paper top-1 % (ResNet*)"] == "76.2 (79.1*)"
    assert resnet["MACs G"] == f"{report['rows'][0]['macs'] / 1e9:.2f}"
    assert [row[0] for row in breakdown[2:]] == ["T2T-ViT-7"]


# JAX's compilation of a T2T-ViT alone costs ~30 s on the shared 2-core CI machine; the timing code is
# the same on every backend (compile(jit_compile=...) + predict_on_batch), so JAX runs the counts only.
@pytest.mark.skipif(keras.backend.backend() == "jax", reason="time budget: XLA compile on JAX, see above")
def test_the_timing_columns_on_tiny_images(tmp_path, one_torch_thread, capsys):
    script = load_script()
    # Batch 1 for both columns: one compiled shape (XLA compiles per input shape).
    code = script.main(["--models", "t2t_vit_7", "--image-size", "32", "--batch-size", "1", "--warmup", "1",
                        "--repeats", "1", "--output", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "compare_resnet.json").read_text())
    (row,) = report["rows"]
    assert row["images_per_s"] > 0 and row["latency_ms"] > 0
    assert row["compiled"] == ("eager" if keras.backend.backend() == "torch" else "xla")
    assert row["macs"] == count_flops("t2t_vit_7", input_shape=(32, 32, 3))["total_macs"]
    header = check_tables((tmp_path / "compare_resnet.md").read_text())[0][0]
    assert "b1 images/s" in header and "b1 ms" in header


@pytest.mark.parametrize("argv, message", [
    (["--models", "resnet34"], r"--models: unknown 'resnet34'; accepted: resnet50, t2t_vit_14, .*t2t_vit_12"),
    (["--image-size", "16"], r"--image-size must be at least 32x32 .*got 16x16"),
    (["--repeats", "0"], r"--repeats: expected a positive integer, got '0'"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert load_script().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err


def test_an_output_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("")
    assert load_script().main(["--no-timing", "--models", "t2t_vit_7", "--output", str(path)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_the_cpu_is_read_from_proc_cpuinfo(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmarks_machine", os.path.join(REPO, "benchmarks", "machine.py"))
    machine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(machine)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f\n\n"
        "processor\t: 1\nmodel name\t: Another CPU\nflags\t\t: fpu\n\n"
    )
    info = machine.cpu_info(str(cpuinfo))
    assert info["model"] == "Example CPU 9000"  # the first processor's
    assert info["flags"] == sorted(["fpu", "sse4_2", "avx", "avx2", "fma", "avx512f"])
    assert info["simd_flags"] == ["sse4_2", "avx", "avx2", "fma", "avx512f"]
    missing = machine.cpu_info(str(tmp_path / "missing"))
    assert missing["model"] and missing["flags"] == [] == missing["simd_flags"]
