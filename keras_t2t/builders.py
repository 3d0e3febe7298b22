"""How a model of the registry is built and its weights loaded: ``build_model`` (a name and the
``keras.applications`` keywords) and ``checkpoint_model`` (any weights file, the variant detected).

These are the construction under the one resolver (``keras_t2t.resolve``); the public
builders (``keras_t2t.t2t_vit_14``, ``create_model``, ``from_checkpoint``) live in
``keras_t2t.applications`` and call the resolver. Weights load through ``keras_t2t.weights``.
"""

import functools
import os

from keras_t2t.hub import preset_files, presets
from keras_t2t.layers import DEFAULT_T2T_STAGES
from keras_t2t.models.presets import get_preset, names
from keras_t2t.models.t2t_vit import T2TViT, T2TViTDense
from keras_t2t.models.vit import ViT
from keras_t2t.weights import loading, pretrained
from keras_t2t.weights.detect import checkpoint_image_size, detect_variant, weight_overrides
from keras_t2t.weights.mapping import HEADS
from keras_t2t.weights.pretrained import is_weights_tag, release_for, unknown_weights_error

# The class each registry family builds.
MODEL_CLASSES = {"t2t_vit": T2TViT, "t2t_vit_dense": T2TViTDense, "vit": ViT}


def list_models(group=None):
    """Every buildable model name, or those of one group ("main", "study", "vit", "mini")."""
    return names(group) if group else names()


def list_variants(studies=False):
    """The T2T-ViT main family's names; with ``studies``, the backbone studies' too."""
    return names("main", "study") if studies else names("main")


def _check_weights_argument(weights, model_name):
    """``weights`` if it is a weights tag of the model ("imagenet", ...; lowered) or an existing path."""
    if is_weights_tag(weights):
        return release_for(model_name, weights).tag  # or an error naming the model's tags
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            "weights must be None, a weights tag (see keras_t2t.list_weights()) or a path to a "
            f"'.pth.tar'/'.pth', '.keras' or '.weights.h5' file; got {weights!r}."
        )
    if not os.path.exists(weights):
        raise unknown_weights_error(model_name, os.fspath(weights))
    if os.path.isdir(weights) and not os.path.isfile(os.path.join(weights, "config.json")):
        raise ValueError(f"weights={os.fspath(weights)!r} is a folder but not a KerasHub preset (it has no "
                         "config.json); give a preset folder, a weights tag or a weights file.")
    return weights


def build_model(
    model_name,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling="token",
    classes=None,
    classifier_activation="softmax",
    name=None,
    checkpoint_entry=None,
    verbose=True,
    state_dict=None,
    skip_mismatch=False,
    **kwargs,
):
    """Builds the registry row ``model_name`` with the ``keras.applications`` keywords.

    ``kwargs`` override the row's architecture (``embed_dim``, ``dense_stages``,
    ...) or go to the model class (``drop_path_rate``, ``dtype``, ...).
    ``classes=None`` means the class count of the weights' head, else 1000; when
    that head is kept and the weights hold Token Labeling's ``aux_head`` too, the
    model gets ``token_labeling_head=True`` unless the keyword says otherwise.
    ``state_dict`` (already read from ``weights``) saves reading the file twice.
    Weights that do not cover the model exactly (another depth, tensors the model
    lacks) are refused naming them, unless ``skip_mismatch=True`` (Keras' name): then
    what fits loads and a warning names the rest.
    """
    preset = get_preset(model_name)
    config = dict(preset.config)
    config.update(kwargs)
    model_class = MODEL_CLASSES[preset.family]
    if model_class is T2TViTDense:
        config.pop("block_type", None)
    elif config.get("block_type") == "dense" and model_class is T2TViT:
        config.pop("block_type")
        model_class = T2TViTDense
    is_vit = model_class is ViT
    state = state_dict
    head = (None, False)  # the weights' (classes, token_labeling), see loading.saved_head
    if weights is not None:
        weights = _check_weights_argument(weights, model_name)
        if is_weights_tag(weights):
            build = functools.partial(model_class, include_top=include_top, pooling=pooling,
                                      classifier_activation=classifier_activation, name=name or model_name, **config)
            return _from_release(model_name, weights, build, input_shape, classes, include_top, pooling, verbose)
        if os.path.isdir(weights):
            # A preset folder: its image size and head unless the keywords say otherwise; read through Keras.
            weights = os.path.abspath(weights)
            head_classes, token_labeling = preset_files.preset_head(weights)
            input_shape = preset_files.preset_image_shape(weights) if input_shape is None else input_shape
            head = (head_classes, token_labeling)
        elif not is_vit and state is None and not os.fspath(weights).endswith(".h5"):
            state, _ = loading.read_state_dict(weights, which=checkpoint_entry)
        if state is not None and input_shape is None:
            size = checkpoint_image_size(state, config.get("t2t_stages", DEFAULT_T2T_STAGES))
            if size is not None:
                # Build at the resolution the weights were trained at (the 384 checkpoint).
                input_shape = (size[0], size[1], 3)
        if state is not None:
            head = loading.saved_head(weights, state)
    follow_h5_head = classes is None and include_top and weights is not None and os.fspath(weights).endswith(".h5")
    classes = _follow_weights_head(classes, include_top, head, config)
    if input_shape is None and preset.image_size != 224:
        input_shape = (preset.image_size, preset.image_size, 3)
    build = functools.partial(model_class, input_shape=input_shape, include_top=include_top, pooling=pooling,
                              classifier_activation=classifier_activation, name=name or model_name, **config)
    model = build(classes=classes)
    if follow_h5_head:
        # A '.weights.h5' file names nothing: its head is the tensor at the place of this model's head.
        file_classes, _ = loading.saved_head(weights, model=model)
        if file_classes and file_classes != classes:
            model = build(classes=file_classes)
    if weights is not None:
        if os.path.isdir(weights):
            report = preset_files.load_into_classic(model, weights)
        elif is_vit:
            report = loading.load_vit_weights(model, weights, skip_mismatch=skip_mismatch)
        elif state is None:
            report = loading.load_weights(model, weights, skip_mismatch=skip_mismatch)
        else:
            report = loading.load_state_dict(model, state, skip_mismatch=skip_mismatch)
        model.weights_report = report
        if verbose and isinstance(report, dict) and any(report.get(k) for k in (*HEADS, "pos_embed_resized")):
            print(f"keras_t2t: {model_name} from {os.fspath(weights)}: {report}")
    return model


