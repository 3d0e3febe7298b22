"""Every image of a folder dataset decoded once before any work, and the result remembered.

Training decodes with TensorFlow (``tf.io.decode_image``; JPEGs through
``decode_and_crop_jpeg``, which fails only when its crop reaches the damage), so
a JPEG with a valid header and a corrupt body passes a header check and then
stops training in the middle of an epoch. ``find_bad_images`` decodes every
file completely with the same decoders (in parallel, in a tf.data pipeline) and
keeps the result per class folder, keyed by the names, sizes and modification
times of its files, in ``<data folder>/.keras_t2t_image_check.json`` (or, when
the data folder cannot be written, under ``$KERAS_HOME/datasets``): a second run
decodes only the folders that changed.
"""

import collections
import hashlib
import json
import os
import re

from keras_t2t.io_utils import write_json_atomic

CACHE_NAME = ".keras_t2t_image_check.json"
CACHE_VERSION = 1
# Above this many images to decode, say so first (ImageNet's 1.3M take a while once).
ANNOUNCE_ABOVE = 5000


def _fallback_cache_path(root):
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    key = hashlib.sha256(root.encode("utf-8")).hexdigest()[:16]
    return os.path.join(home, "datasets", ".keras_t2t_image_checks", f"{key}.json")


def _folder_digest(paths):
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = os.stat(path)
        digest.update(f"{os.path.basename(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "replace"))
    return digest.hexdigest()


def _decoder_tag():
    import tensorflow as tf

    return f"tensorflow {tf.__version__}"


def _clean_message(error):
    message = getattr(error, "message", None) or str(error)
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", message).split(" [Op:")[0].strip()
    return message or type(error).__name__


def decode_failures(paths):
    """``{path: reason}`` for the files TensorFlow cannot read and decode completely."""
    import tensorflow as tf

    if not paths:
        return {}

    def decodes(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return path, tf.shape(image)

    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(decodes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    good = {p.decode("utf-8") for p, _ in ds.as_numpy_iterator()}
    failures = {}
    for path in paths:
        if path in good:
            continue
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            failures[path] = "does not decode"  # failed in the pipeline only: still not trusted
        except Exception as error:  # noqa: BLE001 - any read or decode failure is a bad file
            failures[path] = f"does not decode ({_clean_message(error)})"
    return failures


def _read_cache(path, root, decoder):
    try:
        with open(path, encoding="utf-8") as handle:
            cache = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict) or (cache.get("version"), cache.get("root"), cache.get("decoder")) != (
        CACHE_VERSION, root, decoder
    ):
        return {}
    folders = cache.get("folders")
    return folders if isinstance(folders, dict) else {}


def find_bad_images(root, paths, refresh=False):
    """``{path: reason}`` for the files among ``paths`` (under ``root``) that do not decode completely.

    Folders whose files (names, sizes, modification times) are as at the last
    check are taken from the cache unless ``refresh``.
    """
    root = os.path.abspath(root)
    decoder = _decoder_tag()
    groups = collections.defaultdict(list)
    for path in paths:
        groups[os.path.relpath(os.path.dirname(path), root)].append(path)
    locations = [os.path.join(root, CACHE_NAME), _fallback_cache_path(root)]
    cached = {}
    if not refresh:
        for location in locations:
            cached = _read_cache(location, root, decoder)
            if cached:
                break
    folders, to_decode = {}, []
    for folder, members in sorted(groups.items()):
        digest = _folder_digest(members)
        entry = cached.get(folder)
        if isinstance(entry, dict) and entry.get("digest") == digest and isinstance(entry.get("bad"), dict):
            folders[folder] = entry
        else:
            folders[folder] = {"digest": digest, "bad": {}}
            to_decode += members
    if len(to_decode) > ANNOUNCE_ABOVE:
        print(f"checking {len(to_decode):,} images of {root} by decoding each once (the result is kept for the "
              "next runs)...", flush=True)
    for path, reason in decode_failures(to_decode).items():
        folders[os.path.relpath(os.path.dirname(path), root)]["bad"][os.path.basename(path)] = reason
    if to_decode:
        data = {"version": CACHE_VERSION, "root": root, "decoder": decoder, "folders": folders}
        for location in locations:
            try:
                os.makedirs(os.path.dirname(location), exist_ok=True)
                write_json_atomic(location, data)
                break
            except OSError:
                continue  # a read-only data folder: the next place
    wanted = set(paths)
    bad = {}
    for folder, entry in folders.items():
        for name, reason in entry["bad"].items():
            path = os.path.join(root, folder, name) if folder != "." else os.path.join(root, name)
            if path in wanted:
                bad[path] = reason
    return bad
