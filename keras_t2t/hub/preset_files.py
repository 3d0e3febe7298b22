"""Preset folders on disk: writing any model of the package as one, reading one into a classic model, checking one.

A preset folder is KerasHub's: ``config.json`` (the ``T2TViTBackbone``, or the ViT
baseline's ``ViTBackbone``), ``model.weights.h5``, ``task.json`` (the
``T2TViTImageClassifier`` or ``ViTImageClassifier``, its preprocessor inside),
``task.weights.h5``, ``preprocessor.json``, ``image_converter.json`` and
``metadata.json``. ``save_preset`` writes one atomically; ``read_preset`` reads its
configs with one clear error for anything that is not such a folder; ``load_into_classic``
and ``load_classic`` put it into a classic ``keras_t2t.T2TViT`` (or ``ViT``) through Keras.
Where ``metadata.json`` records the SHA-256 of files (``files_sha256``: every
converted release), every read checks them first.
"""

import datetime
import json
import os
import time
import warnings

import keras
import keras_hub
import numpy as np

from keras_t2t.data.images import IMAGENET_MEAN, IMAGENET_STD
from keras_t2t.hub.backbone import T2TViTBackbone
from keras_t2t.hub.classifier import (
    T2TViTImageClassifier,
    T2TViTImageClassifierPreprocessor,
    T2TViTImageConverter,
    TokenImageClassifier,
)
from keras_t2t.hub.vit import ViTBackbone, ViTImageClassifier, ViTImageClassifierPreprocessor, ViTImageConverter
from keras_t2t.io_utils import (
    atomic_temp_path,
    check_output_folder,
    install_atomic,
    read_json_object,
    remove_path,
    remove_stale_temporaries,
)
from keras_t2t.models.t2t_vit import T2TViT, T2TViTDense
from keras_t2t.models.vit import ViT
from keras_t2t.weights.keras_weights import load_keras_weights
from keras_t2t.weights.loading import load_state_dict
from keras_t2t.weights.mapping import model_state_dict
from keras_t2t.weights.pretrained import sha256_of

METADATA_FILE = "metadata.json"
# The files whose SHA-256 a conversion records in metadata.json, checked on every use.
CHECKED_FILES = ("config.json", "task.json", "model.weights.h5", "task.weights.h5", "preprocessor.json",
                 "image_converter.json")
# Keywords that change training, not the weights: a preset loads whatever they are.
TRAINING_KEYS = ("drop_rate", "attn_drop_rate", "drop_path_rate", "t2t_dropout")
# The classic model's layers after the final norm: what a KerasHub task holds beside its backbone.
CLASSIC_TOP = ("pool", "head", "aux_head", "scores", "predictions")
# The KerasHub classes of each kind of model: (backbone, task, preprocessor, image converter).
HUB_CLASSES = {
    "t2t_vit": (T2TViTBackbone, T2TViTImageClassifier, T2TViTImageClassifierPreprocessor, T2TViTImageConverter),
    "vit": (ViTBackbone, ViTImageClassifier, ViTImageClassifierPreprocessor, ViTImageConverter),
}
# config.json's registered class -> the kind of model.
BACKBONE_CLASSES = {f"keras_t2t>{classes[0].__name__}": kind for kind, classes in HUB_CLASSES.items()}
# A classic ViT's keywords that are its ViTBackbone's (with image_shape for input_shape).
VIT_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "qk_scale",
            "position_embedding", "drop_rate", "attn_drop_rate", "drop_path_rate")


def stale_patterns(folder):
    """Name patterns of what killed writes of ``folder`` leave beside it (staging and replaced folders)."""
    name = os.path.basename(os.path.normpath(folder))
    return [f".{name}.partial-*", f".{name}.old-*"]


def model_kind(model):
    """``"t2t_vit"`` or ``"vit"`` (the ViT baseline): which KerasHub classes (``HUB_CLASSES``) hold ``model``;
    a ValueError for a model of no other package."""
    if isinstance(model, TokenImageClassifier):
        model = model.backbone
    if isinstance(model, (ViT, ViTBackbone)):
        return "vit"
    if isinstance(model, T2TViTBackbone) or getattr(model, "t2t_type", None) is not None:
        return "t2t_vit"
    raise ValueError(
        f"{type(model).__name__} is not a model of keras_t2t; presets hold its T2T-ViT and ViT models (a "
        "keras_t2t.T2TViT, T2TViTDense or ViT, or their KerasHub classes)."
    )


