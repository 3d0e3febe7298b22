"""Small file helpers shared by the commands."""

import json
import os
import tempfile


def write_atomic(path, write):
    """Calls ``write(handle)`` on a binary temporary file beside ``path``, then moves it onto
    ``path``: the file is either the old one or the complete new one. Returns the absolute path."""
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path, data):
    """Writes ``data`` as JSON so that ``path`` is either the old file or the complete new one."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))
