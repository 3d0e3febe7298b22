"""``keras-t2t-weights``: the authors' released weights by tag, and fetching them ahead for offline use.

Command line (also ``python -m keras_t2t.cli.weights``)::

    keras-t2t-weights list [--model NAME]
    keras-t2t-weights fetch MODEL:TAG [MODEL:TAG ...] [--all] [--refresh]

``list`` prints every release (model, tag, file, image size, classes, the
authors' top-1) and what of it is in the cache. ``fetch`` does what
``weights=TAG`` does on first use: download the file (``keras.utils.get_file``'s
progress bar) from the release page or ``KERAS_T2T_WEIGHTS_URL``, check it,
record its SHA-256 and convert it into a KerasHub preset folder in the cache
(``$KERAS_HOME/keras_t2t/presets/<model>_<tag>``), so
that ``keras_t2t.t2t_vit_14(weights="imagenet")`` then needs no network.
``--refresh`` downloads those weights again whatever the cache records, and replaces
the cached file (and its preset) only once the new one has arrived and passed its
checks (a failed download leaves the cache as it was). See ``keras_t2t.weights.pretrained``.

Exit codes: 0 success; 1 a fetch failed (one ``error:`` line per failure, the
others still fetched); 2 bad arguments or settings (a cache folder that cannot be
written included: checked before any download). The parser and the entry point
are ``keras_t2t.cli.commands`` (no Keras): ``main`` parses, then ``run`` works.
"""

import os
import sys

from keras_t2t.cli.commands import run_as_main  # noqa: E402

run_as_main(__name__, "weights")  # python -m keras_t2t.cli.weights: parsed before Keras is imported

from keras_t2t.cli.args import UsageError  # noqa: E402
from keras_t2t.cli.commands import one_line  # noqa: E402
from keras_t2t.cli.commands import weights as main  # noqa: E402 - the entry point: parses, then run()
from keras_t2t.cli.commands import weights_parser as build_parser  # noqa: E402
from keras_t2t.hub import presets  # noqa: E402
from keras_t2t.models.presets import get_preset, list_weights  # noqa: E402
from keras_t2t.weights import pretrained  # noqa: E402

__all__ = ["build_parser", "main", "run"]


def _cache_state(row):
    if os.path.isfile(os.path.join(pretrained.preset_cache_folder(row.model, row.tag), "metadata.json")):
        return "converted"
    return "downloaded" if os.path.isfile(os.path.join(pretrained.cache_dir(), row.file)) else "-"


def _list(args):
    if args.model is not None:
        get_preset(args.model)
    rows = list_weights(args.model)
    print(f"cache: {pretrained.cache_dir()}  source: {pretrained.weights_base_url()}")
    table = [("model", "tag", "file", "size", "classes", "top-1", "cache")]
    table += [(r.model, r.tag, r.file, str(r.image_size), str(r.classes), f"{r.top1:.1f}", _cache_state(r)) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.rjust(w) if i in (3, 4, 5) else cell.ljust(w) for i, (cell, w) in
                        enumerate(zip(line, widths))).rstrip())
    if not rows:
        print(f"{args.model} has no released weights.")
    return 0


def _fetch(args):
    wanted = list(args.weights)
    if args.all:
        wanted += [(row.model, row.tag) for row in list_weights()]
    if not wanted:
        raise UsageError("fetch needs MODEL:TAG arguments or --all (see keras-t2t-weights list)")
    pretrained.weights_base_url()  # a bad KERAS_T2T_WEIGHTS_URL is a usage error, before any download
    pretrained.check_cache_dir()  # so is a cache that cannot be written
    failed = 0
    for model, tag in dict.fromkeys(wanted):
        name = f"{model}:{tag}"
        try:
            release = pretrained.release_for(model, tag)
            print(f"{name}: {release.file} ({pretrained.release_url(release)})", flush=True)
            # --refresh: a new download replaces the cached file only once it has arrived and passed its checks.
            (pretrained.refresh if args.refresh else pretrained.fetch_checkpoint)(model, tag)
            path = presets.preset_folder(f"{model}_{release.tag}")
        except (pretrained.WeightsFetchError, ValueError, OSError) as error:
            print(f"error: {name}: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
            failed += 1
            continue
        print(f"{name}: ok, {path}", flush=True)
    if failed:
        print(f"{failed} of {len(dict.fromkeys(wanted))} failed", file=sys.stderr)
    return 1 if failed else 0


def run(args):
    """Lists or fetches, as parsed ``args`` (``commands.weights_parser``) say; returns the exit code."""
    try:
        return _list(args) if args.command == "list" else _fetch(args)
    except (UsageError, ValueError) as error:
        print(f"error: {one_line(error)} (see --help)", file=sys.stderr)
        return 2