def architecture(model):
    """The KerasHub backbone's keywords of any model of the package (classic or KerasHub)."""
    kind = model_kind(model)
    if isinstance(model, TokenImageClassifier):
        model = model.backbone
    if isinstance(model, (T2TViTBackbone, ViTBackbone)):
        config = model.get_config()
        for key in ("name", "trainable", "dtype"):
            config.pop(key, None)
        return config
    config = model.get_config()
    if kind == "vit":
        return dict({key: config[key] for key in VIT_KEYS}, image_shape=list(config["input_shape"]))
    arch = {key: config[key] for key in (
        "t2t_type", "token_dim", "t2t_stages", "embed_dim", "num_heads", "mlp_ratio", "qkv_bias", "qk_scale",
        "drop_rate", "attn_drop_rate", "drop_path_rate", "t2t_dropout")}
    arch["image_shape"] = list(config["input_shape"])
    if "dense_stages" in config:
        arch.update(block_type="dense", dense_stages=list(config["dense_stages"]), growth_rate=config["growth_rate"])
    else:
        arch.update(block_type=config.get("block_type", "standard"), depth=config["depth"])
    return arch


def make_preprocessor(preprocessing, kind="t2t_vit"):
    """A ``T2TViTImageClassifierPreprocessor`` (``kind="vit"``: a ``ViTImageClassifierPreprocessor``) for
    ``(image_size, crop_pct[, mean, std[, interpolation]])``, or None."""
    if preprocessing is None:
        return None
    try:
        size, crop_pct, *rest = preprocessing
        if len(rest) not in (0, 2, 3):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"preprocessing must be (image_size, crop_pct[, mean, std[, interpolation]]); got "
                         f"{preprocessing!r}.") from None
    mean, std, interpolation = (*rest, *(IMAGENET_MEAN, IMAGENET_STD, "bicubic")[len(rest):])
    _, _, preprocessor_class, converter_class = HUB_CLASSES[kind]
    converter = converter_class(image_size=size, crop_pct=crop_pct, mean=mean, std=std, interpolation=interpolation)
    return preprocessor_class(image_converter=converter)


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


def _check_savable(model):
    """The refusals ``save_preset`` makes before anything is written."""
    architecture(model)
    if isinstance(model, (T2TViTBackbone, ViTBackbone, TokenImageClassifier)):
        return
    if not model.include_top:
        raise ValueError(f"{model.name} has no head (include_top=False); a classifier preset needs one.")
    if model.pooling not in ("token", "avg"):
        raise ValueError(f"{model.name} pools with {model.pooling!r}; a classifier preset pools 'token' or 'avg'.")


