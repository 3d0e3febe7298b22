"""Convert an authors' T2T-ViT checkpoint (``*.pth.tar``) to a Keras file.

Command line (also installed as ``keras-t2t-convert``)::

    python -m keras_t2t.cli.convert CHECKPOINT|--model HANDLE --output OUT.keras|OUT.weights.h5
        [--variant NAME] [--weights-entry {auto,state_dict_ema,state_dict,model,net,bare}]
        [--image-size N|HxW] [--classes N | --no-top] [--qk-scale FLOAT]
        [--classifier-activation NAME|none] [--overwrite] [--allow-nonfinite]

``--model`` names the source as every command's ``--model`` does: a checkpoint, a
release preset name (``t2t_vit_14_imagenet``: its checkpoint, fetched once and
cached) or a registry name (as ``--variant``). Keras files and preset folders are
converted already: every command reads them as they are.

The output's suffix picks the format: ``.keras`` (the whole model) or
``.weights.h5`` (weights only; rebuild with the variant's builder and pass the
file as ``weights=``). The checkpoint is read without running any code from
it (``keras_t2t.weights.torch_pickle``). The model is built and loaded by
``keras_t2t.from_checkpoint``: the variant is detected from the tensors' shapes
(and the checkpoint's ``arch`` entry) unless ``--variant`` names it; the image
size defaults to the one the checkpoint's position table was trained at, the
classes to the checkpoint's head. The authors' CIFAR fine-tunes keep their
weights under ``net`` (found by ``auto``); the Token Labeling checkpoint's
``aux_head`` is kept with its head (``keras_t2t.T2TViT``'s ``token_labeling_head``).
``python -m keras_t2t.convert_cli`` is the same command.

The output folder is checked first (it must exist and be writable). A checkpoint
whose weights hold NaN or Inf is refused when it is read, naming the tensors
(``--allow-nonfinite`` converts it as it is; the verification then compares the
non-finite values by position).

The result is verified before it gets its final name: it is written to a
temporary file in the output folder, reloaded in this process, its
predictions on a few fixed random images must equal the in-memory model's
(max abs diff <= 1e-5), and every tensor it holds must equal the
checkpoint's (the position table resized and the head left out where asked).
Only then is it renamed onto ``--output`` (``keras_t2t.io_utils.install_atomic``);
on any failure no file is left.

Exit codes: 0 success, 2 bad arguments or input (the message starts with
``error:``), 1 verification failure. The parser and the entry point are
``keras_t2t.cli.commands`` (no Keras): ``main`` parses, then ``run`` converts.
"""

import os
import sys
import warnings

from keras_t2t.cli.commands import run_as_main  # noqa: E402

run_as_main(__name__, "convert")  # python -m keras_t2t.cli.convert: parsed before Keras is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_t2t.applications import from_checkpoint  # noqa: E402
from keras_t2t.cli.args import UsageError  # noqa: E402
# The entry point (main: parses, then run()) and its parser live in commands, free of Keras.
from keras_t2t.cli.commands import WEIGHTS_ENTRIES, one_line, convert as main, convert_parser as build_parser  # noqa: E402,E501
from keras_t2t.hub.presets import is_preset_name, preset_release  # noqa: E402
from keras_t2t.io_utils import (  # noqa: E402
    atomic_temp_file_like,
    check_output_folder,
    install_atomic,
    remove_path,
    remove_stale_temporaries,
    stale_file_patterns,
)
from keras_t2t.models.presets import ALL_VARIANTS  # noqa: E402
from keras_t2t.models.t2t_vit import TOKEN_LABELING_AUX_WEIGHT, T2TViT  # noqa: E402
from keras_t2t.resolve import resolve_model  # noqa: E402
from keras_t2t.weights.detect import (  # noqa: E402
    checkpoint_head,
    checkpoint_image_size,
    describe_variant,
    detect_variant,
)
from keras_t2t.weights.loading import NonFiniteWeightsWarning, describe_nonfinite, nonfinite_counts  # noqa: E402
from keras_t2t.weights.mapping import HEADS, model_state_dict, resize_pos_embed  # noqa: E402
from keras_t2t.weights.pretrained import checked_checkpoint  # noqa: E402
from keras_t2t.weights.torch_pickle import CheckpointError, load_state_dict_file  # noqa: E402

