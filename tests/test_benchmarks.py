"""benchmarks/run.py --quick runs end to end and writes its JSON, Markdown and PNG.

TensorFlow backend only (CI budget: ~90 s on 2 cores); the numbers of a quick
run are not checked, only that they exist.
"""

import json
import os
import subprocess
import sys

import keras
import pytest
from helpers import REPO

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the benchmark smoke run costs ~1 minute; it runs on the tensorflow backend only (CI budget)",
)


def test_quick_run_writes_reports(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "benchmarks", "run.py"),
            "--quick",
            "--backends",
            keras.backend.backend(),
            "--variants",
            "t2t_vit_7",
            "--output-dir",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]

    report = json.loads((out / "results.json").read_text())
    assert report["quick"] is True
    for key in ("date", "machine", "versions", "peak", "settings", "results"):
        assert key in report
    assert (
        report["machine"]["cpus"] >= 1 and len(report["machine"]["loadavg_before"]) == 3
    )
    assert report["peak"]["float32_gflops"] > 0
    cases = {r["case"]: r for r in report["results"]}
    assert set(cases) == {"infer_b32", "latency_b1", "train_b32", "tflite_b1", "tflite_int8_b1", "infer_b32_bf16"}
    bf16 = cases["infer_b32_bf16"]
    assert bf16["policy"] == "mixed_bfloat16" and bf16["agreement_images"] > 0
    assert 0.0 <= bf16["top1_agreement"] <= 1.0 and bf16["max_abs_score_diff"] >= 0.0
    for r in cases.values():
        assert r["status"] == "ok", r
        assert r["backend"] == "tensorflow" and r["variant"] == "t2t_vit_7"
        for key in (
            "images_per_s",
            "latency_ms",
            "achieved_gflops",
            "fraction_of_fp32_peak",
            "peak_rss_mb",
        ):
            assert r[key] > 0, (r["case"], key)
        assert r["flops_per_image"] == 2 * 1_146_863_616
    assert (
        cases["latency_b1"]["batch_size"] == 1 and cases["tflite_b1"]["batch_size"] == cases["tflite_int8_b1"]["batch_size"] == 1
    )

    markdown = (out / "results.md").read_text()
    assert "QUICK" in markdown and "| backend | variant | case |" in markdown
    for case in cases:
        assert f"| tensorflow | t2t_vit_7 | {case} |" in markdown

    png = (out / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
