"""One road from a handle to a model and the preprocessing it was evaluated with.

``resolve_model(handle, weights=None)`` takes any of:

- a release preset name (``t2t_vit_14_imagenet``; ``keras_t2t.list_presets()``),
- a preset folder (KerasHub's files: ``config.json``, ``task.json``, ...),
- a ``.keras`` file (a training run's ``model.keras`` included),
- an authors' checkpoint (``.pth``/``.pth.tar``; the variant is detected),
- a registry name (``t2t_vit_14``) with ``weights``: a tag (``imagenet``), a
  checkpoint, or a ``.weights.h5`` file,

and returns a ``Resolved``: the model (class scores, fed normalised images), its
``Preprocessing`` and a line saying where both came from. The preprocessing is
the preset's, the training run's (``recipe.json`` beside a ``model.keras``), or
the authors' evaluation transform of a release; flags given by the user win
(``with_overrides``), and ``describe()`` says which was used.
"""

import dataclasses
import difflib
import json
import os

from keras_t2t.builders import build_model, checkpoint_model
from keras_t2t.data.images import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, as_hw
from keras_t2t.evaluation import model_input_hw
from keras_t2t.hub import preset_files, presets
from keras_t2t.models.presets import MODELS, unknown_model_error
from keras_t2t.weights.detect import detect_variant
from keras_t2t.weights.loading import (
    CHECKPOINT_SUFFIXES,
    is_checkpoint_path,
    load_any_weights,
    read_keras_file,
    read_state_dict,
)
from keras_t2t.weights.pretrained import is_weights_tag, preset_cache_folder, release_for


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images are fed: the evaluation transform's size and crop, the normalisation, and its source."""

    image_size: tuple
    crop_pct: float = DEFAULT_CROP_PCT
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    source: str = "the default"

    def with_overrides(self, image_size=None, crop_pct=None):
        """This preprocessing with the user's flags in place of its values (the source says so)."""
        flags = [f"--image-size {image_size}"] if image_size is not None else []
        flags += [f"--crop-pct {crop_pct:g}"] if crop_pct is not None else []
        if not flags:
            return self
        return dataclasses.replace(
            self,
            image_size=as_hw(image_size) if image_size is not None else self.image_size,
            crop_pct=crop_pct if crop_pct is not None else self.crop_pct,
            source=f"{' and '.join(flags)}, the rest from {self.source}",
        )

    def describe(self):
        norm = "ImageNet mean/std" if (tuple(self.mean), tuple(self.std)) == (IMAGENET_MEAN, IMAGENET_STD) else (
            f"mean {list(self.mean)}, std {list(self.std)}")
        return (f"preprocessing: {self.image_size[0]}x{self.image_size[1]}, crop_pct {self.crop_pct:g}, {norm} "
                f"(from {self.source})")


@dataclasses.dataclass
class Resolved:
    """A model, its ``Preprocessing`` and where both came from (also ``model.resolved_from``: every model
    the package hands out, through a builder or a command, was made here)."""

    model: object
    preprocessing: Preprocessing
    description: str

    def __post_init__(self):
        self.model.resolved_from = self.description


