"""Small helpers shared by the tests (no model logic: that is what they test)."""

import http.server
import os
import subprocess
import sys
import threading
import urllib.parse

import numpy as np
import reference as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")


def random_images(seed, batch, height, width, channels=3):
    return np.random.default_rng(seed).standard_normal((batch, height, width, channels)).astype("float32")


def run_on_backend(backend, code, timeout=600):
    """Runs Python ``code`` in a fresh process on ``backend``; returns its stdout."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if result.returncode != 0:
        raise AssertionError(f"{backend} subprocess failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result.stdout


def n_params(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def torch_state_dict(state, prefix="module."):
    """A NumPy state dict as torch's (keys with DataParallel's ``module.`` prefix), one tensor per
    distinct array: ``torch.save`` then stores arrays shared between keys once."""
    import collections

    import torch  # only the tests that write checkpoints need it

    tensors = {}
    out = collections.OrderedDict()
    for key, value in state.items():
        if id(value) not in tensors:
            tensors[id(value)] = torch.from_numpy(np.ascontiguousarray(value))
        out[prefix + key] = tensors[id(value)]
    return out


def save_net_checkpoint(path, state, acc, epoch):
    """What the authors' transfer_learning.py saves (the CIFAR fine-tunes): the DataParallel model's
    state dict under 'net', beside the test accuracy and the epoch."""
    import torch

    torch.save({"net": torch_state_dict(state), "acc": acc, "epoch": epoch}, path)
    return path


def row_state_dict(row, classes=1000, image_size=(32, 32)):
    """A state dict with a registry row's keys and shapes (cheap: every block shares one set of arrays)."""
    one_block = ref.make_state_dict(dict(row, depth=1, image_size=image_size, classes=classes), 0)
    state = {k: v for k, v in one_block.items() if not k.startswith("blocks.")}
    for i in range(row["depth"]):
        state.update({k.replace("blocks.0.", f"blocks.{i}.", 1): v for k, v in one_block.items()
                      if k.startswith("blocks.0.")})
    return state


def save_authors_checkpoint(path, ema, plain, arch, epoch=309, img_size=224):
    """``torch.save`` of a timm-style training checkpoint holding ``ema`` and ``plain`` state dicts,
    as the authors' training script writes it (keys with DataParallel's ``module.`` prefix)."""
    import argparse

    import torch  # only the tests that write checkpoints need it

    # A real AdamW state dict (tensors in 'state', lists/tuples in 'param_groups'), as timm saves it.
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=5e-4, weight_decay=0.05)
    param.sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": epoch,
        "arch": arch,
        "state_dict": torch_state_dict(plain),
        "optimizer": optimizer.state_dict(),
        "version": 2,
        "args": argparse.Namespace(model=arch, img_size=img_size, lr=5e-4, drop_path=0.1, model_ema=True, amp=False),
        "metric": 71.7,
        "state_dict_ema": torch_state_dict(ema),
    }
    torch.save(checkpoint, path)
    return path


# A tiny ViT of tests/reference_vit.py's keywords, shared by the ViT and visualiser tests.
SMALL_VIT = dict(image_size=8, patch_size=2, in_channels=3, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
              qkv_bias=True, classes=5)


def assign_vit_state_dict(model, sd):
    """timm's ViT names and PyTorch layouts -> the Keras variables (every variable must be covered)."""
    leaf_names = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}
    for variable in model.weights:
        parts = variable.path.split("/")
        if parts[0] == parts[-1]:  # cls_token/cls_token, pos_embed/pos_embed
            key = parts[0]
        else:
            key = ".".join([parts[0].replace("blocks_", "blocks.")] + parts[1:-1] + [leaf_names[parts[-1]]])
        value = np.asarray(sd[key])
        if parts[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        assert tuple(variable.shape) == value.shape, (variable.path, key)
        variable.assign(value.astype(variable.dtype))


class Mirror:
    """A loopback HTTP server: ``files`` (name -> body) are served, ``faults`` (name -> kind) broken."""

    def __init__(self):
        self.files, self.faults, self.requests = {}, {}, []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                name = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
                mirror.requests.append(name)
                fault = mirror.faults.get(name)
                if fault == "html":
                    body, kind = b"<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n", "text/html"
                elif name in mirror.files:
                    body, kind = mirror.files[name], "application/octet-stream"
                else:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # "short": the connection closes after half of the announced body.
                self.wfile.write(body[: len(body) // 2] if fault == "short" else body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/yitu/releases/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()
