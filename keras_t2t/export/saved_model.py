"""The SavedModel: written first, since the TFLite converters read it, and run with ``tf.saved_model.load``."""

import keras

from keras_t2t.data.images import IMAGENET_MEAN, IMAGENET_STD
from keras_t2t.export.serving import INPUT_NAME, SIGNATURE, UINT8_SIGNATURE, normalize_pixels
from keras_t2t.layers import export_tracing


def write_saved_model(classifier, path, uint8_signature=True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Writes ``classifier`` (from ``classifier_for_export``) as a SavedModel folder at ``path``.

    Signatures: ``serving_default`` (float images normalised as the model
    expects: by default ``keras_t2t.preprocess_input``) and, with
    ``uint8_signature``, ``serving_uint8`` (uint8 RGB pixels, normalised inside
    with ``mean`` and ``std`` of 0..1 pixels, ImageNet's by default). Any batch size.
    """
    import tensorflow as tf

    shape = (None,) + tuple(classifier.inputs[0].shape[1:])
    # No archive.track(classifier): the endpoints track the variables they use, and tracking the
    # model as well would store every variable twice (Keras 3.15).
    archive = keras.export.ExportArchive()

    def serve(images):
        return classifier(images, training=False)

    def serve_uint8(images):
        return classifier(normalize_pixels(images, mean, std), training=False)

    with export_tracing(classifier):
        archive.add_endpoint(SIGNATURE, serve, input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)])
        if uint8_signature:
            archive.add_endpoint(
                UINT8_SIGNATURE, serve_uint8, input_signature=[tf.TensorSpec(shape, tf.uint8, name=INPUT_NAME)]
            )
        archive.write_out(path, verbose=False)


def saved_model_runner(path, signature=SIGNATURE):
    """``run(images) -> logits`` (NumPy) through one signature of the SavedModel at ``path``."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    function = loaded.signatures[signature]

    def run(images):
        return function(**{INPUT_NAME: tf.constant(images)})["logits"].numpy()

    run.keep_alive = loaded
    return run


def saved_model_uint8_runner(path):
    """``run(uint8 pixels) -> logits`` through the ``serving_uint8`` signature."""
    return saved_model_runner(path, UINT8_SIGNATURE)
