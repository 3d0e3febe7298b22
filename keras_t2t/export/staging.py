"""Where an export is built, and how it replaces the previous export in the output folder as a whole.

Every file of an export (the artifacts, ``labels.txt``, ``report.json``) is
written into a staging folder first; nothing in ``output_dir`` changes until
the export is complete. Then (``ExportStaging.commit``) every folder and file
in it gets the permissions a new one gets under the umask, and:

* ``output_dir`` does not exist yet: the staging folder, made beside it as
  ``.<name>.export-<pid>``, is renamed onto it (one rename);
* ``output_dir`` holds an export and nothing else (the usual case): the two
  folders are exchanged in one step (Linux ``renameat2`` with
  ``RENAME_EXCHANGE``) and the old export, now under the staging name, is
  deleted;
* otherwise (other files in ``output_dir``, a mount point, a link, the
  current folder, a parent folder that cannot be written, no one-step
  exchange on this system): the export's entries are moved into place one by
  one, each in one rename, ``report.json`` last, and obsolete ones deleted;
  entries that are not the export's are never touched. The staging folder is
  then ``output_dir/.export-staging-<pid>`` when it cannot go beside.

So a kill before the switch leaves the previous export exactly as it was,
and in the one-step cases a kill at any instant leaves the old export or the
new one, whole. Each export first calls ``remove_stale_exports``: staging
folders of processes that have ended, and the hidden temporaries earlier
versions wrote into the output folder itself, are deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat

from keras_t2t.export.formats import ARTIFACT_FILES
from keras_t2t.export.report import LABELS_FILE, REPORT_FILE
from keras_t2t.io_utils import apply_umask_tree, install_atomic, remove_path, remove_stale_temporaries

#: Every name an export owns in its output folder, in the order they are moved in (``report.json`` last).
EXPORT_ENTRIES = (*ARTIFACT_FILES.values(), LABELS_FILE, REPORT_FILE)
_INSIDE = ".export-staging-{pid}"
# What the atomic writers of earlier versions left in the output folder itself. This version
# writes only inside its staging folder, so any of these there is a leftover, whatever its age.
_LEGACY = (
    *(f".{name}.partial-*" for name in EXPORT_ENTRIES),
    *(f".{name}.*.tmp" for name in EXPORT_ENTRIES),
    *(f".{name}.old-*" for name in EXPORT_ENTRIES),
)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _beside_pattern(output_dir, pid="{pid}"):
    return f".{os.path.basename(output_dir)}.export-{pid}"


def export_entries(folder):
    """The names of ``EXPORT_ENTRIES`` present in ``folder``."""
    return [name for name in EXPORT_ENTRIES if os.path.lexists(os.path.join(folder, name))]


def remove_stale_exports(output_dir):
    """Deletes what killed exports into ``output_dir`` left behind; returns the paths removed.

    The staging folders of processes that have ended, beside ``output_dir``
    (``.<name>.export-<pid>``) and inside it (``.export-staging-<pid>``), and the
    ``.<entry>.partial-*`` / ``.<entry>.*.tmp`` / ``.<entry>.old-*`` temporaries
    earlier versions wrote into it.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    removed = []
    with contextlib.suppress(PermissionError):  # a parent folder this process may not list
        removed += remove_stale_temporaries(os.path.dirname(output_dir), [_beside_pattern(output_dir)])
    if os.path.isdir(output_dir) and not os.path.islink(output_dir):
        removed += remove_stale_temporaries(output_dir, [_INSIDE])
        removed += remove_stale_temporaries(output_dir, list(_LEGACY), older_than=0)
    return removed


