"""Small file helpers shared by the commands: the package's one atomic writer.

A file or folder is written under a hidden temporary name beside its final
name and renamed onto it once complete, so a reader (or a later run after a
kill) sees either the old content or the whole new one, never half a file.
Single files go through ``write_atomic`` (``write_text_atomic``,
``write_json_atomic``); a writer that must create the file or folder itself (a
converter, a SavedModel) gets a path from ``atomic_temp_path`` and finishes with
``install_atomic``.

``check_output_folder`` tells before any work whether an output folder can be
written; ``remove_stale_temporaries`` deletes the temporaries a killed writer
left behind.
"""

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _permissions_of_a_new(path, umask=None):
    # mkstemp/mkdtemp make private (0600/0700) entries; the final file gets the
    # permissions any new file or folder gets under the umask (never an executable
    # file). A link is left alone: its target is not ours to change.
    mode = os.lstat(path).st_mode
    if not stat.S_ISLNK(mode):
        os.chmod(path, (0o777 if stat.S_ISDIR(mode) else 0o666) & ~(_umask() if umask is None else umask))


def apply_umask_tree(root):
    """Gives ``root`` and every folder and file under it the permissions a new one gets under the umask.

    Folders become ``0o777 & ~umask`` and files ``0o666 & ~umask``; links are
    neither changed nor followed. For trees another library wrote with modes of
    its own (TensorFlow makes a SavedModel's ``variables/`` 0755 whatever the umask).
    """
    umask = _umask()
    _permissions_of_a_new(root, umask)
    if os.path.islink(root) or not os.path.isdir(root):
        return
    for folder, dirs, files in os.walk(root):  # does not descend into linked folders
        for name in dirs + files:
            _permissions_of_a_new(os.path.join(folder, name), umask)


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
        _permissions_of_a_new(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path, text):
    """Writes ``text`` (UTF-8) so that ``path`` is either the old file or the complete new one."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path, data):
    """Writes ``data`` as JSON so that ``path`` is either the old file or the complete new one."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_temp_path(directory, final_name, is_directory=False):
    """A new, empty hidden file (or folder) ``.<final_name>.partial-*`` in ``directory``.

    For writers that create their output themselves; ``install_atomic`` moves it
    onto its final name, ``remove_path`` discards it.
    """
    prefix = f".{final_name}.partial-"
    if is_directory:
        return tempfile.mkdtemp(dir=directory, prefix=prefix)
    fd, path = tempfile.mkstemp(dir=directory, prefix=prefix)
    os.close(fd)
    return path


def atomic_temp_file_like(final, suffix):
    """A new, empty hidden file ``.<name>.partial-<pid>-*<suffix>`` beside ``final``.

    ``atomic_temp_path`` for writers that pick their format from the path's ending
    (Keras saves ``.keras`` and ``.weights.h5`` by suffix); ``install_atomic``
    moves it onto ``final``, ``remove_path`` discards it. The writer's process id in
    the name lets a later writer remove what a killed one left
    (``stale_file_patterns``).
    """
    final = os.path.abspath(final)
    fd, path = tempfile.mkstemp(
        dir=os.path.dirname(final), prefix=f".{os.path.basename(final)}.partial-{os.getpid()}-", suffix=suffix
    )
    os.close(fd)
    return path


def stale_file_patterns(final):
    """The ``remove_stale_temporaries`` patterns of what ``atomic_temp_file_like(final, ...)`` writers that
    were killed left: stale as soon as their process has ended."""
    return [f".{os.path.basename(os.fspath(final))}.partial-{{pid}}-*"]


def save_atomic(path, save):
    """Writes ``path`` through ``save(temp_path)`` and installs it in one rename; returns ``path``.

    For writers that take a path and pick their format from its ending (Keras'
    ``model.save`` / ``save_weights``): the temporary ``.tmp-<pid>-<name>`` keeps the
    final name's ending, and is removed if ``save`` fails (``remove_stale_temporaries``
    finds it by the process id if the process is killed instead).
    """
    final = os.path.abspath(os.fspath(path))
    temp = os.path.join(os.path.dirname(final), f".tmp-{os.getpid()}-{os.path.basename(final)}")
    try:
        save(temp)
        install_atomic(temp, final)
    except BaseException:
        remove_path(temp)
        raise
    return path


def install_atomic(temp, final):
    """Renames ``temp`` (a file or a folder) onto ``final``, replacing what is there.

    A file replaces a file in one rename. A folder replaces a folder by two
    renames (the old one aside, the new one in) and the old one is deleted
    after, so ``final`` never holds a mix of old and new files.
    """
    _permissions_of_a_new(temp)
    if os.path.isdir(final) and not os.path.islink(final):
        trash = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=f".{os.path.basename(final)}.old-")
        os.rmdir(trash)
        os.rename(final, trash)
        os.rename(temp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(temp, final)


def remove_path(path):
    """Deletes a file, a link or a folder tree if it exists (``None`` is ignored)."""
    if path is None:
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def check_output_folder(path, what="--output-dir"):
    """Raises ValueError (one line) unless ``path`` is a folder, or can become one, that this process can write.

    Nothing is created: the nearest existing folder on the way is probed with an
    empty hidden folder made and removed at once (permission bits alone do not
    tell: root writes anywhere except on read-only mounts, /proc and /sys).
    Returns the absolute path.
    """
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "exists and is" if existing == path else f"cannot be created: {existing!r} is"
        raise ValueError(f"{what} {path!r} {where} a file, not a folder.")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-check-"))
    except OSError as error:
        raise ValueError(
            f"{what} {path!r} cannot be written: nothing can be created in {existing!r} "
            f"({error.strerror or error})."
        ) from None
    return path


def _pattern_regex(pattern):
    parts = pattern.split("{pid}")
    if len(parts) > 2:
        raise ValueError(f"pattern {pattern!r} holds {{pid}} more than once")
    regex = ["".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in part) for part in parts]
    return re.compile(r"(?P<pid>\d+)".join(regex) + r"\Z", re.DOTALL)


def _process_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process (EPERM), or no way to tell
        return True
    return True


def remove_stale_temporaries(folder, patterns, older_than=3600.0):
    """Deletes what killed writers left in ``folder`` (its own entries, files or folders); returns their paths.

    ``patterns`` are name patterns (``*`` any text, ``?`` one character) of temporaries. Where
    a pattern holds ``{pid}``, the digits there are the writer's process id and
    the entry is stale once that process has ended (this process counts as
    alive). An entry matched by a pattern without ``{pid}`` is stale once it is
    ``older_than`` seconds old (``0`` when the caller knows that nobody else
    writes in ``folder``, e.g. it holds a lock on it).
    """
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    compiled = [(_pattern_regex(p), "{pid}" in p) for p in patterns]
    now = time.time()
    removed = []
    for name in names:
        path = os.path.join(folder, name)
        for regex, has_pid in compiled:
            match = regex.match(name)
            if not match:
                continue
            if has_pid:
                stale = not _process_alive(int(match.group("pid")))
            else:
                try:
                    stale = now - os.lstat(path).st_mtime >= older_than
                except FileNotFoundError:
                    stale = False
            if stale:
                remove_path(path)
                removed.append(path)
            break
    return removed


def read_json_object(path, what):
    """The JSON object (a dict) in ``path``; FileNotFoundError when there is no such file, else one
    ValueError naming ``what`` and the path for a file that is unreadable or holds no object."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise ValueError(f"{what} {path!r} cannot be read ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path!r} holds a {type(data).__name__}, not a JSON object")
    return data
