"""Docs that run (issue 22): every code block of README.md, docs/*.md and tflite/README.md.

Each fenced block names its language: ``python`` and ``bash`` blocks are run, ``text`` blocks
(output, diagrams, tables of output) never are. A block that cannot run here says so, with the
reason, as its first line:

    # docs-test: not run (<reason>)

Those are counted and listed in the terminal summary (``tests/docs/conftest.py``). Every other
block runs in a fresh process (``python -c``, ``bash -euo pipefail -c``), offline, in a scratch
folder laid out as a user's checkout after the README's steps: ``training/``, ``tflite/``,
``experiments/`` and ``benchmarks/`` linked from the repository; ``runs/digits``, the trained
digits model of ``tests/export/fixtures`` with the files the trainer writes beside it; a ``pets/``
folder, a tiny ``imagenet/val``, calibration images and the pictures the blocks open; every
authors' checkpoint a block names (random weights in the authors' layout). The released weights
come from a loopback mirror (``KERAS_T2T_WEIGHTS_URL``) that serves such a file for every release,
into a ``KERAS_HOME`` of the scratch. The blocks of one page run in order in one folder: a later
block may use what an earlier one wrote.

While a page's blocks run no tracked file of the repository may change, and whatever they write
in the checkout must be covered by ``.gitignore``.

Time budget: the pages run on the TensorFlow backend (the commands are the same on every backend,
and export runs on TensorFlow anyway). The README's quick start and the KerasHub section of
docs/pretrained.md run on every backend.
"""

import dataclasses
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from helpers import REPO, Mirror

PAGES = ("README.md", *sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(REPO, "docs"))
                              if name.endswith(".md")), os.path.join("tflite", "README.md"))
LANGUAGES = ("python", "bash", "text")
RUN_LANGUAGES = ("python", "bash")
MARKER = "# docs-test:"
NOT_RUN = re.compile(r"# docs-test: not run \((?P<reason>.*)\)\s*$")
# The blocks every backend runs (seconds each): (page, section heading).
EVERY_BACKEND_SECTIONS = (("README.md", "## Quick start"),
                          ("docs/pretrained.md", "## KerasHub presets, the backbone and segmentation"),
                          ("docs/export.md", "## Keras' own `model.export`"))
LINKED_FOLDERS = ("training", "tflite", "experiments", "benchmarks")
# The data the blocks are given, standing for a user's own folders (the trainer keeps its cache of
# checked images in a data folder).
DATA_FOLDERS = ("pets", "imagenet", "calibration_images")
FIXTURE = os.path.join(REPO, "tests", "export", "fixtures", "digits_t2t_vit_mini")
# Authors' checkpoints of the study models a block may name (the releases come from the registry).
STUDY_CHECKPOINTS = {"t2t_vit_dense.pth.tar": "t2t_vit_dense"}
CHECKPOINT_NAME = re.compile(r"[\w.\-]+\.pth(?:\.tar)?\b")
BLOCK_TIMEOUT = 900

# What some blocks must print: (page, a line of the block, a pattern of its output).
EXPECTED_OUTPUT = [
    ("README.md", "decode_predictions", r"\('n\d{8}', "),
    ("docs/models.md", "embed_dim=128, depth=4", r"\(None, 10\)"),
    ("docs/pretrained.md", "T2TViTImageClassifier.from_preset(\"t2t_vit_7_imagenet\")",
     r"\['t2t_vit_7_imagenet', 't2t_vit_10_imagenet', 't2t_vit_12_imagenet'\][\s\S]*"
     r"\{'P2': \(56, 56, 64\), 'P3': \(28, 28, 64\), 'P4': \(14, 14, 256\)\}"),
    ("docs/pretrained.md", "DeepLabV3ImageSegmenter", r"\(4, 64, 64, 3\)"),
    # The digits export names digit.png's digit (a 6) with the preprocessing the model was
    # evaluated with (load_image's default crop makes it an 8), and MediaPipe reads the
    # probabilities head (the logits head scores above 1).
    ("docs/export.md", "mp.Image.create_from_file", r"\[\('6', 0\.\d+\)"),
    ("tflite/README.md", "mp.Image.create_from_file", r"\[\('6', 0\.\d+\)"),
    ("tflite/README.md", "Interpreter(model_path", r"(?m)^6 0\.\d+\n6 0\.\d+$"),
]


# === reading the blocks ===


