"""The TensorFlow side of an export started in a JAX or PyTorch process (see ``export_in_tensorflow_process``).

``python -m keras_t2t.export.child REQUEST`` with ``KERAS_BACKEND=tensorflow``:
``REQUEST`` is a JSON file ``{"model", "output_dir", "options", "verbose",
"origin", "result"}``; the child runs ``export_model`` (``export_with_options``:
``model`` is resolved here again, with its preprocessing, unless ``origin`` says
what a model given in memory was) and writes ``{"report": ...}`` or
``{"error": <ExportError message>}`` as JSON to the ``result`` path.
"""

import json
import sys

from keras_t2t.export.errors import ExportError
from keras_t2t.export.pipeline import export_with_options
from keras_t2t.io_utils import write_text_atomic


def run_request(request):
    """The result (a dict) of the export a request describes."""
    try:
        report = export_with_options(
            request["model"], request["output_dir"], request["options"], request["verbose"], request.get("origin")
        )
    except ExportError as error:
        return {"error": str(error)}
    return {"report": report}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m keras_t2t.export.child REQUEST.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        request = json.load(handle)
    write_text_atomic(request["result"], json.dumps(run_request(request)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
