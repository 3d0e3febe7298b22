"""Which Keras backend this process will get, checked without importing Keras.

``import keras_t2t`` calls ``refuse_unknown_backend`` first, so that a backend Keras
does not know is one line (in a command: exit status 2), not Keras' traceback.
Standard library only: it runs before Keras is imported.
"""

import itertools
import json
import os
import sys

#: The Keras backends keras-t2t runs on.
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
# Keras' other backends: not ours to refuse at import (Keras itself reports what they lack).
_OTHER_KERAS_BACKENDS = ("numpy", "openvino")


def configured_backend():
    """The Keras backend this process will get, read as Keras reads it but without importing Keras:
    ``KERAS_BACKEND`` if set and not empty, else ``backend`` in ``$KERAS_HOME/keras.json``
    (``~/.keras/keras.json``), else ``"tensorflow"``."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as handle:
            return str(json.load(handle).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def backend_error(backend=None):
    """``None`` when ``backend`` (default ``configured_backend()``) is one of ``KERAS_BACKENDS``; else the
    one-line error naming them, for a command to print before it exits with status 2."""
    backend = configured_backend() if backend is None else backend
    if backend in KERAS_BACKENDS:
        return None
    return (
        f"unknown Keras backend {backend!r} (KERAS_BACKEND or keras.json); keras-t2t runs on "
        f"{', '.join(KERAS_BACKENDS)}: e.g. KERAS_BACKEND=tensorflow."
    )


def _running_a_command():
    """True in a ``keras-t2t-*`` script or ``python -m keras_t2t...`` (not in a notebook or a test run)."""
    if os.path.basename(sys.argv[0] if sys.argv else "").startswith("keras-t2t-"):
        return True
    argv = getattr(sys, "orig_argv", [])
    return any(flag == "-m" and module.startswith("keras_t2t") for flag, module in itertools.pairwise(argv))


def refuse_unknown_backend():
    """Called by ``import keras_t2t`` before Keras is imported: a backend Keras does not know stops here.

    Keras' own error would be a traceback from its internals. In a keras-t2t command the
    ``backend_error`` line goes to stderr and the exit status is 2; elsewhere it is an ``ImportError``.
    """
    backend = configured_backend()
    message = None if backend in _OTHER_KERAS_BACKENDS else backend_error(backend)
    if message is None:
        return
    if _running_a_command():
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(message)