@dataclasses.dataclass
class Block:
    page: str
    line: int  # of the opening fence, from 1
    language: str
    code: str
    section: str  # the heading above it

    @property
    def not_run_reason(self):
        """None for a block that runs; the reason for one marked not run ("" when it gives none)."""
        first = self.code.split("\n", 1)[0]
        if not first.startswith(MARKER):
            return None
        match = NOT_RUN.match(first)
        return match.group("reason").strip() if match else ""

    @property
    def where(self):
        return f"{self.page}:{self.line}"

    @property
    def runs(self):
        return self.language in RUN_LANGUAGES and self.not_run_reason is None

    @property
    def runs_on_every_backend(self):
        return self.language == "python" and (self.page, self.section) in EVERY_BACKEND_SECTIONS


def read_blocks(page):
    """Every fenced block of ``page`` (a path relative to the repository), in order."""
    with open(os.path.join(REPO, page), encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    blocks, section, index = [], "", 0
    while index < len(lines):
        fence = re.match(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)", lines[index])
        if not fence:
            if lines[index].startswith("#"):
                section = lines[index].strip()
            index += 1
            continue
        indent, marks, language = fence.groups()
        start, body = index + 1, []
        index += 1
        while index < len(lines) and not re.match(rf"^\s*{re.escape(marks)}\s*$", lines[index]):
            body.append(lines[index][len(indent):] if lines[index].startswith(indent) else lines[index])
            index += 1
        blocks.append(Block(page, start, language, "\n".join(body) + "\n", section))
        index += 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in read_blocks(page)]
# What the terminal summary shows (tests/docs/conftest.py).
REPORT = []


# === the rules every block keeps (fast, every backend) ===


def test_every_fence_names_its_language():
    unnamed = [f"{block.where}: a fence without a language (python, bash or text)"
               for block in ALL_BLOCKS if block.language not in LANGUAGES]
    assert not unnamed, "\n".join(unnamed)


def test_a_block_not_run_here_says_why_on_its_first_line():
    not_run = [block for block in ALL_BLOCKS if block.not_run_reason]
    REPORT[:] = [f"{sum(block.runs for block in ALL_BLOCKS)} blocks run, {len(not_run)} not run here:"] + [
        f"  {block.where}: {block.not_run_reason}" for block in not_run]
    problems = [f"{block.where}: '{block.code.splitlines()[0]}' gives no reason: write "
                "'# docs-test: not run (<reason>)'" for block in ALL_BLOCKS if block.not_run_reason == ""]
    problems += [f"{block.where}: the docs-test marker goes on the block's first line"
                 for block in ALL_BLOCKS if MARKER in block.code.split("\n", 1)[1]]
    problems += [f"{block.where}: a text block is never run and needs no marker"
                 for block in ALL_BLOCKS if block.language == "text" and block.not_run_reason is not None]
    assert not problems, "\n".join(problems)


def test_the_pages_are_the_readme_and_the_pages_it_links():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    assert len(readme.splitlines()) <= 300
    for page in PAGES[1:-1]:
        assert f"]({page})" in readme, f"README.md does not link {page}"


# === what the blocks are given: checkpoints, the mirror, the scratch folder ===


class Checkpoints(dict):
    """Authors'-layout checkpoints (random weights) by file name: every release of the registry and the
    study files of ``STUDY_CHECKPOINTS``, written into ``folder`` when first asked for. The mirror serves
    them (``Mirror.files``); read from disk each time, so that none is held in memory."""

    def __init__(self, folder):
        super().__init__()
        import keras_t2t

        self.folder = folder
        self.releases = {row.file: row for row in keras_t2t.list_weights()}

    def __contains__(self, name):
        return name in self.releases or name in STUDY_CHECKPOINTS

    def __missing__(self, name):
        path = self.path(name)
        with open(path, "rb") as handle:
            return handle.read()

    def path(self, name):
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            self._write(name, path)
        return path

    def _write(self, name, path):
        import keras_t2t
        import reference as ref
        from helpers import save_authors_checkpoint, save_net_checkpoint

        if name in STUDY_CHECKPOINTS:
            model = STUDY_CHECKPOINTS[name]
            config = dict(keras_t2t.STUDY_VARIANTS[model], classes=1000, image_size=(224, 224))
            state = ref.make_study_state_dict(config, 0)
            image_size, tag = 224, "imagenet"
        else:
            row = self.releases[name]
            model, image_size, tag = row.model, row.image_size, row.tag
            config = dict(keras_t2t.VARIANTS[model], classes=row.classes, image_size=(image_size, image_size))
            state = ref.make_state_dict(config, 0)
        state = {key: np.asarray(value, "float32") for key, value in state.items()}
        if tag.startswith("cifar"):  # the authors' transfer_learning.py layout
            save_net_checkpoint(path, state, 98.0, 60)
        else:  # their training script's: EMA weights first
            save_authors_checkpoint(path, state, {}, model.capitalize(), img_size=image_size)


