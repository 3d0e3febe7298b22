"""KerasHub presets: every released checkpoint as ``<model>_<tag>``, converted once into a preset folder.

``t2t_vit_14_imagenet`` is ``t2t_vit_14``'s ``"imagenet"`` release (``list_presets()``
names them all). ``preset_folder(name)`` fetches the authors' file once (the
mirror and the SHA-256 checks of ``keras_t2t.weights.pretrained``), converts it
once into ``$KERAS_HOME/keras_t2t/presets/<name>/`` (KerasHub's ``config.json``,
``model.weights.h5``, ``task.json``, ``task.weights.h5``, ``preprocessor.json``
and a ``metadata.json`` naming the source URL, its SHA-256 and the release's
top-1), and from then on only that folder is read: through KerasHub's own
loader, as any preset. The folder appears whole or not at all.

``save_preset`` writes any T2T-ViT of the package (a classic ``keras_t2t.T2TViT``
too, e.g. the trainer's) as such a folder, with its evaluation preprocessing.
"""

import datetime
import difflib
import json
import os
import warnings

import keras
import keras_hub
import numpy as np

from keras_t2t.data.images import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from keras_t2t.hub.backbone import T2TViTBackbone
from keras_t2t.hub.classifier import (
    T2TViTImageClassifier,
    T2TViTImageClassifierPreprocessor,
    T2TViTImageConverter,
)
from keras_t2t.io_utils import atomic_temp_path, install_atomic, remove_path, remove_stale_temporaries
from keras_t2t.models.presets import get_preset, list_weights
from keras_t2t.models.t2t_vit import T2TViT, T2TViTDense
from keras_t2t.weights import pretrained
from keras_t2t.weights.loading import load_state_dict
from keras_t2t.weights.mapping import model_state_dict

METADATA_FILE = "metadata.json"
# The authors evaluate every ImageNet release with crop_pct 0.9 at its own size (spec section 11);
# their transfer_learning.py feeds CIFAR's 32x32 images resized whole to 224.
TAG_CROP_PCT = {"cifar10": 1.0, "cifar100": 1.0}


def _release_presets():
    return {f"{row.model}_{row.tag}": row for row in list_weights()}


def list_presets():
    """The names of every released checkpoint as a preset, in registry order (``t2t_vit_7_imagenet``, ...)."""
    return list(_release_presets())


def is_preset_name(handle):
    return isinstance(handle, str) and handle in _release_presets()


def preset_release(name):
    """The ``WeightsRow`` (model, tag, file, image_size, classes, top1) a preset name stands for."""
    rows = _release_presets()
    if name not in rows:
        close = difflib.get_close_matches(str(name), list(rows), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"Unknown preset {name!r}{hint}; accepted: {', '.join(rows)}, or a preset folder.")
    return rows[name]


def release_preprocessing(row):
    """(image_size, crop_pct) the authors evaluate a release with."""
    return row.image_size, TAG_CROP_PCT.get(row.tag, DEFAULT_CROP_PCT)


# The files of a preset whose SHA-256 a conversion records in its metadata.json and checks on every use.
CHECKED_FILES = ("config.json", "task.json", "model.weights.h5", "task.weights.h5")


def _problem(folder):
    """Why a cached conversion cannot be used (None when it can): missing, half-written or changed since."""
    try:
        with open(os.path.join(folder, METADATA_FILE), encoding="utf-8") as handle:
            recorded = json.load(handle).get("files_sha256") or {}
    except (OSError, ValueError):
        return "is incomplete" if os.path.isdir(folder) else "missing"
    for name in CHECKED_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or recorded.get(name) != pretrained.sha256_of(path):
            return f"does not match the SHA-256 of its {name} recorded when it was converted"
    return None


def architecture(model):
    """``T2TViTBackbone`` keywords of any T2T-ViT of the package (classic or KerasHub)."""
    if isinstance(model, T2TViTImageClassifier):
        model = model.backbone
    if isinstance(model, T2TViTBackbone):
        config = model.get_config()
        for key in ("name", "trainable", "dtype"):
            config.pop(key, None)
        return config
    if getattr(model, "t2t_type", None) is None:
        raise ValueError(
            f"{type(model).__name__} is not a T2T-ViT of keras_t2t; presets hold T2T-ViT models (the ViT "
            "baselines have no KerasHub class here)."
        )
    config = model.get_config()
    arch = {key: config[key] for key in (
        "t2t_type", "token_dim", "t2t_stages", "embed_dim", "num_heads", "mlp_ratio", "qkv_bias", "qk_scale",
        "drop_rate", "attn_drop_rate", "drop_path_rate", "t2t_dropout")}
    arch["image_shape"] = list(config["input_shape"])
    if "dense_stages" in config:
        arch.update(block_type="dense", dense_stages=list(config["dense_stages"]), growth_rate=config["growth_rate"])
    else:
        arch.update(block_type=config.get("block_type", "standard"), depth=config["depth"])
    return arch