def _write_classic(model, folder, preprocessor):
    """A classic ``keras_t2t.T2TViT`` (``ViT``) written as the ``T2TViTImageClassifier`` (``ViTImageClassifier``)
    it equals, no second model built.

    The backbone's layers are the classic model's up to its final norm, in the same
    order, so Keras writes ``model.weights.h5`` from the classic model with its top
    skipped exactly as it writes it from a ``T2TViTBackbone`` (and ``task.weights.h5``
    from the top alone); tests/hub/test_presets.py loads both through KerasHub.
    """
    backbone_layers, top = _split_layers(model)
    dtype = keras.dtype_policies.serialize(model.dtype_policy)
    backbone_class, task_class, _, _ = HUB_CLASSES[model_kind(model)]
    backbone = _serialized(backbone_class, dict(name=f"{model.name}_backbone", trainable=True, dtype=dtype,
                                                **architecture(model)))
    task = _serialized(task_class, dict(
        backbone=backbone, preprocessor=None if preprocessor is None else keras.saving.serialize_keras_object(
            preprocessor), name=model.name, num_classes=model.classes, pooling=model.pooling, activation=None,
        dropout=0.0, token_labeling_head=bool(getattr(model, "token_labeling_head", False))))
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
    """Writes ``model`` (any T2T-ViT of the package) as a KerasHub preset folder, atomically.

    A ``T2TViTImageClassifier`` or ``T2TViTBackbone`` is saved by KerasHub (a
    classifier with its preprocessor, unless ``preprocessing`` replaces it); a classic
    ``keras_t2t.T2TViT`` as the ``T2TViTImageClassifier`` it equals (same variables;
    the task returns logits). ``preprocessing``: ``(image_size, crop_pct[, mean, std])``
    of the evaluation transform; ``metadata``: entries added to ``metadata.json`` (with
    the SHA-256 of the ``checked`` files, as ``files_sha256``). The folder appears whole
    or not at all, and replaces only an earlier preset: a file, or a folder holding
    anything else, is refused before anything is written. Returns its absolute path.
    """
    _check_savable(model)
    preprocessor = make_preprocessor(preprocessing, model_kind(model))
    folder = os.path.abspath(os.fspath(folder))
    if os.path.isfile(folder):
        raise ValueError(f"save_preset: {folder!r} is a file; a preset is a folder. Give a new folder's path.")
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"save_preset: {folder!r} holds files and is not a preset (it has no config.json); it is "
                         "not replaced. Give a new folder's path, or an earlier preset's.")
    parent = os.path.dirname(folder)
    check_output_folder(parent, "save_preset: the preset's parent folder")
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, stale_patterns(folder))
    staging = atomic_temp_path(parent, os.path.basename(folder), is_directory=True)
    try:
        if isinstance(model, (T2TViTBackbone, ViTBackbone)):
            model.save_to_preset(staging)
        elif isinstance(model, TokenImageClassifier):
            kept = model.preprocessor
            model.preprocessor = preprocessor or kept
            try:
                model.save_to_preset(staging)
            finally:
                model.preprocessor = kept
        else:
            _write_classic(model, staging, preprocessor)
        data = read_json(staging, METADATA_FILE)
        data.update(metadata or {})
        if checked:
            data["files_sha256"] = {name: sha256_of(os.path.join(staging, name)) for name in checked
                                    if os.path.isfile(os.path.join(staging, name))}
        data.setdefault("date_saved", datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"))
        _write_json(staging, METADATA_FILE, data)
        install_atomic(staging, folder)
    finally:
        remove_path(staging)
    return folder


def read_json(folder, name):
    """A preset file's JSON object, or one ValueError naming the file."""
    path = os.path.join(folder, name)
    try:
        return read_json_object(path, "The preset file")
    except FileNotFoundError:
        raise ValueError(f"{path!r} is missing: {folder!r} is not a complete preset folder.") from None
    except ValueError as error:
        raise ValueError(f"{error}, not what a preset file holds.") from None


# {folder: the stat signature of its recorded files when this process last verified their SHA-256}: a load
# reads a folder several times (the cache check, its configs, the weights), and hashes it once.
_VERIFIED = {}


def _signature(folder, names):
    """What changes when any of the files is written, replaced or touched (ctime cannot be set back)."""
    found = []
    for name in sorted(names):
        try:
            st = os.stat(os.path.join(folder, name))
        except OSError:
            return None
        found.append((name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(found)


def recorded_problem(folder):
    """Why the files of ``folder`` differ from the SHA-256 its ``metadata.json`` recorded; None when they do not
    (or when it recorded none). A ValueError when ``metadata.json`` itself is unreadable. Files verified
    earlier in this process and untouched since are not hashed again."""
    recorded = read_json(folder, METADATA_FILE).get("files_sha256") or {}
    if not isinstance(recorded, dict):
        return "records its files' SHA-256 in a form this package does not write"
    names = {os.path.basename(str(name)) for name in recorded} | {METADATA_FILE}
    key = os.path.abspath(folder)
    signature = _signature(folder, names)
    if signature is not None and _VERIFIED.get(key) == signature:
        return None
    started = time.time_ns()
    for name, digest in recorded.items():
        path = os.path.join(folder, os.path.basename(str(name)))
        if not os.path.isfile(path) or sha256_of(path) != digest:
            _VERIFIED.pop(key, None)
            return f"does not match the SHA-256 of its {name} recorded when it was written"
    # Remembered only when the files were last changed well before the hashing began (as git's "racy
    # clean" rule): a file time stamped with a coarse clock could otherwise not move on a quick rewrite.
    if (signature is not None and signature == _signature(folder, names)
            and all(entry[4] < started - 2_000_000_000 for entry in signature)):
        _VERIFIED[key] = signature
    return None


def read_preset(folder):
    """``(backbone config, task config or None)`` of a preset folder of this package, after its recorded SHA-256
    checks (``_read_preset`` also gives the kind of model it holds).

    One ValueError naming the file for anything else: a missing or unreadable file, another
    model's preset, files changed since they were recorded.
    """
    return _read_preset(folder)[1:]


def _read_preset(folder):
    """``(kind, backbone config, task config or None)``: ``read_preset`` with the kind of model (``"t2t_vit"`` or
    ``"vit"``, a key of ``HUB_CLASSES``)."""
    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, METADATA_FILE)):
        problem = recorded_problem(folder)
        if problem:
            raise ValueError(f"The preset {folder!r} {problem}; not trusted.")
    config = read_json(folder, "config.json")
    if config.get("registered_name") not in BACKBONE_CLASSES or not isinstance(config.get("config"), dict):
        raise ValueError(
            f"{os.path.join(folder, 'config.json')!r} is a {config.get('class_name', 'file of unknown class')!r} "
            "preset, not a keras_t2t T2TViTBackbone or ViTBackbone: this package reads its own presets only."
        )
    task = None
    if os.path.isfile(os.path.join(folder, "task.json")):
        task = read_json(folder, "task.json").get("config")
        if not isinstance(task, dict) or "num_classes" not in task:
            raise ValueError(f"{os.path.join(folder, 'task.json')!r} holds no classifier head (num_classes).")
    return BACKBONE_CLASSES[config["registered_name"]], config["config"], task


def preset_head(folder):
    """(classes, token_labeling) of a preset folder's head; (None, False) for a backbone-only preset."""
    _, task = read_preset(folder)
    if task is None:
        return None, False
    return int(task["num_classes"]), bool(task.get("token_labeling_head", False))


def preset_image_shape(folder):
    """The ``(height, width, channels)`` a preset folder's backbone was saved at."""
    return tuple(read_preset(folder)[0]["image_shape"])


def load_classic(folder, **kwargs):
    """A classic ``keras_t2t.T2TViT`` (``T2TViTDense``, ``ViT``) of a preset folder's architecture and head,
    its weights loaded through Keras (one model built). ``kwargs`` go to the class
    (``classifier_activation``, ``dtype``, ...)."""
    kind, arch, task = _read_preset(folder)
    if task is None:
        raise ValueError(
            f"The preset {folder!r} holds a backbone only (no task.json): no classifier to build from it. Build "
            "a model by name and load it into that, e.g. keras_t2t.t2t_vit_14(weights=FOLDER, classes=N)."
        )
    try:
        config = {key: value for key, value in arch.items() if key not in (
            "trainable", "dtype", "growth_rate", "dense_stages", "block_type", "depth")}
        config["input_shape"] = config.pop("image_shape")
        config["name"] = str(config.get("name", "t2t_vit")).removesuffix("_backbone")
        if kind == "vit":
            model_class = ViT
            config.update(depth=arch["depth"])
        elif arch.get("block_type") == "dense":
            model_class = T2TViTDense
            config.update(dense_stages=arch["dense_stages"], growth_rate=arch["growth_rate"])
        else:
            model_class = T2TViT
            config.update(depth=arch["depth"], block_type=arch.get("block_type", "standard"))
        if task.get("token_labeling_head"):
            config["token_labeling_head"] = True
        config.update(kwargs)
        model = model_class(classes=int(task["num_classes"]), pooling=task.get("pooling", "token"), **config)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{os.path.join(folder, 'config.json')!r} does not describe a model of this package "
                         f"({error!r}).") from None
    model.weights_report = load_into_classic(model, folder)
    return model


