"""The authors' released weights by tag: fetched once, checked, converted once, cached.

``keras_t2t.t2t_vit_14(weights="imagenet")`` and the presets come here. The
registry (``keras_t2t.models.presets``) names the release file of each (model,
tag). ``checked_checkpoint`` gives it from the cache, ``$KERAS_HOME/keras_t2t``
(``~/.keras/keras_t2t``), fetching it when needed:

1. the file is downloaded with ``keras.utils.get_file`` (its progress bar) from
   the authors' release page, or from ``KERAS_T2T_WEIGHTS_URL`` (a mirror: an
   ``http(s)://`` or ``file://`` URL, or a local folder), under a hidden
   temporary name;
2. before it gets its final name it must be a checkpoint that the safe reader
   reads (no pickle code ever runs) and whose shapes are the tag's model, class
   count and image size; anything else is deleted and refused
   (``WeightsFetchError``, naming the URL, the setting and the manual route);
3. its SHA-256 is recorded in ``index.json`` beside it, and checked whenever the
   cached file is used again: a file that no longer matches is fetched again,
   never trusted (and a new download must match the first one's SHA-256); a file
   with no record (put there by hand) is read and checked, then recorded; nothing
   is deleted before a good download replaces it. A download that receives
   nothing for ``KERAS_T2T_DOWNLOAD_TIMEOUT`` seconds (60) is given up;
4. ``keras_t2t.hub.presets`` converts it once into the preset folder
   ``presets/<model>_<tag>/`` (``preset_cache_folder``), which later loads read
   through Keras without the PyTorch file.

Every file is written under a temporary name and renamed into place
(``keras_t2t.io_utils``): a failure leaves nothing, a kill no partial file
under a final name (its hidden temporary is deleted by a later fetch once an
hour old).
"""

import contextlib
import hashlib
import json
import os
import pathlib
import socket
import urllib.parse

import keras

from keras_t2t.io_utils import (
    atomic_temp_file_like,
    check_output_folder,
    install_atomic,
    remove_path,
    remove_stale_temporaries,
    write_json_atomic,
)
from keras_t2t.models.presets import RELEASES_URL, WEIGHT_TAGS, get_preset, list_weights
from keras_t2t.weights.detect import checkpoint_image_size, detect_variant
from keras_t2t.weights.loading import read_state_dict

__all__ = [
    "CACHE_SUBDIR",
    "URL_SETTING",
    "UnknownWeightsError",
    "WeightsFetchError",
    "build_arguments",
    "cache_dir",
    "checked_checkpoint",
    "check_cache_dir",
    "fetch_checkpoint",
    "download_timeout",
    "forget",
    "preset_cache_folder",
    "is_weights_tag",
    "read_index",
    "refresh",
    "release_for",
    "release_url",
    "sha256_of",
    "unknown_weights_error",
    "weights_base_url",
]

URL_SETTING = "KERAS_T2T_WEIGHTS_URL"
TIMEOUT_SETTING = "KERAS_T2T_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds without a byte before a download is given up
CACHE_SUBDIR = "keras_t2t"
INDEX_NAME = "index.json"
PRESETS_SUBDIR = "presets"


class WeightsFetchError(RuntimeError):
    """A release file could not be fetched, or what arrived is not the checkpoint its tag names."""


class UnknownWeightsError(ValueError, FileNotFoundError):
    """``weights=`` is neither a weights tag of the model nor an existing file (a ValueError;
    also a FileNotFoundError, which a missing path raised before tags existed)."""


def is_weights_tag(weights):
    """Whether ``weights`` is the weights tag of some release (``"imagenet"``, ``"cifar10"``, ...)."""
    return isinstance(weights, str) and weights.lower() in WEIGHT_TAGS


def release_for(model_name, tag):
    """The ``Release`` of ``model_name`` under ``tag``, or ``UnknownWeightsError`` naming the valid tags."""
    for release in get_preset(model_name).releases:
        if isinstance(tag, str) and release.tag == tag.lower():
            return release
    raise unknown_weights_error(model_name, tag)