def is_preset_folder(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def preset_folder_preprocessing(folder):
    """The ``Preprocessing`` a preset folder's ``preprocessor.json`` holds, or None without one."""
    try:
        with open(os.path.join(folder, "preprocessor.json"), encoding="utf-8") as handle:
            converter = json.load(handle)["config"]["image_converter"]["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Preprocessing(as_hw(tuple(converter["image_size"])), float(converter.get("crop_pct", 1.0)),
                         tuple(converter.get("mean", IMAGENET_MEAN)), tuple(converter.get("std", IMAGENET_STD)),
                         f"the preset {folder}")


def run_preprocessing(model_path):
    """The evaluation preprocessing of the training run a ``model.keras`` belongs to, or None.

    The trainer writes ``recipe.json`` (image size, ``eval_crop_pct``) and a ``preset/``
    folder beside ``model.keras``; either says how the run evaluated its model.
    """
    folder = os.path.dirname(os.path.abspath(model_path))
    found = preset_folder_preprocessing(os.path.join(folder, "preset"))
    if found is not None:
        return dataclasses.replace(found, source=f"the training run's preset ({os.path.join(folder, 'preset')})")
    try:
        with open(os.path.join(folder, "recipe.json"), encoding="utf-8") as handle:
            recipe = json.load(handle)
        return Preprocessing(as_hw(recipe["image_size"]), float(recipe.get("eval_crop_pct", DEFAULT_CROP_PCT)),
                             source=f"the training run's recipe ({os.path.join(folder, 'recipe.json')})")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _input_hw(model):
    return model_input_hw(model) or (224, 224)


def _default(model, what):
    return Preprocessing(_input_hw(model), source=f"the defaults for {what}: the model's input size, crop_pct 0.9")


def _class_keywords(build_kwargs):
    """The builder keywords a preset folder's model takes (its architecture and head are the folder's)."""
    allowed = ("classifier_activation", "dtype", "drop_path_rate", "drop_rate", "attn_drop_rate", "t2t_dropout")
    unknown = [key for key in build_kwargs if key not in allowed and key != "verbose"]
    if unknown:
        raise ValueError(f"A preset folder fixes the architecture and head; {', '.join(unknown)} cannot be changed "
                         f"on load (accepted: {', '.join(allowed)}).")
    return {key: value for key, value in build_kwargs.items() if key in allowed}


def resolve_model(handle, weights=None, rebuild=False, **build_kwargs):
    """Any model handle (see the module) -> ``Resolved(model, preprocessing, description)``.

    ``build_kwargs`` go to the builder for registry names and checkpoints
    (``classifier_activation=None``, ``input_shape``, ...); a ``.keras`` file given
    such keywords (or ``rebuild=True``) is rebuilt with them from its weights, as
    ``keras_t2t.from_checkpoint`` does, instead of loaded as saved.
    """
    handle = os.fspath(handle)
    if handle in MODELS:  # a name is the registry's, even beside a folder of that name (write ./name for it)
        return _from_registry(handle, weights, build_kwargs)
    if weights is not None and (presets.is_preset_name(handle) or os.path.exists(handle)):
        raise ValueError(f"weights={os.fspath(weights)!r} goes with a registry name (keras_t2t.list_models()); "
                         f"{handle!r} brings its own weights.")
    if weights is None and presets.is_preset_name(handle):
        row = presets.preset_release(handle)
        return resolve_model(row.model, weights=row.tag, **build_kwargs)
    if weights is None and is_preset_folder(handle):
        folder = os.path.abspath(handle)
        model = preset_files.load_classic(folder, **_class_keywords(build_kwargs))
        return Resolved(model, preset_folder_preprocessing(folder) or _default(model, "a preset without one"),
                        folder)
    rebuild = rebuild or any(key != "verbose" for key in build_kwargs)
    if weights is None and handle.endswith(".keras") and not rebuild:
        model = read_keras_file(handle)
        found = run_preprocessing(handle)
        return Resolved(model, found or _default(model, "a .keras file outside a training run"),
                        os.path.abspath(handle))
    if weights is None and (is_checkpoint_path(handle) or handle.endswith(".keras")) and os.path.isfile(handle):
        model = checkpoint_model(handle, **build_kwargs)
        found = run_preprocessing(handle) if handle.endswith(".keras") else None
        return Resolved(model, found or _default(model, "an authors' checkpoint"), os.path.abspath(handle))
    if not os.path.exists(handle) and (os.sep in handle or handle.endswith((".keras", ".h5", *CHECKPOINT_SUFFIXES))):
        raise FileNotFoundError(f"{handle!r}: no such file or folder.")
    if os.path.exists(handle):
        raise ValueError(
            f"{handle!r} is not a model this package reads: accepted are a preset folder, a '.keras' file, "
            "an authors' checkpoint ('.pth', '.pth.tar'), or a registry name with weights."
        )
    raise unknown_model_error(handle, list(MODELS) + presets.list_presets())


def _from_registry(handle, weights, build_kwargs):
    """A registry name (with weights: a tag, a preset folder or a file) -> ``Resolved``."""
    model = build_model(handle, weights=weights, **build_kwargs)
    if weights is not None and is_weights_tag(weights):
        row = release_for(handle, weights)
        _, crop_pct, mean, std, _ = presets.release_preprocessing(row)
        preprocessing = Preprocessing(_input_hw(model), crop_pct, tuple(mean), tuple(std),
                                      source=f"the authors' evaluation of {handle}:{row.tag}")
        folder = preset_cache_folder(handle, row.tag)
        return Resolved(model, preprocessing, f"{handle} with its {row.tag!r} weights (the preset "
                                              f"{handle}_{row.tag}, {folder})")
    source = os.path.abspath(weights) if weights is not None else "random weights"
    found = preset_folder_preprocessing(weights) if weights is not None and is_preset_folder(weights) else None
    if found is not None:
        found = dataclasses.replace(found, image_size=_input_hw(model))
    return Resolved(model, found or _default(model, handle), f"{handle} ({source})")


def registry_name(handle):
    """The registry name of the model ``handle`` holds: itself, a release preset's model, the model a
    preset folder or a ``.keras`` file was saved from (its name), or an authors' checkpoint's variant.

    ``train.py --model HANDLE`` trains that model starting from those weights.
    """
    handle = os.fspath(handle)
    if handle in MODELS:
        return handle
    if presets.is_preset_name(handle):
        return presets.preset_release(handle).model
    name = None
    if is_preset_folder(handle):
        name = (preset_files.read_json(handle, "metadata.json").get("model")
                if os.path.isfile(os.path.join(handle, "metadata.json")) else None)
        name = name or preset_files.read_json(handle, "config.json").get("config", {}).get("name", "")
        name = name[: -len("_backbone")] if name.endswith("_backbone") else name
    elif handle.endswith(".keras") and os.path.isfile(handle):
        name = getattr(read_keras_file(handle), "name", None)
    elif is_checkpoint_path(handle) and os.path.isfile(handle):
        name = detect_variant(read_state_dict(handle)[0])[0]
    elif not os.path.exists(handle):
        raise unknown_model_error(handle, list(MODELS) + presets.list_presets())
    if name not in MODELS:
        raise ValueError(f"{handle!r} holds a model named {name!r}, which is no registry name; give --model NAME "
                         f"(keras_t2t.list_models()) and the file as --weights.")
    return name


def check_weights_handle(weights, model_name=None):
    """A one-line ValueError unless ``weights`` is something ``load_weights_into`` takes for ``model_name``."""
    handle = os.fspath(weights)
    if os.path.exists(handle) or presets.is_preset_name(handle):
        return
    if model_name is not None and is_weights_tag(handle):
        release_for(model_name, handle)  # or the error naming the model's tags
        return
    close = difflib.get_close_matches(handle, presets.list_presets(), n=1)
    raise ValueError(
        f"weights {handle!r} is not an existing file or folder, a release preset name (keras_t2t.list_presets()) "
        f"or a weights tag{f' of {model_name}' if model_name else ''} (imagenet, ...)"
        + (f" (did you mean {close[0]!r}?)." if close else ".")
    )


def load_weights_into(model, weights, model_name=None, skip_mismatch=False):
    """Loads any weights handle into ``model`` (fine-tuning: another head or image size is adapted).

    ``weights``: a tag of ``model_name`` (``"imagenet"``), a release preset name, a preset
    folder, or a file (an authors' checkpoint, a ``.keras`` or ``.weights.h5`` file).
    Returns the load's report.
    """
    handle = os.fspath(weights)
    if model_name is not None and is_weights_tag(handle) and not os.path.exists(handle):
        handle = f"{model_name}_{release_for(model_name, handle).tag}"
    if presets.is_preset_name(handle) and not os.path.exists(handle):
        handle = presets.preset_folder(handle)
    elif not os.path.exists(handle) and os.sep not in handle and "." not in handle:
        presets.preset_release(handle)  # not a file: a misspelled preset name, refused naming the closest
    if is_preset_folder(handle):
        return preset_files.load_into_classic(model, handle)
    return load_any_weights(model, handle, skip_mismatch=skip_mismatch)