def make_preprocessor(preprocessing):
    """A ``T2TViTImageClassifierPreprocessor`` for ``(image_size, crop_pct[, mean, std])``, or None."""
    if preprocessing is None:
        return None
    size, crop_pct, *norm = preprocessing
    mean, std = norm if norm else (IMAGENET_MEAN, IMAGENET_STD)
    converter = T2TViTImageConverter(image_size=size, crop_pct=crop_pct, mean=mean, std=std)
    return T2TViTImageClassifierPreprocessor(image_converter=converter)


# Keywords that change training, not the weights: a preset loads whatever they are.
TRAINING_KEYS = ("drop_rate", "attn_drop_rate", "drop_path_rate", "t2t_dropout")
# The classic model's layers after the final norm: what a KerasHub task holds beside its backbone.
CLASSIC_TOP = ("pool", "head", "aux_head", "scores", "predictions")


def _split_layers(model):
    """(the classic model's backbone layers, its top layers): the two files of a preset, in Keras' order."""
    top = [layer for layer in model.layers if layer.name in CLASSIC_TOP]
    return [layer for layer in model.layers if layer.name not in CLASSIC_TOP], top


def _serialized(cls, config):
    return {"module": cls.__module__, "class_name": cls.__name__, "config": config,
            "registered_name": f"keras_t2t>{cls.__name__}"}


def _write_json(folder, name, data):
    with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=4)


def _write_classic(model, folder, preprocessing):
    """A classic ``keras_t2t.T2TViT`` written as the ``T2TViTImageClassifier`` it equals, no second model built.

    The backbone's layers are the classic model's up to its final norm, in the same
    order, so Keras writes ``model.weights.h5`` from the classic model with its top
    skipped exactly as it writes it from a ``T2TViTBackbone`` (and ``task.weights.h5``
    from the top alone); tests/hub/test_presets.py loads both through KerasHub.
    """
    if not model.include_top:
        raise ValueError(f"{model.name} has no head (include_top=False); a classifier preset needs one.")
    if model.pooling not in ("token", "avg"):
        raise ValueError(f"{model.name} pools with {model.pooling!r}; a classifier preset pools 'token' or 'avg'.")
    backbone_layers, top = _split_layers(model)
    dtype = keras.dtype_policies.serialize(model.dtype_policy)
    backbone = _serialized(T2TViTBackbone, dict(name=f"{model.name}_backbone", trainable=True, dtype=dtype,
                                                **architecture(model)))
    preprocessor = make_preprocessor(preprocessing)
    task = _serialized(T2TViTImageClassifier, dict(
        backbone=backbone, preprocessor=None if preprocessor is None else keras.saving.serialize_keras_object(
            preprocessor), name=model.name, num_classes=model.classes, pooling=model.pooling, activation=None,
        dropout=0.0, token_labeling_head=bool(model.token_labeling_head)))
    _write_json(folder, "config.json", backbone)
    _write_json(folder, "task.json", task)
    keras.saving.save_weights(model, os.path.join(folder, "model.weights.h5"), objects_to_skip=top)
    keras.saving.save_weights(model, os.path.join(folder, "task.weights.h5"), objects_to_skip=backbone_layers)
    if preprocessor is not None:
        preprocessor.save_to_preset(folder)
    _write_json(folder, METADATA_FILE, {
        "keras_version": keras.version(),
        "keras_hub_version": keras_hub.__version__,
        "parameter_count": sum(int(np.prod(v.shape)) for layer in backbone_layers for v in layer.weights),
        "tasks": ["ImageClassifier"],
    })


