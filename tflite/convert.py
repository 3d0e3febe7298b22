"""Export a T2T-ViT classifier to SavedModel, TFLite and ONNX, and verify every artifact.

    python tflite/convert.py --model model.keras --output-dir export/ \
        --representative-dir calibration_images/
    python tflite/convert.py --variant t2t_vit_14 --weights 81.5_T2T_ViT_14.pth.tar \
        --output-dir export/ --formats tflite_float32,tflite_float16,onnx

Writes the artifacts, labels.txt and report.json into --output-dir and prints
the verification table. Exit code 0: every artifact verified; 1: an artifact is
outside its tolerance (it is not kept); 2: bad input (nothing is written).
All the logic lives in ``keras_t2t.export`` (``export_model`` in a notebook);
``--help`` lists the options.
"""

import os
import sys

# Export runs on TensorFlow, whatever KERAS_BACKEND says (a '.keras' file saved on
# JAX or PyTorch loads here unchanged), but a backend that does not exist is still
# a mistake worth one line. Set before Keras is first imported. (TensorFlow's log
# lines are left out by keras_t2t.backends.quiet_logs unless --verbose.)
USER_BACKEND = os.environ.get("KERAS_BACKEND")
os.environ["KERAS_BACKEND"] = "tensorflow"
# Runs from a checkout without installing too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_t2t.cli.args import backend_error  # noqa: E402
from keras_t2t.export import main  # noqa: E402

if __name__ == "__main__":
    PROG = "python tflite/convert.py"
    if USER_BACKEND and backend_error(USER_BACKEND):
        print(f"{PROG}: error: {backend_error(USER_BACKEND)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(prog=PROG))
