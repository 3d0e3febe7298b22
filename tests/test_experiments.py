"""experiments/digits_t2t_vs_vit.py --quick runs end to end and writes what it promises.

TensorFlow only (CI budget: ~30 s): the script is backend-independent Keras, and
its numbers are not checked here, only that both models trained and reported.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="time budget: one backend runs the experiment")
def test_quick_experiment_trains_both_models_and_writes_results(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "digits_t2t_vs_vit.py"), "--quick",
         "--output-dir", str(tmp_path / "out"), "--figures-dir", str(tmp_path / "figures")],
        env=env, capture_output=True, text=True, timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"t2t_vit_mini", "vit_mini"} and results["quick"] is True
    # Matched sizes: within 5% of each other.
    assert abs(models["vit_mini"]["weights"] / models["t2t_vit_mini"]["weights"] - 1) < 0.05
    for name, row in models.items():
        assert 0.0 <= row["val_top1"] <= 1.0 and row["epochs"] >= 1, (name, row)
    for name in ("digits_t2t_vs_vit_curves.png", "digits_t2t_vit_mini_features_t2t_layer_1.png", "digits_vit_mini_attention_block3.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000, name