def _from_release(model_name, tag, build, input_shape, classes, include_top, pooling, verbose):
    """``weights=<tag>``: the release's preset folder (``keras_t2t.hub.presets``), fetched and converted once.

    The release's image size, classes and Token Labeling head unless the keywords say
    otherwise. A model built as the release is the one model a first load builds (the
    release is read into it, then written as the preset); later loads read the preset
    folder through Keras.
    """
    release = pretrained.release_for(model_name, tag)
    native = (release.image_size, release.image_size, 3)
    input_shape = native if input_shape is None else tuple(input_shape)
    classes = release.classes if classes is None else classes
    preset_name = f"{model_name}_{release.tag}"
    model = None
    if tuple(input_shape) == native and classes == release.classes and include_top and pooling == "token":
        def as_release(name, arch, release_classes, token_labeling, preprocessor):
            return build(input_shape=native, classes=release_classes, token_labeling_head=token_labeling)

        folder, model = presets.convert_release(preset_name, build=as_release)
        if model is not None:
            model.weights_report = {"loaded": len(model.weights), "preset": folder, "converted": True}
            return model
    folder = presets.preset_folder(preset_name)
    head_classes, token_labeling = preset_files.preset_head(folder)
    extra = {"token_labeling_head": True} if token_labeling and include_top and classes == head_classes else {}
    model = build(input_shape=input_shape, classes=classes, **extra)
    report = preset_files.load_into_classic(model, folder)
    model.weights_report = report
    if verbose and any(report.get(k) for k in (*HEADS, "pos_embed_resized")):
        print(f"keras_t2t: {model_name} from the preset {folder}: {report}")
    return model


def _follow_weights_head(classes, include_top, head, config):
    """The class count: ``classes`` when given, else the weights' head's, else 1000 (keras.applications').

    The weights' token-labeling head comes along (``token_labeling_head`` set in
    ``config`` unless given) only with their class head: same classes, a top.
    """
    head_classes, token_labeling = head
    if classes is None:
        classes = head_classes or 1000
    if token_labeling and include_top and classes == head_classes:
        config.setdefault("token_labeling_head", True)
    return classes


def checkpoint_model(path, variant=None, which=None, state_dict=None, info=None, **kwargs):
    """A model built and loaded from any weights file, detecting the variant when not named.

    ``keras_t2t.from_checkpoint("81.5_T2T_ViT_14.pth.tar", classifier_activation=None)``.
    The class count is the checkpoint's head's unless ``classes`` says otherwise (then
    the head is fresh); a Token Labeling checkpoint keeps its ``aux_head`` with it
    (``token_labeling_head``, see ``keras_t2t.T2TViT``).
    ``kwargs`` are the builder keywords (input_shape, classes, include_top, verbose, ...)
    and overrides of the row (embed_dim, dense_stages, ...), which with ``variant`` load
    a checkpoint of a size no row has. ``state_dict`` and ``info`` (what
    ``keras_t2t.weights.read_state_dict`` gave for ``path``) save reading the file again.
    The model's ``checkpoint_info`` holds ``info`` plus the ``variant`` built, the one
    ``detected`` (None when no row fits) and the ``overrides`` read from the weights.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {os.fspath(path)!r} does not exist.")
    if os.fspath(path).endswith(".h5"):
        if variant is None:
            raise ValueError("A '.weights.h5' file does not record its variant; pass variant=NAME.")
        get_preset(variant)
        return build_model(variant, weights=path, **kwargs)
    if state_dict is None:
        state_dict, info = loading.read_state_dict(path, which=which)
    info = dict(info or {})
    try:
        detected, overrides = detect_variant(state_dict, arch=info.get("arch"))
    except ValueError:
        if variant is None:
            raise
        # A checkpoint of a custom size fits no row: the named variant, its row overridden by kwargs.
        detected, overrides = None, weight_overrides(state_dict)
    variant = variant or detected
    get_preset(variant)
    for key, value in overrides.items():
        kwargs.setdefault(key, value)
    model = build_model(variant, weights=path, checkpoint_entry=which, state_dict=state_dict, **kwargs)
    model.checkpoint_info = dict(info, variant=variant, detected=detected, overrides=overrides)
    return model


__all__ = [
    "MODEL_CLASSES",
    "build_model",
    "checkpoint_model",
    "list_models",
    "list_variants",
]