def _write_image(path, pixels):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(pixels, "uint8")).save(path)


def make_data(folder):
    """The small data the blocks use, written once for every page."""
    import keras_t2t
    from keras_t2t.data.digits import load_digits_images
    from sklearn.datasets import load_sample_image

    (x_train, y_train), (x_val, y_val) = load_digits_images(image_size=64)
    # pets/: the README's fine-tune folder, two classes of four training and two validation images.
    for split, images, labels, count in (("train", x_train, y_train, 4), ("val", x_val, y_val, 2)):
        for class_name, digit in (("cat", 0), ("dog", 1)):
            for index in np.flatnonzero(labels == digit)[:count]:
                _write_image(os.path.join(folder, "pets", split, class_name, f"{index:04d}.jpg"), images[index])
    # imagenet/val/<wnid>/: two ImageNet classes (tench, goldfish), two images each.
    for wnid, digit in (("n01440764", 2), ("n01443537", 3)):
        for index in np.flatnonzero(y_val == digit)[:2]:
            _write_image(os.path.join(folder, "imagenet", "val", wnid, f"ILSVRC2012_val_{index:08d}.JPEG"),
                         x_val[index])
    (x_train, _), (x_val, _) = load_digits_images(image_size=32)
    for index in range(16):
        _write_image(os.path.join(folder, "calibration_images", f"{index:02d}.png"), x_train[index])
    # digit.png: validation digit #4 (a 6) as the digits run splits them, which the trained model names
    # at the run's crop 1.0 (an 8 at load_image's default 0.9). cat.jpg: a photograph.
    _write_image(os.path.join(folder, "digit.png"), x_val[4])
    _write_image(os.path.join(folder, "cat.jpg"), load_sample_image("china.jpg")[100:356, 300:556])

    # runs/digits: the trained digits model and what the trainer writes beside it (the fixture keeps
    # model.keras, summary.json and recipe.json; best.weights.h5 and preset/ are made as the trainer does).
    run = os.path.join(folder, "runs", "digits")
    os.makedirs(run)
    for name in ("model.keras", "summary.json", "recipe.json"):
        shutil.copy2(os.path.join(FIXTURE, name), run)
    with open(os.path.join(run, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    with open(os.path.join(run, "recipe.json"), encoding="utf-8") as handle:
        recipe = json.load(handle)
    model = keras.saving.load_model(os.path.join(run, "model.keras"))
    model.save_weights(os.path.join(run, "best.weights.h5"))
    keras_t2t.save_preset(model, os.path.join(run, "preset"),
                          preprocessing=(recipe["image_size"], recipe["eval_crop_pct"]),
                          metadata={key: summary[key] for key in ("val_top1", "dataset", "class_names", "model",
                                                                  "epochs")})
    # runs/digits_t2t_vs_vit: the two models the 5-minute experiment (not run here) leaves.
    experiment = os.path.join(folder, "runs", "digits_t2t_vs_vit")
    os.makedirs(os.path.join(experiment, "t2t_vit_mini"))
    shutil.copy2(os.path.join(FIXTURE, "model.keras"), os.path.join(experiment, "t2t_vit_mini"))
    os.makedirs(os.path.join(experiment, "vit_mini"))
    keras.utils.set_random_seed(0)
    keras_t2t.create_model("vit_mini").save(os.path.join(experiment, "vit_mini", "model.keras"))


@pytest.fixture(scope="module")
def docs_world(tmp_path_factory):
    """The data (made on first use), the checkpoints, the mirror and the blocks' environment."""
    root = tmp_path_factory.mktemp("docs")
    (root / "checkpoints").mkdir()
    checkpoints = Checkpoints(str(root / "checkpoints"))
    mirror = Mirror()
    mirror.files = checkpoints
    env = dict(os.environ, KERAS_HOME=str(root / "keras_home"), KERAS_T2T_WEIGHTS_URL=mirror.url,
               KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTHONPATH", None)
    yield {"root": root, "data": root / "data", "checkpoints": checkpoints, "env": env}
    mirror.stop()


def scratch_folder(world, page, blocks):
    """A fresh checkout-like folder for ``page``'s ``blocks``."""
    if not world["data"].exists():
        make_data(str(world["data"]))
    folder = world["root"] / ("page_" + re.sub(r"\W", "_", page))
    shutil.copytree(world["data"], folder)
    for name in LINKED_FOLDERS:
        os.symlink(os.path.join(REPO, name), folder / name)
    for name in sorted({name for block in blocks for name in CHECKPOINT_NAME.findall(block.code)}):
        if name in world["checkpoints"]:
            os.link(world["checkpoints"].path(name), folder / name)
    return folder


# === what the blocks must leave alone ===


def tracked_files():
    """``{path: sha256}`` of every file of the repository's work tree that git tracks."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    digests = {}
    for name in names.decode().split("\0"):
        path = os.path.join(REPO, name)
        if name and os.path.isfile(path):
            with open(path, "rb") as handle:
                digests[name] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def files_under(folder):
    """Every file under ``folder``, relative to it; linked folders (the repository's) are not entered."""
    found = set()
    for root, _, names in os.walk(folder):
        found.update(os.path.relpath(os.path.join(root, name), folder) for name in names)
    return found


def not_ignored(paths):
    """The ``paths`` (relative to a checkout's root) that the repository's .gitignore does not cover."""
    if not paths:
        return []
    listed = subprocess.run(["git", "check-ignore", "--no-index", "--stdin", "--non-matching", "--verbose"],
                            cwd=REPO, input="\n".join(sorted(paths)) + "\n", capture_output=True, text=True)
    return [line.split("\t", 1)[1] for line in listed.stdout.splitlines() if line.startswith("::\t")]


# === running them ===


def _children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_block(block, cwd, env):
    """Runs ``block`` in a fresh process; returns (seconds, CPU seconds). A failure names the block."""
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    start, cpu = time.perf_counter(), _children_cpu_seconds()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    seconds, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).rstrip().splitlines()[-40:])
        raise AssertionError(f"{block.where}: the {block.language} block exited {result.returncode} after "
                             f"{seconds:.0f} s:\n{block.code}--- the last lines it printed ---\n{tail}")
    for page, line, pattern in EXPECTED_OUTPUT:
        if page == block.page and line in block.code:
            assert re.search(pattern, result.stdout), (
                f"{block.where}: expected /{pattern}/ in what the block printed:\n{result.stdout[-3000:]}")
    return seconds, cpu


def run_page(page, world, blocks):
    folder = scratch_folder(world, page, blocks)
    inputs, tracked = files_under(folder), tracked_files()
    timings = []
    try:
        for block in blocks:
            seconds, cpu = run_block(block, folder, world["env"])
            timings.append(f"{block.where} {seconds:.0f} s ({cpu:.0f} s CPU)")
    finally:
        print(f"\n{page}: " + "; ".join(timings))
    changed = sorted(name for name, digest in tracked_files().items() if tracked.get(name) != digest)
    assert not changed, f"the blocks of {page} changed files git tracks in the repository: {changed}"
    written = {path for path in files_under(folder) - inputs if path.split(os.sep)[0] not in DATA_FOLDERS}
    unignored = not_ignored(written)
    assert not unignored, f"the blocks of {page} write files that .gitignore does not cover: {unignored}"
    shutil.rmtree(folder)  # a failed page's folder is kept, to look into


@pytest.mark.parametrize("page", PAGES)
def test_the_blocks_of_each_page_run_as_written(page, docs_world):
    blocks = [block for block in read_blocks(page) if block.runs]
    if keras.backend.backend() != "tensorflow":
        blocks = [block for block in blocks if block.runs_on_every_backend]
        if not blocks:
            pytest.skip("time budget: the docs' blocks run on the TensorFlow backend (the README's quick start and "
                        "the KerasHub section of docs/pretrained.md on every backend)")
    if not blocks:
        pytest.skip(f"{page} has no block to run")
    run_page(page, docs_world, blocks)


def test_a_quick_experiment_refuses_a_figures_folder_of_tracked_files(tmp_path):
    """``--quick --figures-dir docs/images`` once replaced five README pictures with a smoke run's."""
    figures = os.path.join(REPO, "docs", "images")
    before = {name: digest for name, digest in tracked_files().items() if name.startswith("docs/images/")}
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "digits_t2t_vs_vit.py"), "--quick", "--figures-dir",
         figures, "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "error: --quick makes smoke-run figures" in last and "holds files tracked by git" in last, last
    assert not (tmp_path / "out").exists()
    assert before and before == {name: digest for name, digest in tracked_files().items()
                                 if name.startswith("docs/images/")}
