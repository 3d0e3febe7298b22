"""T2T-ViT (and the ViT baseline) in KerasHub: backbones, classifier tasks, their preprocessing, presets.

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
from keras_t2t.hub.vit import ViTBackbone, ViTImageClassifier, ViTImageClassifierPreprocessor, ViTImageConverter

__all__ = ["T2TViTBackbone", "T2TViTImageClassifier", "T2TViTImageClassifierPreprocessor", "T2TViTImageConverter",
           "ViTBackbone", "ViTImageClassifier", "ViTImageClassifierPreprocessor", "ViTImageConverter"]