def unknown_weights_error(model_name, weights):
    """The ``UnknownWeightsError`` for ``weights=`` that is neither a tag of ``model_name`` nor a file:
    it names the model's tags, the models that have the tag asked for, and that paths must exist."""
    valid = ", ".join(repr(r.tag) for r in get_preset(model_name).releases)
    message = (
        f"weights={weights!r} is neither a weights tag of {model_name} "
        f"({'its tags: ' + valid if valid else 'it has no released weights'}) nor an existing file "
        "(a path must exist: an authors' '.pth.tar'/'.pth', a '.keras' or a '.weights.h5' file)."
    )
    tag = weights.lower() if isinstance(weights, str) else None
    others = [row.model for row in list_weights() if row.tag == tag]
    if others:
        message += f" Tag {tag!r} exists for {', '.join(others)}."
    elif not valid:
        message += f" Models with released weights: {', '.join(dict.fromkeys(r.model for r in list_weights()))}."
    return UnknownWeightsError(message)


def build_arguments(model_name, tag, input_shape=None, classes=None):
    """``(input_shape, classes)`` a builder uses for ``weights=tag``: the release's own image size
    and class count unless given (then the position table is resized, the head fresh)."""
    release = release_for(model_name, tag)
    if input_shape is None:
        input_shape = (release.image_size, release.image_size, 3)
    return input_shape, release.classes if classes is None else classes


def weights_base_url():
    """Where release files come from: ``KERAS_T2T_WEIGHTS_URL`` when set, else the authors' release page.

    The setting is an ``http(s)://`` or ``file://`` URL, or a local folder (given as a
    ``file://`` URL); the result ends with ``/``.
    """
    setting = os.environ.get(URL_SETTING, "").strip()
    if not setting:
        return RELEASES_URL
    accepted = "accepted: an http(s):// or file:// URL, or a local folder holding the release files"
    try:
        parts = urllib.parse.urlsplit(setting)
        parts.port  # noqa: B018 - a port that is no number is refused here, not at the download
    except ValueError as error:
        raise ValueError(f"{URL_SETTING}={setting!r} is not a valid URL ({error}); {accepted}.") from None
    if parts.scheme.lower() in ("http", "https", "file"):
        return setting if setting.endswith("/") else setting + "/"
    if "://" in setting:
        raise ValueError(f"{URL_SETTING}={setting!r} has an unsupported scheme; {accepted}.")
    folder = os.path.abspath(os.path.expanduser(setting))
    if not os.path.isdir(folder):
        raise ValueError(f"{URL_SETTING}={setting!r} is not an existing folder; {accepted}.")
    return pathlib.Path(folder).as_uri() + "/"


def download_timeout():
    """Seconds a download may go without receiving anything (``KERAS_T2T_DOWNLOAD_TIMEOUT``, default 60)."""
    setting = os.environ.get(TIMEOUT_SETTING, "").strip()
    if not setting:
        return DEFAULT_TIMEOUT
    try:
        value = float(setting)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_SETTING}={setting!r} must be a number of seconds > 0.")
    return value


@contextlib.contextmanager
def _socket_timeout(seconds):
    """``keras.utils.get_file`` opens its connection without a timeout: the default one, for the download."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def release_url(release):
    """The URL ``release``'s file is fetched from (see ``weights_base_url``)."""
    return weights_base_url() + urllib.parse.quote(release.file)


