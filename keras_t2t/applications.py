"""The public builders: ``create_model``, ``from_checkpoint`` and one builder per registry name.

Every name of the registry (``keras_t2t.models.presets``) gets one builder with the
``keras.applications`` keywords; ``keras_t2t.t2t_vit_14`` and the others are these
builders. Each is one call of the resolver (``keras_t2t.resolve.resolve_model``), the
road every command takes too; the construction under it is ``keras_t2t.builders``.
"""

import inspect
import os

from keras_t2t.builders import MODEL_CLASSES, build_model
from keras_t2t.models.presets import MODELS, get_preset
from keras_t2t.resolve import resolve_model


def create_model(model_name, **kwargs):
    """Builds any registered model by name, e.g. ``create_model("t2t_vit_14", classes=10)``."""
    get_preset(model_name)
    return resolve_model(model_name, **kwargs).model


def _make_builder(model_name):
    preset = MODELS[model_name]

    def builder(**kwargs):
        return resolve_model(model_name, **kwargs).model

    # help() and IDEs show build_model's keywords, less the name and the loader's internals.
    parameters = inspect.signature(build_model).parameters
    builder.__signature__ = inspect.Signature(
        [p for key, p in parameters.items() if key not in ("model_name", "checkpoint_entry", "verbose", "state_dict")]
    )
    model_class = MODEL_CLASSES[preset.family]
    files = "a '.keras' / '.weights.h5' file of this package" if preset.family == "vit" else (
        "an authors' checkpoint ('.pth.tar'), a '.keras' file or a '.weights.h5' file"
    )
    tags = "".join(f"{r.tag!r}, " for r in preset.releases)
    tags = f"a weights tag ({tags}fetched once, cached; see keras_t2t.list_weights()) " if tags else ""
    builder.__name__ = builder.__qualname__ = model_name
    builder.__doc__ = (
        f"``{model_name}``: {preset.describe()}; built at {preset.image_size}x{preset.image_size} unless "
        "input_shape says otherwise.\n\n"
        "Args: the keras.applications keywords (include_top, weights, input_shape, pooling, classes,\n"
        f"classifier_activation, name). ``weights`` is None, {tags}or a path to {files};\n"
        "weights that do not cover the model exactly are refused unless ``skip_mismatch=True``.\n"
        "``classes`` defaults to the class count of the weights' head, else 1000.\n"
        f"Other keywords (drop_path_rate, qk_scale, dtype, ...) go to ``keras_t2t.{model_class.__name__}``."
    )
    return builder


BUILDERS = {model_name: _make_builder(model_name) for model_name in MODELS}


def from_checkpoint(path, variant=None, which=None, state_dict=None, info=None, **kwargs):
    """A model built and loaded from any weights file, detecting the variant when not named.

    ``keras_t2t.from_checkpoint("81.5_T2T_ViT_14.pth.tar", classifier_activation=None)``.
    The class count is the checkpoint's head's unless ``classes`` says otherwise (then
    the head is fresh); a Token Labeling checkpoint keeps its ``aux_head`` with it
    (``token_labeling_head``, see ``keras_t2t.T2TViT``). ``kwargs`` are the builder
    keywords (input_shape, classes, include_top, verbose, ...) and overrides of the row
    (embed_dim, dense_stages, ...). A ``.keras`` file is rebuilt with them; a
    ``.weights.h5`` file needs ``variant``. See ``keras_t2t.builders.checkpoint_model``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist.")
    if path.endswith(".h5"):
        if variant is None:
            raise ValueError("A '.weights.h5' file does not record its variant; pass variant=NAME.")
        return create_model(variant, weights=path, **kwargs)
    extra = {key: value for key, value in dict(variant=variant, which=which, state_dict=state_dict,
                                                info=info).items() if value is not None}
    return resolve_model(path, rebuild=True, **extra, **kwargs).model


__all__ = ["BUILDERS", "create_model", "from_checkpoint"]
