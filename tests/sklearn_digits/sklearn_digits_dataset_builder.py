"""``sklearn_digits``: scikit-learn's handwritten digits as a TFDS image-classification dataset.

The same 32x32 RGB digits and the same stratified split as the trainer's built-in
digits (``keras_t2t.data.digits``), prepared from memory: nothing is downloaded.
The builder lives in a package module, as TFDS's own catalogue and ``tfds new``
builders do; TFDS then looks for the module's files (``code_path``, its checksums),
the code a builder defined in ``__main__`` or a top-level test module never reaches.
"""

import tensorflow_datasets as tfds

from keras_t2t.data.digits import load_digits_images

IMAGE_SIZE = 32


class Builder(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 1,797 digits: 1,438 training and 359 validation images, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                "label": tfds.features.ClassLabel(names=[str(digit) for digit in range(10)]),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        train, validation = load_digits_images(image_size=IMAGE_SIZE)
        return {"train": self._generate_examples(*train), "validation": self._generate_examples(*validation)}

    def _generate_examples(self, images, labels):
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image.round().astype("uint8"), "label": int(label)}
