"""A training run's resume state, kept as one atomic unit, and the care of its output folder.

At the end of every epoch the chief

1. writes the weights and the optimizer state to a new file,
   ``resume/train_state-e<epoch>-<token>.weights.h5`` (it replaces nothing);
2. writes ``resume/train_state.json`` atomically: epoch, optimizer steps and
   the name, size and SHA-256 of that weights file;
3. deletes the previous weights file.

Step 2 is the commit. Killed before it, the folder holds the previous epoch's
JSON and the weights file it names; killed after it, the new pair. A rerun
reads the JSON, loads exactly the file it names (checked by size and
SHA-256), and resumes after the last epoch whose JSON was written. The files
a kill leaves (a weights file no JSON names, temporaries of the atomic
writers) are removed by the next run in the folder, which holds a lock on it
(``folder_lock``) so that no other run writes there meanwhile.
"""

import contextlib
import hashlib
import os
import secrets
import time

from keras_t2t.io_utils import read_json_object, remove_path, remove_stale_temporaries, write_json_atomic

RESUME_DIR = "resume"
STATE_FILE = "train_state.json"
# The weights file of resume folders written before the state named its file.
LEGACY_WEIGHTS = "train_state.weights.h5"
LOCK_FILE = ".lock"
# Temporaries of the package's writers: Keras files saved beside their final name
# (".tmp-<pid>-best.weights.h5", callbacks.save_weights_atomic) and io_utils' JSON files.
OUTPUT_TEMPORARIES = (".tmp-{pid}-*", ".recipe.json.*.tmp", ".summary.json.*.tmp", ".eval_summary.json.*.tmp")
RESUME_TEMPORARIES = (".tmp-{pid}-*", "." + STATE_FILE + ".*.tmp")
# Without a lock (a file system that has none), leftovers without a process id are removed
# only when this old.
UNLOCKED_MIN_AGE_SECONDS = 3600.0


def resume_dir(output_dir):
    return os.path.join(output_dir, RESUME_DIR)


def _is_state_weights(name):
    return name.startswith("train_state") and name.endswith(".weights.h5")


def read_state(output_dir):
    """The last committed state (a dict) of the run in ``output_dir``, or None when it has none."""
    path = os.path.join(resume_dir(output_dir), STATE_FILE)
    try:
        return read_json_object(path, "The resume state")
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise ValueError(f"{error}; it is not a training state this trainer can use: use another --output-dir.") from None


def file_digest(path):
    """``(size in bytes, SHA-256 hex)`` of a file, after making sure its bytes are on disk."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return os.path.getsize(path), digest.hexdigest()


def save_state(model, output_dir, state):
    """Commits ``state`` (a JSON-able dict with ``epoch``) with ``model``'s weights and optimizer state.

    Returns the path of the weights file the new ``train_state.json`` names.
    """
    folder = resume_dir(output_dir)
    os.makedirs(folder, exist_ok=True)
    name = f"train_state-e{int(state['epoch']):04d}-{secrets.token_hex(4)}.weights.h5"
    path = os.path.join(folder, name)
    try:
        model.save_weights(path)
        size, sha256 = file_digest(path)
    except BaseException:
        remove_path(path)
        raise
    write_json_atomic(os.path.join(folder, STATE_FILE),
                      dict(state, weights_file=name, weights_bytes=size, weights_sha256=sha256))
    for other in os.listdir(folder):
        if _is_state_weights(other) and other != name:
            remove_path(os.path.join(folder, other))
    return path


def state_weights(output_dir, state):
    """The weights file ``state`` names, checked against its recorded size and SHA-256."""
    folder = resume_dir(output_dir)
    name = state.get("weights_file")
    if name is None:  # written before the state named its file
        path = os.path.join(folder, LEGACY_WEIGHTS)
        if not os.path.exists(path):
            raise ValueError(f"The resume state in {output_dir!r} has no weights file {path!r}; "
                             "use another --output-dir.")
        return path
    path = os.path.join(folder, os.path.basename(str(name)))
    if not os.path.exists(path):
        problem = "is missing"
    else:
        size, sha256 = file_digest(path)
        problem = None if (size, sha256) == (state.get("weights_bytes"), state.get("weights_sha256")) else (
            f"has {size} bytes and SHA-256 {sha256[:12]}..., not the {state.get('weights_bytes')} bytes and "
            f"{str(state.get('weights_sha256'))[:12]}... recorded")
    if problem:
        raise ValueError(
            f"The resume state in {output_dir!r} (epoch {state.get('epoch')}) names {path!r}, which {problem}: "
            "the folder was changed outside the trainer; use another --output-dir."
        )
    return path


def remove_leftovers(output_dir, exclusive):
    """Removes what a killed run left in ``output_dir``: temporaries, and resume weights no state names.

    ``exclusive``: this process holds the folder's lock, so nothing there is being
    written by anyone else. Returns the removed paths.
    """
    min_age = 0.0 if exclusive else UNLOCKED_MIN_AGE_SECONDS
    removed = remove_stale_temporaries(output_dir, OUTPUT_TEMPORARIES, older_than=min_age)
    folder = resume_dir(output_dir)
    removed += remove_stale_temporaries(folder, RESUME_TEMPORARIES, older_than=min_age)
    try:
        state = read_state(output_dir)
    except ValueError:
        return removed  # an unreadable state is reported by the run; its files stay for a look
    keep = (state.get("weights_file") or LEGACY_WEIGHTS) if state else None
    orphans = [n for n in os.listdir(folder) if _is_state_weights(n) and n != keep] if os.path.isdir(folder) else []
    for name in orphans:
        path = os.path.join(folder, name)
        if exclusive or time.time() - os.path.getmtime(path) >= min_age:
            remove_path(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def folder_lock(folder):
    """Holds an exclusive lock on ``folder`` (its ``.lock`` file) for the block; yields whether it could.

    A second run in the same folder gets a ValueError at once. Yields False where
    the file system (or the platform) has no locks.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            exclusive = True
        except BlockingIOError:
            raise ValueError(
                f"Another training run is using {folder!r} (it holds {LOCK_FILE}); wait for it to end, "
                "or use another --output-dir."
            ) from None
        except OSError:
            exclusive = False
        yield exclusive
    finally:
        os.close(fd)