def cache_dir():
    """The weights cache, ``$KERAS_HOME/keras_t2t`` (``~/.keras/keras_t2t`` without KERAS_HOME), read when called."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(os.path.abspath(os.path.expanduser(home)), CACHE_SUBDIR)


def sha256_of(path):
    """The SHA-256 of a file, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_index(folder=None):
    """The cache's records: file name -> ``{"sha256", "bytes", "source"}`` (empty when none or unreadable)."""
    try:
        with open(os.path.join(folder or cache_dir(), INDEX_NAME), encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _update_index(folder, add=None, drop=()):
    # Read again right before writing, so rows another process wrote meanwhile stay.
    index = read_index(folder)
    for name in drop:
        index.pop(name, None)
    index.update(add or {})
    write_json_atomic(os.path.join(folder, INDEX_NAME), index)


def check_cache_dir():
    """The weights cache folder (``cache_dir()``), or a ValueError (one line) when it cannot be written there.

    Nothing is created (``keras_t2t.io_utils.check_output_folder``): ``keras-t2t-weights fetch``
    checks it before any download.
    """
    try:
        return check_output_folder(cache_dir(), "The weights cache ($KERAS_HOME/keras_t2t)")
    except ValueError as error:
        raise ValueError(f"{error} Set KERAS_HOME to a writable folder.") from None


def _writable():
    """The weights cache folder, created; a WeightsFetchError when it cannot be written."""
    try:
        folder = check_cache_dir()
        os.makedirs(folder, exist_ok=True)
    except (ValueError, OSError) as error:
        raise WeightsFetchError(str(error)) from error
    return folder


def _verified(folder, model_name, release):
    """``(path, state dict or None, why not)`` of the cached release file.

    A file matching its recorded SHA-256 is used as it is. One without a record (put there by
    hand, the documented route for machines without network, or after ``index.json`` was
    damaged) is read by the safe reader and checked against the release's model, classes and
    image size: when it is that checkpoint it is recorded and used. A file that fails either
    check is not used, but neither is it deleted: a download replaces it only once it has
    arrived and passed the checks.
    """
    path = os.path.join(folder, release.file)
    if not os.path.isfile(path):
        return None, None, None
    record = read_index(folder).get(release.file)
    digest = sha256_of(path)
    if isinstance(record, dict) and record.get("sha256") == digest:
        return path, None, None
    if isinstance(record, dict) and record.get("sha256"):
        return None, None, "does not match the SHA-256 recorded when it was written"
    problem, state = _problem_with(path, model_name, release)
    if problem:
        return None, None, f"has no SHA-256 record and is not the release's checkpoint ({problem})"
    _update_index(folder, {release.file: {"sha256": digest, "bytes": os.path.getsize(path),
                                          "source": "found in the cache, checked by reading it"}})
    print(f"keras_t2t: the cached {path} had no SHA-256 record; it was read, is {model_name}'s "
          f"{release.tag!r} checkpoint, and is recorded now.")
    return path, state, None


def _fetch_error(model_name, release, url, problem):
    return WeightsFetchError(
        f"Could not get the {release.tag!r} weights of {model_name} ({release.file}) from {url}: {problem}. "
        f"Set {URL_SETTING} to a mirror (an http(s):// or file:// URL, or a local folder holding "
        f"{release.file}), or download {RELEASES_URL}{release.file} yourself and pass its path: "
        f"keras_t2t.{model_name}(weights='/path/to/{release.file}')."
    )


def _problem_with(path, model_name, release):
    """``(problem, None)``: why ``path`` is not ``release``'s checkpoint; ``(None, state dict)`` when it is."""
    with open(path, "rb") as handle:
        start = handle.read(512)
    if not start:
        return "the body is empty, not a checkpoint", None
    if start.lstrip().startswith(b"<"):
        return "the server sent a web page (HTML), not a checkpoint", None
    try:
        state, info = read_state_dict(path)
        detected, _ = detect_variant(state, arch=info.get("arch"))
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        return f"it is not a readable T2T-ViT checkpoint ({str(error).replace(path, release.file)})", None
    if detected != model_name:
        return f"its tensors are a {detected} checkpoint, not {model_name}'s", None
    head = state.get("head.weight")
    classes = None if head is None else int(head.shape[0])
    if classes != release.classes:
        return f"its head has {classes} classes, the {release.tag!r} weights have {release.classes}", None
    size = checkpoint_image_size(state)
    if size != (release.image_size, release.image_size):
        return f"its position table is for {size} images, the {release.tag!r} weights' is {release.image_size}", None
    return None, state


def _download(model_name, release, folder, kept=False, replace=False):
    """Downloads and checks ``release``'s file into the cache; returns (path, state dict).

    ``kept``: a cached file that failed its checks is there (a failed download says it was
    kept); ``replace``: a new file need not match the recorded SHA-256 (``refresh``).
    """
    url = release_url(release)
    timeout = download_timeout()  # a bad setting is refused before anything is written
    final = os.path.join(folder, release.file)
    suffix = ".pth.tar" if release.file.endswith(".pth.tar") else os.path.splitext(release.file)[1]
    temp = atomic_temp_file_like(final, suffix)
    try:
        try:
            with _socket_timeout(timeout):
                keras.utils.get_file(fname=os.path.basename(temp), origin=url, cache_dir=folder,
                                     cache_subdir=folder, force_download=True)
        except Exception as error:  # get_file raises a bare Exception for URL failures
            reason = str(error) if type(error) is Exception else f"{type(error).__name__}: {error}"
            if "timed out" in reason.lower():
                reason += f" (no answer for {timeout:g} s; {TIMEOUT_SETTING} sets the wait)"
            if kept:
                reason += f"; the cached {release.file} that failed its check was kept"
            raise _fetch_error(model_name, release, url, reason) from error
        problem, state = _problem_with(temp, model_name, release)
        if problem:
            raise _fetch_error(model_name, release, url, problem)
        digest = sha256_of(temp)
        record = None if replace else read_index(folder).get(release.file)
        if isinstance(record, dict) and record.get("sha256") not in (None, digest):
            raise _fetch_error(
                model_name, release, url,
                f"its SHA-256 {digest} differs from {record['sha256']}, recorded at the first download. If the "
                f"release really changed, run: keras-t2t-weights fetch --refresh {model_name}:{release.tag}",
            )
        size = os.path.getsize(temp)
        install_atomic(temp, final)
    finally:
        remove_path(temp)  # gone already when installed
    _update_index(folder, {release.file: {"sha256": digest, "bytes": size, "source": url}})
    return final, state


def _checkpoint(model_name, release):
    folder = _writable()
    # What killed downloads or conversions left (an active one's file is younger than an hour).
    remove_stale_temporaries(folder, [".*.partial-*"])
    path, state, why = _verified(folder, model_name, release)
    if path is not None:
        return path, state
    if why:
        print(f"keras_t2t: the cached {os.path.join(folder, release.file)} {why}; not trusted, fetching it again "
              "(it stays until a good download replaces it).")
    return _download(model_name, release, folder, kept=why is not None)


def fetch_checkpoint(model_name, tag):
    """The path of ``model_name``'s ``tag`` release file in the cache, downloaded and checked when needed."""
    return _checkpoint(model_name, release_for(model_name, tag))[0]


def checked_checkpoint(model_name, tag):
    """``(path, state dict)`` of ``model_name``'s ``tag`` release file: fetched when needed, and always
    checked to be that release (its model, class count and image size) before its state is returned."""
    release = release_for(model_name, tag)
    checkpoint, state = _checkpoint(model_name, release)
    if state is None:  # a verified cached file: checked again all the same (it is cheap next to the read)
        problem, state = _problem_with(checkpoint, model_name, release)
        if problem:
            remove_path(checkpoint)
            raise _fetch_error(model_name, release, checkpoint, problem)
    return checkpoint, state


def preset_cache_folder(model_name, tag):
    """Where ``model_name``'s ``tag`` release is kept as a KerasHub preset (``keras_t2t.hub.presets``)."""
    return os.path.join(cache_dir(), PRESETS_SUBDIR, f"{model_name}_{release_for(model_name, tag).tag}")


def refresh(model_name, tag):
    """Fetches ``model_name``'s ``tag`` release file again whatever the cache records, and replaces the
    cached file and preset only once the new file has arrived and passed its checks (a failed
    download leaves the cache as it was). Returns the file's path."""
    release = release_for(model_name, tag)
    folder = _writable()
    remove_stale_temporaries(folder, [".*.partial-*"])
    path, _ = _download(model_name, release, folder, replace=True)
    remove_path(preset_cache_folder(model_name, tag))  # converted from the old file: converted again on use
    return path


def forget(model_name, tag):
    """Deletes ``model_name``'s ``tag`` release file, its preset folder and their records from the cache."""
    release = release_for(model_name, tag)
    folder = cache_dir()
    remove_path(os.path.join(folder, release.file))
    remove_path(preset_cache_folder(model_name, tag))
    if os.path.isdir(folder):
        _update_index(folder, drop=[release.file])
    return [release.file, os.path.relpath(preset_cache_folder(model_name, tag), folder)]
