"""The training input: folder/digits/TFDS sources, their checks, and the tf.data transforms.

tf.data runs on every backend, so these run in every session. Nothing downloads.
"""

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from keras_t2t.data.digits import write_digits_folder  # noqa: E402
from keras_t2t.data.images import eval_transform  # noqa: E402
from keras_t2t.training import DIGITS, PAPER, resolve_data, train_dataset, val_dataset  # noqa: E402
from keras_t2t.training import augment  # noqa: E402

SMALL = dataclasses.replace(DIGITS, train_limit=64, val_limit=40)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return write_digits_folder(str(tmp_path_factory.mktemp("data") / "digits"))


def _folder(root, counts, size=(20, 24), fmt="PNG"):
    """root/{split}/{class}/i.png from {split: {class: n}}."""
    rng = np.random.default_rng(0)
    for split, classes in counts.items():
        for name, n in classes.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
                ext = "jpg" if fmt == "JPEG" else fmt.lower()
                Image.fromarray(pixels).save(os.path.join(root, split, name, f"{i}.{ext}"), fmt)
    return str(root)


def test_digits_are_written_once_as_an_imagenet_style_folder(digits_dir):
    assert sorted(os.listdir(os.path.join(digits_dir, "train"))) == [str(d) for d in range(10)]
    marker = os.path.join(digits_dir, ".complete")
    first = os.path.getmtime(marker)
    assert write_digits_folder(digits_dir) == digits_dir
    assert os.path.getmtime(marker) == first
    source = resolve_data(dataclasses.replace(DIGITS, data_dir=digits_dir))
    assert source.kind == "folder" and source.num_classes == 10
    assert source.num_train + source.num_val == 1797  # scikit-learn's digits, 80/20 per class
    assert abs(source.num_val - 0.2 * 1797) < 10


def test_train_batches_are_normalised_with_smoothed_one_hot_labels(digits_dir):
    recipe = dataclasses.replace(SMALL, data_dir=digits_dir, label_smoothing=0.1).resolved()
    source = resolve_data(recipe)
    images, labels = next(iter(train_dataset(source, recipe, batch_size=16)))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
    # digits are black (0) on white strokes: (0 / 255 - mean) / std on the background
    assert float(tf.reduce_min(images[..., 0])) == pytest.approx(-0.485 / 0.229, abs=1e-4)
    labels = labels.numpy()
    assert labels.shape == (16, 10)
    np.testing.assert_allclose(labels.sum(1), 1.0, rtol=1e-6)
    # 1 - 0.1 + 0.1 / 10 on the true class, 0.1 / 10 elsewhere
    np.testing.assert_allclose(sorted(set(np.round(labels.ravel(), 4).tolist())), [0.01, 0.91], rtol=1e-5)


def test_validation_is_padded_with_weightless_images(digits_dir):
    recipe = dataclasses.replace(SMALL, data_dir=digits_dir).resolved()
    source = resolve_data(recipe)
    batches = list(val_dataset(source, recipe, batch_size=16))
    assert [b[0].shape[0] for b in batches] == [16, 16, 16]  # 40 images -> 48 rows
    weights = np.concatenate([b[2].numpy() for b in batches])
    assert weights.sum() == 40 and (weights[40:] == 0).all()


def test_the_full_paper_augmentation_runs_on_a_batch(digits_dir):
    # keras-cv RandAugment, flip, RandomResizedCrop, erasing, Mixup/CutMix: shapes and label mass.
    pytest.importorskip("keras_cv")
    recipe = dataclasses.replace(PAPER, dataset="digits", data_dir=digits_dir, image_size=32, train_limit=32,
                                 val_limit=8).resolved()
    source = resolve_data(recipe)
    images, labels = next(iter(train_dataset(source, recipe, batch_size=8)))
    assert images.shape == (8, 32, 32, 3)
    assert np.isfinite(images.numpy()).all()
    np.testing.assert_allclose(labels.numpy().sum(1), 1.0, rtol=1e-5)


def test_mixup_mixes_each_image_with_its_mirror():
    images = tf.constant(np.arange(2 * 2 * 2 * 1, dtype="float32").reshape(2, 2, 2, 1))
    labels = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    mixed, targets = augment.mix_batch(images, labels, 0.7, use_cutmix=False)
    np.testing.assert_allclose(mixed[0], 0.7 * images[0] + 0.3 * images[1], rtol=1e-6)
    np.testing.assert_allclose(targets, [[0.7, 0.3], [0.3, 0.7]], rtol=1e-6)