def _exchange(a, b):
    """Swaps two folders in one step (``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):  # not glibc >= 2.28, or not Linux
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _holds_the_process_folder(folder):
    with contextlib.suppress(OSError):
        cwd = os.path.realpath(os.getcwd())
        folder = os.path.realpath(folder)
        return os.path.commonpath([cwd, folder]) == folder
    return False


def _whole_folder_switch_possible(output_dir):
    """Whether ``output_dir`` can be replaced as a folder: it holds nothing but an export (or does not exist)."""
    if not os.path.lexists(output_dir):
        return True
    if os.path.islink(output_dir) or os.path.ismount(output_dir) or _holds_the_process_folder(output_dir):
        return False
    return set(os.listdir(output_dir)) <= set(EXPORT_ENTRIES)


class ExportStaging:
    """The staging folder of one export into ``output_dir``: write into ``path``, then ``commit`` or ``discard``.

    Making it removes stale leftovers first (``remove_stale_exports``);
    ``previous`` lists the export entries ``output_dir`` held then.
    """

    def __init__(self, output_dir):
        self.output_dir = os.path.abspath(os.fspath(output_dir))
        remove_stale_exports(self.output_dir)
        self.previous = export_entries(self.output_dir) if os.path.isdir(self.output_dir) else []
        self._made_parents = None
        self.path = None
        if _whole_folder_switch_possible(self.output_dir):
            parent = os.path.dirname(self.output_dir)
            self._made_parents = _first_missing(parent)
            with contextlib.suppress(OSError):
                os.makedirs(parent, exist_ok=True)
                self.path = self._fresh(os.path.join(parent, _beside_pattern(self.output_dir, os.getpid())))
        self.beside = self.path is not None
        if not self.beside:
            self._made_parents = _first_missing(self.output_dir)
            os.makedirs(self.output_dir, exist_ok=True)
            self.path = self._fresh(os.path.join(self.output_dir, _INSIDE.format(pid=os.getpid())))

    @staticmethod
    def _fresh(path):
        remove_path(path)  # this process's own, from an export it did not finish
        os.mkdir(path)
        return path

    def commit(self):
        """Switches the staged export in, replacing every export entry of ``output_dir`` (see the module)."""
        apply_umask_tree(self.path)  # what TensorFlow made in it (variables/, assets/...) ignored the umask
        if self.beside and not os.path.lexists(self.output_dir):
            with contextlib.suppress(OSError):  # fails only if someone made the folder meanwhile
                os.rename(self.path, self.output_dir)
                return
        if self.beside and os.path.isdir(self.output_dir):
            os.chmod(self.path, stat.S_IMODE(os.stat(self.output_dir).st_mode))
            if _exchange(self.path, self.output_dir):
                self._keep_what_is_not_ours(old=self.path)
                remove_path(self.path)
                return
        os.makedirs(self.output_dir, exist_ok=True)
        staged = os.listdir(self.path)
        for name in [n for n in staged if n not in EXPORT_ENTRIES] + list(EXPORT_ENTRIES):
            target = os.path.join(self.output_dir, name)
            if name in staged:
                install_atomic(os.path.join(self.path, name), target)
            elif os.path.lexists(target):
                remove_path(target)
        remove_path(self.path)

    def _keep_what_is_not_ours(self, old):
        # Entries that appeared in output_dir while this export ran went aside with the old export.
        for name in os.listdir(old):
            if name not in EXPORT_ENTRIES and not os.path.lexists(os.path.join(self.output_dir, name)):
                os.rename(os.path.join(old, name), os.path.join(self.output_dir, name))

    def discard(self):
        """Deletes the staging folder (and the folders made for it, if still empty)."""
        remove_path(self.path)
        if self._made_parents is None:
            return
        folder = os.path.dirname(self.path)
        with contextlib.suppress(OSError):
            while True:
                os.rmdir(folder)
                if folder == self._made_parents:
                    break
                folder = os.path.dirname(folder)


def _first_missing(folder):
    """The outermost folder on the way to ``folder`` that does not exist yet (``None`` if it exists)."""
    missing = None
    while not os.path.lexists(folder):
        missing, folder = folder, os.path.dirname(folder)
    return missing