def load_into_classic(model, folder):
    """Loads a preset folder into a classic ``keras_t2t.T2TViT`` (``ViT``) of its architecture, through Keras.

    Returns a ``WeightLoadReport``-like dict. The backbone's file loads as saved when the
    image size is the preset's; the head when the model has one of the preset's classes
    (else it keeps its fresh head, and the report says so; a backbone-only preset leaves
    it fresh too). A model of another image size gets the preset's weights with the
    position table resized, which builds the preset's own model once to read them. A
    file that cannot be read leaves the model as it was.
    """
    folder = os.fspath(folder)
    kind, saved, task = _read_preset(folder)
    if model_kind(model) != kind:
        raise ValueError(f"The preset {folder} holds a {'ViT' if kind == 'vit' else 'T2T-ViT'}; "
                         f"{model.name} is a {type(model).__name__}.")
    arch = architecture(model)
    differs = [key for key, value in arch.items() if key not in TRAINING_KEYS + ("image_shape",)
               and json.loads(json.dumps(value)) != saved.get(key)]
    if differs:
        raise ValueError(f"The preset {folder} is another architecture ({', '.join(differs)} differ) than {model.name}.")
    if os.path.isfile(os.path.join(folder, METADATA_FILE)):
        _check_parameter_count(model, folder, saved["image_shape"])
    other_size = list(arch["image_shape"][:2]) != list(saved["image_shape"][:2])
    if other_size and task is not None and kind == "t2t_vit":
        source = T2TViTImageClassifier.load_preset_folder(folder)
        return load_state_dict(model, model_state_dict(source))
    backbone_layers, top = _split_layers(model)
    report = {"loaded": len(model.weights), "head_dropped": None, "aux_head_dropped": None,
              "pos_embed_resized": None, "skipped": None, "preset": folder}
    same_head = (task is not None and model.include_top and model.classes == task["num_classes"]
                 and bool(getattr(model, "token_labeling_head", False)) == bool(task.get("token_labeling_head")))
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            name = "model.weights.h5"
            if other_size and kind == "vit":
                # Keras' file read by the package's checked loader, which resizes the position table to the
                # model's grid (the file has no head: the report's head line is set below).
                resized = load_keras_weights(model, os.path.join(folder, name), about=model.name)
                report["pos_embed_resized"] = resized["pos_embed_resized"]
            else:
                keras.saving.load_weights(model, os.path.join(folder, name), objects_to_skip=top)
            if same_head:
                name = "task.weights.h5"
                keras.saving.load_weights(model, os.path.join(folder, name), objects_to_skip=backbone_layers)
    except Exception as error:  # noqa: BLE001 - any failure of Keras' reader is a bad file here
        for variable, value in zip(model.weights, before):
            variable.assign(value)
        raise ValueError(f"{os.path.join(folder, name)!r} cannot be read into {model.name} ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:300]}); the model is left as it was.") from None
    if not same_head:
        report["loaded"] -= sum(len(layer.weights) for layer in top)
        if task is None:
            report["head_dropped"] = "the preset holds a backbone only; the head keeps its fresh initialisation"
        elif model.include_top:
            report["head_dropped"] = (f"the preset has {task['num_classes']} classes, the model {model.classes}; the "
                                      "new head keeps its fresh initialisation")
        else:
            report["head_dropped"] = "the model has no head"
    return report


def _check_parameter_count(model, folder, saved_shape):
    """A ValueError when the backbone's weights file holds another count of weights than the model's backbone
    (config.json edited, or another model's files): Keras' loader would ignore what is beyond the model."""
    recorded = read_json(folder, METADATA_FILE).get("parameter_count")
    if not isinstance(recorded, int) or list(model.input_shape[1:3]) != list(saved_shape[:2]):
        return  # nothing recorded, or another size: the mapping then checks every tensor
    backbone_layers, _ = _split_layers(model)
    count = sum(int(np.prod(v.shape)) for layer in backbone_layers for v in layer.weights)
    if recorded != count:
        raise ValueError(
            f"The preset {folder!r} holds {recorded:,} backbone weights, and {model.name} built from its config.json "
            f"has {count:,}: its weights are another model's (config.json changed?). Not loaded."
        )