__all__ = ["ConversionError", "VerificationError", "WEIGHTS_ENTRIES", "build_parser", "convert", "main", "run"]

OUTPUT_SUFFIXES = (".keras", ".weights.h5")
PREDICTION_ATOL = 1e-5
VERIFY_IMAGES = 2
VERIFY_SEED = 0


class ConversionError(ValueError):
    """Bad arguments or input (exit code 2)."""


class VerificationError(RuntimeError):
    """The written file does not reproduce the checkpoint (exit code 1)."""


def _output_format(path):
    for suffix in OUTPUT_SUFFIXES:
        if path.endswith(suffix) and len(os.path.basename(path)) > len(suffix):
            return suffix
    raise ConversionError(
        f"--output {path!r} has an unsupported suffix; use '.keras' (whole model) or '.weights.h5' (weights only)."
    )


def _checkpoint_from_model(args):
    """Sets ``args.checkpoint`` and ``args.variant`` from ``--model`` (see the parser), or refuses it."""
    handle = args.model
    if handle is None:
        if args.checkpoint is None:
            raise UsageError("give the checkpoint to convert (CHECKPOINT or --model)")
        return
    if handle in ALL_VARIANTS:
        if args.variant not in (None, handle):
            raise UsageError(f"--model {handle} and --variant {args.variant} name two models")
        args.variant = handle
        if args.checkpoint is None:
            raise UsageError(f"--model {handle} is a registry name: give the checkpoint to convert too")
        return
    if args.checkpoint is not None:
        raise UsageError(f"CHECKPOINT {args.checkpoint!r} and --model {handle!r} name two sources; give one")
    if is_preset_name(handle):
        row = preset_release(handle)
        args.checkpoint, _ = checked_checkpoint(row.model, row.tag)
        args.variant = args.variant or row.model
        return
    args.checkpoint = handle


def _read(path, entry):
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise ConversionError(f"checkpoint {path!r} is a directory" + (
            " (a KerasHub preset folder, converted already: every command's --model reads it as it is)"
            if os.path.isfile(os.path.join(path, "config.json")) else ""))
    if path.endswith((".keras", ".h5")):
        raise ConversionError(
            f"{path!r} is already a Keras file; this tool converts the authors' PyTorch checkpoints (*.pth.tar); "
            "every command's --model reads it as it is"
        )
    return load_state_dict_file(path, which=entry)


def _nonfinite(path, state, info, allowed):
    """{key: (NaN, Inf)} of the checkpoint's weights; any is an error unless ``allowed``."""
    counts = nonfinite_counts(state)
    if counts and not allowed:
        raise ConversionError(
            f"checkpoint {path!r} holds NaN or Inf in its {info['source_key']!r} weights: "
            f"{describe_nonfinite(counts, len(state))}; a model of them gives no finite scores "
            "(--allow-nonfinite converts them as they are)"
        )
    return counts