def test_cutmix_weight_is_the_pasted_area():
    tf.random.set_seed(3)
    images = tf.zeros([2, 10, 10, 1]) + tf.constant([0.0, 1.0])[:, None, None, None]
    labels = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    box, lam = augment.cutmix_box(10, 10, tf.constant(0.75))
    mixed, targets = augment.mix_batch(images, labels, lam, use_cutmix=True, box=box)
    pasted = float(tf.reduce_sum(mixed[0]))  # image 0 is 0 outside the box, 1 (image 1) inside
    assert float(lam) == pytest.approx(1 - pasted / 100)
    np.testing.assert_allclose(targets[0], [float(lam), 1 - float(lam)], rtol=1e-6)


def test_random_erasing_boxes_are_within_the_area_range():
    tf.random.set_seed(0)
    images = tf.fill([64, 20, 20, 3], 100.0)
    erased = augment.random_erasing(images, probability=1.0).numpy()
    changed = (erased != 100.0).any(-1).sum((1, 2))
    assert (changed > 0).mean() > 0.9  # nearly every image gets a box
    assert changed.max() <= 400 / 3 + 20 and changed[changed > 0].min() >= 0.02 * 400 - 4
    assert (augment.random_erasing(images, probability=0.0).numpy() == 100.0).all()


def test_random_resized_crop_decodes_jpeg_and_png_bytes(tmp_path):
    root = _folder(tmp_path / "jpg", {"train": {"a": 1}}, size=(50, 70), fmt="JPEG")
    png = _folder(tmp_path / "png", {"train": {"a": 1}}, size=(50, 70), fmt="PNG")
    for folder, ext in ((root, "jpg"), (png, "png")):
        data = tf.io.read_file(os.path.join(folder, "train", "a", f"0.{ext}"))
        out = augment.random_resized_crop(data, 24)
        assert out.shape == (24, 24, 3)
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0


def test_eval_transform_in_tf_matches_the_pil_one():
    rng = np.random.default_rng(1)
    smooth = rng.uniform(0, 255, (6, 8, 3))
    pixels = np.asarray(Image.fromarray(smooth.astype("uint8")).resize((70, 50), Image.BILINEAR))
    ours = augment.normalize(augment.eval_resize_crop(tf.constant(pixels), 32, 0.9)).numpy()
    reference = eval_transform(Image.fromarray(pixels), 32, 0.9)
    assert ours.shape == reference.shape == (32, 32, 3)
    # Same geometry; TF's and Pillow's bicubic kernels differ by a few grey levels.
    assert np.abs(ours - reference).mean() < 0.05


def test_missing_val_folder_is_an_error(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2, "b": 2}})
    with pytest.raises(ValueError, match="has no val/ sub-folder"):
        resolve_data(dataclasses.replace(PAPER, dataset="folder", data_dir=root))


def test_classes_that_differ_between_splits_are_an_error(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2, "b": 2, "c": 1}, "val": {"a": 1, "b": 1}})
    with pytest.raises(ValueError, match=r"different classes \(only in train: \['c'\]"):
        resolve_data(dataclasses.replace(PAPER, dataset="folder", data_dir=root))


def test_an_empty_class_folder_is_an_error(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    os.makedirs(os.path.join(root, "val", "c"))
    os.makedirs(os.path.join(root, "train", "c"))
    with pytest.raises(ValueError, match="holds no image file"):
        resolve_data(dataclasses.replace(PAPER, dataset="folder", data_dir=root))


def test_unbalanced_classes_are_reported(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 11, "b": 1}, "val": {"a": 1, "b": 1}}, size=(4, 4))
    with pytest.warns(UserWarning, match="unbalanced: 1 to 11 images"):
        resolve_data(dataclasses.replace(PAPER, dataset="folder", data_dir=root))