def save_preset(model, folder, preprocessing=None, metadata=None, checked=()):
    """Writes ``model`` (any T2T-ViT classifier of the package) as a KerasHub preset folder, atomically.

    A ``T2TViTImageClassifier`` is saved by KerasHub (with its preprocessor, unless
    ``preprocessing`` replaces it); a classic ``keras_t2t.T2TViT`` as the
    ``T2TViTImageClassifier`` it equals (same variables; the task returns logits).
    ``preprocessing``: ``(image_size, crop_pct[, mean, std])`` of the evaluation
    transform; ``metadata``: entries added to ``metadata.json`` (with the SHA-256 of the
    ``checked`` files, as ``files_sha256``). The folder appears whole or not at all.
    Returns its absolute path.
    """
    architecture(model)  # first: a model that is no T2T-ViT is refused before anything is written
    folder = os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, [f".{os.path.basename(folder)}.partial-*"])
    staging = atomic_temp_path(parent, os.path.basename(folder), is_directory=True)
    try:
        if isinstance(model, T2TViTBackbone):
            model.save_to_preset(staging)
        elif isinstance(model, T2TViTImageClassifier):
            kept = model.preprocessor
            if preprocessing is not None:
                model.preprocessor = make_preprocessor(preprocessing)
            try:
                model.save_to_preset(staging)
            finally:
                model.preprocessor = kept
        else:
            _write_classic(model, staging, preprocessing)
        path = os.path.join(staging, METADATA_FILE)
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        data.update(metadata or {})
        if checked:
            data["files_sha256"] = {name: pretrained.sha256_of(os.path.join(staging, name)) for name in checked}
        data.setdefault("date_saved", datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"))
        _write_json(staging, METADATA_FILE, data)
        install_atomic(staging, folder)
    finally:
        remove_path(staging)
    return folder


def load_classic(folder, **kwargs):
    """A classic ``keras_t2t.T2TViT`` (or ``T2TViTDense``) of a preset folder's architecture and head,
    its weights loaded through Keras (one model built). ``kwargs`` go to the class
    (``classifier_activation``, ``dtype``, ...)."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        arch = json.load(handle)["config"]
    classes, token_labeling = release_head(folder)
    config = {key: value for key, value in arch.items() if key not in ("trainable", "dtype", "growth_rate",
                                                                         "dense_stages", "block_type", "depth")}
    config["input_shape"] = config.pop("image_shape")
    config["name"] = config["name"].removesuffix("_backbone")
    block_type = arch.get("block_type", "standard")
    if block_type == "dense":
        model_class = T2TViTDense
        config.update(dense_stages=arch["dense_stages"], growth_rate=arch["growth_rate"])
    else:
        model_class = T2TViT
        config.update(depth=arch["depth"], block_type=block_type)
    config.update(kwargs)
    model = model_class(classes=classes, token_labeling_head=token_labeling, **config)
    model.weights_report = load_into_classic(model, folder)
    return model


def load_into_classic(model, folder):
    """Loads a preset folder into a classic ``keras_t2t.T2TViT`` of its architecture, through Keras.

    Returns a ``WeightLoadReport``-like dict. The backbone's file loads as saved when the
    image size is the preset's; the head when the model has one of the preset's classes
    (else it keeps its fresh head, and the report says so). A model of another image
    size gets the preset's weights with the position table resized, which builds the
    preset's own model once to read them.
    """
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        saved = json.load(handle)["config"]
    with open(os.path.join(folder, "task.json"), encoding="utf-8") as handle:
        task = json.load(handle)["config"]
    arch = architecture(model)
    differs = [key for key, value in arch.items() if key not in TRAINING_KEYS + ("image_shape",)
               and json.loads(json.dumps(value)) != saved.get(key)]
    if differs:
        raise ValueError(f"The preset {folder} is another architecture ({', '.join(differs)} differ) than {model.name}.")
    if list(arch["image_shape"]) != list(saved["image_shape"]):
        source = T2TViTImageClassifier.load_preset_folder(folder)
        return load_state_dict(model, model_state_dict(source))
    backbone_layers, top = _split_layers(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        keras.saving.load_weights(model, os.path.join(folder, "model.weights.h5"), objects_to_skip=top)
        report = {"loaded": len(model.weights), "head_dropped": None, "aux_head_dropped": None,
                  "pos_embed_resized": None, "skipped": None, "preset": folder}
        same_head = (model.include_top and model.classes == task["num_classes"]
                     and bool(model.token_labeling_head) == bool(task["token_labeling_head"]))
        if same_head:
            keras.saving.load_weights(model, os.path.join(folder, "task.weights.h5"), objects_to_skip=backbone_layers)
        elif model.include_top:
            report["head_dropped"] = (f"the preset has {task['num_classes']} classes, the model {model.classes}; the "
                                      "new head keeps its fresh initialisation")
            report["loaded"] -= sum(len(layer.weights) for layer in top)
        else:
            report["head_dropped"] = "the model has no head"
    return report


def preset_folder(name):
    """The cached preset folder of a release preset name, fetched and converted when needed."""
    folder, _ = convert_release(name)
    return folder


def preset_image_shape(folder):
    """The ``(height, width, channels)`` a preset folder's backbone was saved at."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        return tuple(json.load(handle)["config"]["image_shape"])


def release_head(folder):
    """(classes, token_labeling) of a preset folder's head."""
    with open(os.path.join(folder, "task.json"), encoding="utf-8") as handle:
        task = json.load(handle)["config"]
    return int(task["num_classes"]), bool(task.get("token_labeling_head", False))


def convert_release(name, build=None):
    """``(folder, model or None)``: the preset's folder, and the model built to convert it (first time only).

    ``build(arch, classes, token_labeling, preprocessor)`` makes the model the release is read into
    (a ``T2TViTImageClassifier`` unless given: the classic builders pass a ``T2TViT``), so a first
    load builds one model and hands it back.
    """
    row = preset_release(name)
    folder = pretrained.preset_cache_folder(row.model, row.tag)
    problem = _problem(folder)
    if problem is None:
        return folder, None
    if problem != "missing":
        print(f"keras_t2t: the cached preset {folder} {problem}; not trusted, converting it again.")
    checkpoint, state = pretrained.checked_checkpoint(row.model, row.tag)
    preset = get_preset(row.model)
    arch = dict(preset.config, image_shape=(row.image_size, row.image_size, 3))
    if preset.family == "t2t_vit_dense":
        arch["block_type"] = "dense"
    size, crop_pct = release_preprocessing(row)
    print(f"keras_t2t: converting {os.path.basename(checkpoint)} into the KerasHub preset {folder}")
    model = (build or _build_classifier)(row.model, arch, row.classes, "aux_head.weight" in state,
                                         make_preprocessor((size, crop_pct)))
    load_state_dict(model, state)
    metadata = {
        "keras_t2t_preset": name,
        "model": row.model,
        "tag": row.tag,
        "source_file": row.file,
        "source_url": pretrained.read_index().get(row.file, {}).get("source"),
        "source_sha256": pretrained.sha256_of(checkpoint),
        "top1": row.top1,
        "top1_source": "the authors' reported top-1 (ImageNet-1k val, or the CIFAR test set)",
    }
    return save_preset(model, folder, preprocessing=(size, crop_pct), metadata=metadata,
                       checked=CHECKED_FILES), model


def _build_classifier(name, arch, classes, token_labeling, preprocessor):
    backbone = T2TViTBackbone(name=f"{name}_backbone", **arch)
    return T2TViTImageClassifier(backbone, classes, preprocessor=preprocessor, token_labeling_head=token_labeling,
                                 name=name)


def load_classifier(handle, image_shape=None, load_weights=True, **kwargs):
    """``T2TViTImageClassifier`` from a preset name or folder; see ``T2TViTImageClassifier.from_preset``."""
    model = None
    if is_preset_name(handle):
        handle, model = convert_release(handle)  # the first time, the converted model itself: built once
    if model is None or kwargs or not load_weights:
        model = T2TViTImageClassifier.load_preset_folder(handle, load_weights=load_weights, **kwargs)
    return at_image_shape(model, image_shape)


def at_image_shape(model, image_shape):
    """``model`` itself, or a copy built at ``image_shape`` with its position table resized (bicubic,
    as the authors resize it) and its preprocessor's size changed to match."""
    if image_shape is None or tuple(image_shape) == tuple(model.image_shape):
        return model
    backbone = model.backbone
    arch = architecture(backbone)
    arch["image_shape"] = tuple(image_shape)
    preprocessor = model.preprocessor
    if preprocessor is not None:
        converter = preprocessor.image_converter
        preprocessor = make_preprocessor((tuple(image_shape[:2]), converter.crop_pct, converter.mean, converter.std))
    new = T2TViTImageClassifier(T2TViTBackbone(name=backbone.name, dtype=backbone.dtype_policy, **arch),
                                model.num_classes, preprocessor=preprocessor, pooling=model.pooling,
                                activation=model.activation, token_labeling_head=model.token_labeling_head,
                                name=model.name, dtype=model.dtype_policy)
    load_state_dict(new, model_state_dict(model))
    return new


def load_backbone(handle, image_shape=None, load_weights=True, **kwargs):
    """``T2TViTBackbone`` from a preset name or folder; see ``T2TViTBackbone.from_preset``."""
    if is_preset_name(handle):
        handle, model = convert_release(handle)
        if model is not None and not kwargs and image_shape is None and load_weights:
            return model.backbone
    if image_shape is not None:
        return load_classifier(handle, image_shape=image_shape, load_weights=load_weights, **kwargs).backbone
    return T2TViTBackbone.load_preset_folder(handle, load_weights=load_weights, **kwargs)