def _predict(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def _reload(tmp_path, fmt, variant, build_kwargs):
    """The written file loaded back through the resolver, as every command will read it: the ``.keras``
    file as saved, the ``.weights.h5`` file into the variant's model."""
    if fmt == ".keras":
        model = resolve_model(tmp_path).model
        if not isinstance(model, T2TViT):
            raise VerificationError(f"the written file holds a {type(model).__name__}, not a T2TViT")
        return model
    return resolve_model(variant, weights=tmp_path, verbose=False, **build_kwargs).model


def _dropped(key, report):
    """Whether ``key`` belongs to a head (``HEADS``) the load left out."""
    return any(key.startswith(prefix) and report.get(entry) for entry, prefix in HEADS.items())


def _expected_tensors(state, model, report):
    """{key: array} the converted model must hold, from the checkpoint (head/table exceptions applied)."""
    expected = {}
    for key, value in state.items():
        if _dropped(key, report):
            continue
        value = np.asarray(value)
        if key == "pos_embed" and report.get("pos_embed_resized"):
            old_grid, new_grid = report["pos_embed_resized"]
            value = resize_pos_embed(value, new_grid, old_grid)
        expected[key] = value
    return expected


def _check_tensors(written, expected, report):
    problems = []
    missing = sorted(set(expected) - set(written))
    if missing:
        problems.append(f"checkpoint tensors absent from the written model: {', '.join(missing[:5])}")
    extra = sorted(k for k in set(written) - set(expected) if not _dropped(k, report))
    if extra:
        problems.append(f"written tensors not from the checkpoint: {', '.join(extra[:5])}")
    for key in sorted(set(expected) & set(written)):
        got = np.asarray(written[key])
        want = expected[key].astype(got.dtype)
        if got.shape != want.shape:
            problems.append(f"{key}: shape {got.shape}, checkpoint {want.shape}")
        elif not np.array_equal(got, want, equal_nan=True):
            problems.append(f"{key}: max abs diff {_max_abs_diff(got, want):.3g}")
    if problems:
        raise VerificationError("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return len(set(expected) & set(written))


def convert(args, out=print):
    """Runs one conversion described by the parsed ``args``; returns the final output path."""
    output = os.path.abspath(args.output)
    fmt = _output_format(output)
    folder = os.path.dirname(output)
    check_output_folder(folder, "the --output folder")  # unwritable: one line, before any work
    if not os.path.isdir(folder):
        raise ConversionError(f"the output folder {folder!r} does not exist")
    if os.path.exists(output) and not args.overwrite:
        raise ConversionError(f"{args.output!r} exists; pass --overwrite to replace it")
    if os.path.isdir(output):  # --overwrite replaces a file, never a folder
        raise ConversionError(f"--output {args.output!r} is a folder; name a file ending in {fmt!r}")
    if args.no_top and args.classes is not None:
        raise ConversionError("--classes and --no-top exclude each other")

    _checkpoint_from_model(args)
    # What killed conversions to this output left (their process has ended).
    for path in remove_stale_temporaries(folder, stale_file_patterns(output)):
        out(f"removed {os.path.basename(path)}, left by a conversion that was killed")
    entry = None if args.weights_entry == "auto" else args.weights_entry
    state, info = _read(args.checkpoint, entry)
    nonfinite = _nonfinite(args.checkpoint, state, info, args.allow_nonfinite)

    ckpt_size = checkpoint_image_size(state)
    size = args.image_size or ckpt_size
    if size is None:
        if args.variant is None:
            detect_variant(state, arch=info.get("arch"))  # weights no row fits say so before the size does
        raise ConversionError(
            "the checkpoint's position table does not tell its image size (no square grid); pass --image-size"
        )
    ckpt_classes = checkpoint_head(state)[0]
    include_top = not args.no_top and (args.classes is not None or ckpt_classes is not None)
    classes = args.classes or ckpt_classes or 1000
    activation = None if args.classifier_activation.lower() in ("none", "linear", "logits") else args.classifier_activation

    build_kwargs = dict(
        input_shape=(size[0], size[1], 3),
        include_top=include_top,
        classes=classes,
        classifier_activation=activation,
    )
    if args.qk_scale is not None:
        build_kwargs["qk_scale"] = args.qk_scale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWeightsWarning)  # said below, in its own line
        model = from_checkpoint(
            args.checkpoint, variant=args.variant, which=entry, state_dict=state, info=info, verbose=False,
            **build_kwargs,
        )
    found = model.checkpoint_info
    variant, detected, overrides = found["variant"], found["detected"], found["overrides"]
    # What rebuilds this model for a .weights.h5 file.
    build_kwargs = dict(overrides, token_labeling_head=model.token_labeling_head, **build_kwargs)
    report = model.weights_report

    how = "given" + (f", detected {detected}" if detected and detected != variant else "") if args.variant else "detected"
    out(f"checkpoint: {args.checkpoint}")
    out(f"variant: {variant} ({how}); {describe_variant(variant)}"
        + (", qkv_bias" if overrides.get("qkv_bias") else ""))
    extras = "".join(f", {key} {info[key]!r}" for key in ("arch", "epoch", "acc") if key in info)
    out(f"weights entry: {info['source_key']}{extras}")
    out(f"image size: {size[0]}x{size[1]}" + (f" (checkpoint: {ckpt_size[0]}x{ckpt_size[1]})" if ckpt_size and ckpt_size != size else ""))
    if include_top:
        out(f"classes: {classes}" + (f" (checkpoint: {ckpt_classes}; its head is not used)" if report.get("head_dropped") else ""))
    else:
        out("classes: no head" + (f" (the checkpoint's {ckpt_classes}-class head is left out)" if ckpt_classes else ""))
    if model.token_labeling_head:
        out(f"token labeling: aux_head kept; class scores = head + {TOKEN_LABELING_AUX_WEIGHT:g} x the maximum "
            "over the patch tokens of aux_head, as the authors evaluate it")
    if args.qk_scale is not None:
        out(f"qk_scale: {args.qk_scale:g}")
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    out(f"parameters: {model.count_params():,} ({trainable:,} trainable)")
    out(f"weights: {report}")
    if nonfinite:
        out(f"non-finite weights (converted as they are, --allow-nonfinite): {describe_nonfinite(nonfinite, len(state))}")

    # Keras picks the format from the suffix, so the temporary file keeps it.
    tmp_path = atomic_temp_file_like(output, fmt)
    try:
        if fmt == ".keras":
            model.save(tmp_path, overwrite=True)
        else:
            model.save_weights(tmp_path, overwrite=True)
        _verify(tmp_path, fmt, model, variant, build_kwargs, state, report, out=out, name=os.path.basename(output))
        if os.path.exists(output) and not args.overwrite:
            raise ConversionError(f"{args.output!r} appeared meanwhile; pass --overwrite to replace it")
        install_atomic(tmp_path, output)  # an ordinary file's permissions, then one rename
    finally:
        remove_path(tmp_path)  # gone already when installed
    out(f"wrote {output}")
    return output


def _verify(tmp_path, fmt, model, variant, build_kwargs, state, report, out, name):
    """The written file reloaded must predict as ``model`` does and hold the checkpoint's tensors."""
    size = model.image_shape[:2]
    images = np.random.default_rng(VERIFY_SEED).standard_normal((VERIFY_IMAGES, size[0], size[1], 3))
    images = images.astype("float32")
    expected_out = _predict(model, images)
    try:
        reloaded = _reload(tmp_path, fmt, variant, build_kwargs)
        got_out = _predict(reloaded, images)
    except VerificationError:
        raise
    except Exception as error:  # the file was written by us: failing to read it back is a bad file
        raise VerificationError(f"reloading the written file failed: {type(error).__name__}: {error}") from error
    if got_out.shape != expected_out.shape:
        raise VerificationError(f"reloaded output shape {got_out.shape}, in-memory {expected_out.shape}")
    diff = _max_abs_diff(got_out, expected_out)
    out(f"verify: reloaded {name}; predictions on {VERIFY_IMAGES} random images: max abs diff {diff:.3g}")
    if not diff <= PREDICTION_ATOL:
        raise VerificationError(
            f"the reloaded file's predictions differ from the in-memory model's by {diff:.3g} "
            f"(> {PREDICTION_ATOL:g})"
        )
    checked = _check_tensors(model_state_dict(reloaded), _expected_tensors(state, model, report), report)
    out(f"verify: {checked} tensors equal the checkpoint's")


def _max_abs_diff(got, want):
    """The largest |got - want|, NaN and Inf counting as equal where both hold the same; 0.0 when empty."""
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    if not got.size:
        return 0.0
    with np.errstate(invalid="ignore"):
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        return float(np.max(np.where(same, 0.0, np.abs(got - want))))


def run(args):
    """Runs one conversion on parsed ``args`` (``commands.convert_parser``); returns the exit code."""
    try:
        convert(args)
    except UsageError as error:
        print(f"error: {error} (see --help)", file=sys.stderr)
        return 2
    except VerificationError as error:
        print(f"error: verification failed: {one_line(error)}", file=sys.stderr)
        return 1
    except (CheckpointError, ConversionError, ValueError, FileNotFoundError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    return 0
