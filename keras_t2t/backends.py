"""Which Keras backend this process will get, checked without importing Keras; and how a command starts.

``import keras_t2t`` calls ``refuse_unknown_backend`` first, so that a backend Keras
does not know is one line (in a command: exit status 2), not Keras' traceback.
In a keras-t2t command (``running_a_command``) the packages hand out their public
names on first use (``load_public_api``), so a command parses its arguments, and
answers ``--help``, before Keras is imported; it then calls ``quiet_logs`` before
its heavy imports, which keeps TensorFlow's, absl's and CUDA's own log lines out
of its output unless ``--verbose``. Standard library only: it runs before Keras
is imported.
"""

import contextlib
import importlib.util
import itertools
import json
import logging
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


# The commands that are scripts of a checkout rather than console scripts, beside the package.
_CHECKOUT_SCRIPTS = (os.path.join("training", "train.py"), os.path.join("tflite", "convert.py"))


def running_a_command():
    """True in a keras-t2t command: a ``keras-t2t-*`` console script, ``python -m keras_t2t...``, or this
    checkout's ``training/train.py`` or ``tflite/convert.py``; False in a notebook, a script of one's own or a
    test run."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script).startswith("keras-t2t-"):
        return True
    argv = getattr(sys, "orig_argv", [])
    if any(flag == "-m" and module.startswith("keras_t2t") for flag, module in itertools.pairwise(argv)):
        return True
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return bool(script) and os.path.abspath(script) in {os.path.join(checkout, path) for path in _CHECKOUT_SCRIPTS}


def refuse_unknown_backend():
    """Called by ``import keras_t2t`` before Keras is imported: a backend Keras does not know stops here.

    Keras' own error would be a traceback from its internals. In a keras-t2t command the
    ``backend_error`` line goes to stderr and the exit status is 2; elsewhere it is an ``ImportError``.
    """
    backend = configured_backend()
    message = None if backend in _OTHER_KERAS_BACKENDS else backend_error(backend)
    if message is None:
        return
    if running_a_command():
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(message)


def load_public_api(namespace, modules, more=None):
    """Fills a package's public names from ``modules`` (``{module name: its public names}``) and ``more()`` (a
    dict of further ones): at once, or in a keras-t2t command on first use.

    ``namespace`` is the package's ``globals()``, which names them all in ``__all__``. Outside a command (a
    notebook, a script, a test) they are imported with the package, so that importing it registers every
    class with Keras (``keras.saving.load_model`` and KerasHub's loaders find them). In a command
    (``running_a_command``) a PEP 562 ``__getattr__`` imports them when one is first used: the command builds
    its parser from modules that import no Keras, answers ``--help`` at once, and imports what it needs
    once its arguments are parsed.
    """
    public = frozenset(namespace["__all__"])

    def fill():
        for module_name, names in modules.items():
            module = importlib.import_module(module_name)
            for name in names:
                namespace.setdefault(name, getattr(module, name))
        for name, value in (more() if more else {}).items():
            namespace.setdefault(name, value)
        namespace.pop("__getattr__", None)

    if not running_a_command():
        fill()
        return

    def __getattr__(name):  # noqa: N807 - the module attribute hook of PEP 562
        if name not in public:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        fill()
        return namespace[name]

    namespace["__getattr__"] = __getattr__


# Python loggers that print TensorFlow's, absl's and JAX's platform notices (``WARNING:absl:...``).
_NOISY_LOGGERS = ("tensorflow", "absl", "jax._src.xla_bridge")


def quiet_logs(verbose=False):
    """Keeps TensorFlow's, absl's and CUDA's own log lines out of a command's output, unless ``verbose``.

    A command calls it once its arguments are parsed, before it imports Keras. It sets
    ``TF_CPP_MIN_LOG_LEVEL=3`` unless it is set (the user's level stays), which silences what TensorFlow
    logs once it is loaded (``failed call to cuInit``, XLA's notices), in the child processes a command
    starts too; it raises the Python loggers of TensorFlow, absl and JAX's platform notices to ERROR; and it
    imports TensorFlow (every command imports it, through KerasHub, whatever the backend) under
    ``native_output_quieted``, since the lines TensorFlow's libraries write while they load (``WARNING: All
    log messages before absl::InitializeLog() ...``, ``oneDNN custom operations are on``, ``Could not find
    cuda drivers``) obey no setting.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if importlib.util.find_spec("absl") is not None:
        import absl.logging  # noqa: F401 - absl's logger, of its own class, before its level is set

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and importlib.util.find_spec("tensorflow") is not None:
        with native_output_quieted():
            import tensorflow  # noqa: F401


def _min_log_level():
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def native_output_quieted():
    """For its duration, what native libraries write to stderr is lost, when ``TF_CPP_MIN_LOG_LEVEL`` asks
    for quiet (1 or more; a command sets 3 unless ``--verbose``, see ``quiet_logs``).

    For the lines that setting does not reach: TensorFlow's as its libraries load, LiteRT's ``INFO: Created
    TensorFlow Lite XNNPACK delegate for CPU.`` at a model's first run. File descriptor 2 points to
    ``os.devnull`` meanwhile; an exception still propagates, and is printed, once stderr is back.
    """
    if _min_log_level() < 1:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
