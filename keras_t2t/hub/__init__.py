"""T2T-ViT in KerasHub: the backbone, the classifier task, its preprocessing, and the presets.

Importing this registers the classes with Keras (``keras_t2t>T2TViTBackbone``, ...),
so KerasHub's own ``keras_hub.models.ImageClassifier.from_preset(folder)`` and
``keras_hub.models.Backbone.from_preset(folder)`` build them from a preset folder.
"""

from keras_t2t.hub.backbone import T2TViTBackbone
from keras_t2t.hub.classifier import (
    T2TViTImageClassifier,
    T2TViTImageClassifierPreprocessor,
    T2TViTImageConverter,
)

__all__ = ["T2TViTBackbone", "T2TViTImageClassifier", "T2TViTImageClassifierPreprocessor", "T2TViTImageConverter"]