def test_unreadable_images_are_named_before_training(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    with open(os.path.join(root, "train", "a", "broken.jpg"), "w") as handle:
        handle.write("not an image")
    open(os.path.join(root, "val", "b", "empty.png"), "w").close()
    with pytest.raises(ValueError, match=r"2 of 8 image files cannot be used(.|\n)*broken.jpg: is not a JPEG"):
        resolve_data(dataclasses.replace(PAPER, dataset="folder", data_dir=root))


def _corrupt_jpeg_body(path, seed=0):
    """Keeps a JPEG's headers (up to its scan) and fills the compressed scan data with noise."""
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    data[start:-2] = np.random.default_rng(seed).integers(0, 256, len(data) - 2 - start, dtype=np.uint8).tobytes()
    with open(path, "wb") as handle:
        handle.write(bytes(data))


def test_truncated_images_are_found_before_any_work(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}}, fmt="JPEG")
    path = os.path.join(root, "train", "a", "0.jpg")
    with open(path, "rb") as handle:
        head = handle.read(200)
    with open(path, "wb") as handle:
        handle.write(head)
    with pytest.raises(ValueError, match="1 of 6 image files cannot be used:\n.*0.jpg: does not decode"):
        resolve_data(dataclasses.replace(PAPER, dataset="folder", data_dir=root))


def test_a_jpeg_with_a_corrupt_body_is_found_and_the_check_is_remembered(tmp_path):
    root = _folder(tmp_path / "d", {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}}, size=(32, 32), fmt="JPEG")
    recipe = dataclasses.replace(PAPER, dataset="folder", data_dir=root)
    assert resolve_data(recipe).num_train == 6  # every image decodes; the result is kept in the folder
    bad = os.path.join(root, "val", "b", "1.jpg")
    stat = os.stat(bad)
    _corrupt_jpeg_body(bad)
    # The premise: the headers are intact, TensorFlow's full decode fails (training crashed on it mid-epoch).
    assert tf.image.extract_jpeg_shape(tf.io.read_file(bad)).numpy().tolist() == [32, 32, 3]
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(tf.io.read_file(bad), channels=3, expand_animations=False)
    # Same size, same modification time: the remembered check stands (nothing is decoded again) ...
    os.utime(bad, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert resolve_data(recipe).num_val == 4
    # ... --verify-images decodes everything again, and a new modification time re-checks the folder.
    message = r"1 of 10 image files cannot be used:\n  .*val/b/1.jpg: does not decode \(jpeg::Uncompress failed"
    with pytest.raises(ValueError, match=message):
        resolve_data(recipe, verify_images=True)
    os.utime(bad, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=message + r"(.|\n)*--skip-bad-images"):
        resolve_data(recipe)
    source = resolve_data(recipe, skip_bad_images=True)
    assert (source.num_train, source.num_val) == (6, 3) and bad not in source.val_files[0]
    assert [p for p, _ in source.skipped] == [bad] and "1 bad images left out" in source.describe()


def test_unknown_dataset_is_an_error_with_suggestions():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match=r"Unknown dataset 'cifar_10'.*Did you mean: cifar10"):
        resolve_data(dataclasses.replace(PAPER, dataset="cifar_10"))


def test_a_tfds_dataset_goes_through_the_same_pipeline(tmp_path):
    # A tiny TFDS builder registered here and prepared locally (nothing downloads).
    tfds = pytest.importorskip("tensorflow_datasets")

    class T2tTinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(12, 12, 3)),
                    "label": tfds.features.ClassLabel(names=["dark", "light"]),
                }),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(24), "test": self._generate_examples(6)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((12, 12, 3), 40 + 170 * (i % 2), np.uint8), "label": i % 2}

    recipe = dataclasses.replace(PAPER, dataset="t2t_tiny_shapes", image_size=16, data_dir=str(tmp_path),
                                 randaugment_ops=0).resolved()
    source = resolve_data(recipe)
    assert source.kind == "tfds" and source.class_names == ["dark", "light"]
    assert (source.num_train, source.num_val, source.val_split) == (24, 6, "test")
    images, labels = next(iter(train_dataset(source, recipe, batch_size=8)))
    assert images.shape == (8, 16, 16, 3) and labels.shape == (8, 2)
    x, y, w = next(iter(val_dataset(source, recipe, batch_size=8)))
    assert x.shape == (8, 16, 16, 3) and float(tf.reduce_sum(w)) == 6
    # The eval transform keeps a flat image flat: "light" (210) and "dark" (40) after resize and crop.
    pixels = x.numpy()[:6, ..., 0] * 0.229 + 0.485
    expected = np.where(y.numpy()[:6, 1] == 1, 210, 40) / 255
    np.testing.assert_allclose(pixels, np.broadcast_to(expected[:, None, None], pixels.shape), atol=2e-3)
    assert tf.data.experimental.cardinality(source.examples("train")) == 24
