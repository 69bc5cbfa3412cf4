"""Small builders shared by the tests: a tiny class table, a tiny config, a random batch, a log
collector."""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from configs import demo
from hoiclip_jax.train import step as train_step

TINY_VERBS = ["hold", "ride", "no_interaction"]
TINY_OBJECTS = ["person", "ball", "horse"]
TINY_HOIS = [(0, 1), (1, 2), (2, 1), (2, 2), (0, 0)]


def write_tiny_table(directory: str) -> str:
    """Writes a class table in the schema of data_pipeline/tables/hico_classes.json."""
    table = {
        "verbs": TINY_VERBS,
        "objects": TINY_OBJECTS,
        "coco_ids": [1, 37, 19],
        "hois": [{"verb": v, "object": o,
                  "prompt": f"a photo of a person {TINY_VERBS[v]} a {TINY_OBJECTS[o]}"}
                 for v, o in TINY_HOIS],
        "object_prompts": [f"a photo of a {o}" for o in TINY_OBJECTS] + ["a photo of nothing"],
        "rare_hois": [3, 4],
    }
    path = os.path.join(directory, "classes.json")
    with open(path, "w") as f:
        json.dump(table, f)
    return path


# The model of `tiny_config`, as dotted config fields: also applied to the real configs
# (`smoke_overrides`) on the command line or in-process.
TINY_MODEL = {
    # Stem and layer1 (frozen, as the reference) and layer2 (trained at the backbone's rate):
    # a third stage added 1.1 s to the tiny step's 8.3 s compile (2026-12-07) and no path.
    "model.backbone.stage_sizes": (1, 1),
    "model.backbone.width": 8,
    "model.hidden_dim": 32,
    "model.enc_layers": 1,
    # One decoder layer: a second adds its aux-loss and matcher copies to every compiled step
    # (the tiny step compiled in 13.3 s with 2 + 2 layers, 8.6 s with 1 + 1). The aux-layer
    # losses are covered by tests/test_losses.py, the stacked decoders by the demo model's tests.
    "model.dec_layers": 1,
    "model.inter_dec_layers": 1,
    "model.dim_feedforward": 32,
    "model.num_queries": 4,
    "model.nheads": 4,
    **{f"model.clip.{k}": v for k, v in dict(
        embed_dim=32, image_size=32, patch_size=16, vision_width=32, vision_layers=1,
        vision_heads=4, vision_mlp_dim=32, context_length=16, text_width=32, text_layers=1,
        text_heads=4, text_mlp_dim=32, vocab_size=64).items()},
    "model.inter_nheads": 4,
    "model.inter_dim_feedforward": 32,
}


def smoke_overrides(root: str, tfds_data_dir: str) -> dict:
    """Dotted overrides that run a real config (configs/hico*.py, vcoco.py) on a fake folder of
    `tests.fake_layout` with the tiny model, 64-pixel images and batches of 4. E_v is the text
    one (`verb_features=text`): the fake folder has no E_v file for the configs' default."""
    return {
        "dataset.root": root, "dataset.tfds_data_dir": tfds_data_dir,
        "dataset.canvas": (64, 64), "dataset.max_side": 64,
        "dataset.train_short_sides": (48, 56, 64), "dataset.test_short_side": 64,
        "dataset.crop_resize_sides": (48, 56), "dataset.crop_size": (32, 48),
        "dataset.clip_image_size": 32, "dataset.buckets": (), "dataset.max_pairs": 4,
        "dataset.num_threads": 1,
        **TINY_MODEL,
        "model.clip.weights": "", "model.pretrained": "", "model.clip.vocab_size": 512,
        "model.verb_features": "",
        "train.batch_size": 4, "train.num_epochs": 1, "train.log_every_steps": 1,
        "eval.batch_size": 4,
    }


def set_fields(config, overrides: dict):
    """Sets dotted `overrides` on `config` (each field must exist); returns `config`."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise KeyError(f"config has no field {dotted!r}")
        node[leaf] = value
    return config


def override_flags(overrides: dict) -> list[str]:
    """`overrides` as `--config.<field>=<value>` command-line flags."""
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def tiny_config(table_path: str):
    """The demo config shrunk further so that a train step compiles in seconds."""
    config = demo.get_config()
    config.dataset.class_table = table_path
    config.dataset.canvas = (64, 64)
    config.dataset.max_side = 64
    config.dataset.clip_image_size = 32
    config.dataset.max_pairs = 3
    # Tests train a few steps and check that the loss falls: no warm-up ramp in the way.
    config.optim.warmup_steps = 0
    return set_fields(config, TINY_MODEL)


def random_batch(config, num_hois: int, num_objects: int, batch_size: int,
                 seed: int = 0) -> dict:
    """A batch in the contract of docs/design.md with random but valid content."""
    rng = np.random.default_rng(seed)
    h, w = config.dataset.canvas
    c = config.dataset.clip_image_size
    m = config.dataset.max_pairs
    n_pairs = rng.integers(0, m + 1, size=batch_size)
    n_pairs[0] = m  # at least one full image
    pair_mask = np.arange(m)[None] < n_pairs[:, None]
    boxes = lambda: np.concatenate([rng.uniform(0.2, 0.8, (batch_size, m, 2)),
                                    rng.uniform(0.1, 0.4, (batch_size, m, 2))], -1)
    hoi_labels = (rng.random((batch_size, m, num_hois)) < 0.3) & pair_mask[..., None]
    pixel_mask = np.ones((batch_size, h, w), bool)
    pixel_mask[1, :, w * 3 // 4:] = False  # one padded image
    return {
        "image": rng.normal(size=(batch_size, h, w, 3)).astype(np.float32),
        "pixel_mask": pixel_mask,
        "clip_image": rng.normal(size=(batch_size, c, c, 3)).astype(np.float32),
        "sub_boxes": (boxes() * pair_mask[..., None]).astype(np.float32),
        "obj_boxes": (boxes() * pair_mask[..., None]).astype(np.float32),
        "obj_labels": rng.integers(0, num_objects, (batch_size, m)).astype(np.int32),
        "obj_exists": pair_mask.copy(),
        "hoi_labels": hoi_labels.astype(np.float32),
        "pair_mask": pair_mask,
        "image_id": np.arange(batch_size, dtype=np.int32),
        "orig_size": np.full((batch_size, 2), h, np.int32),
    }


def hand_giou(a, b):
    """GIoU of two cxcywh boxes, by hand."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


class ListHandler(logging.Handler):
    """Collects the messages logged at INFO and above (attach to a logger, read `.messages`)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def assert_trees_close(a, b, rtol: float = 1e-5) -> None:
    """Every leaf of `b` equals `a`'s to `rtol` relative, with an absolute floor of `rtol` x the
    largest magnitude of all of `a` (leaves whose true value is 0, such as the gradients of
    attention key biases, which softmax cancels, hold only rounding noise)."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(a)]
    scale = max(float(np.abs(x).max()) for x in leaves if x.size)
    assert scale > 0
    for x, y in zip(leaves, jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(y, np.float64), x, rtol=rtol, atol=rtol * scale)


class LinearStandIn:
    """Stands in for HOICLIP in the step (compiles in a second): the model's outputs, [L, B, N,
    ...], linear in the params on each image's mean colour."""

    def __init__(self, layers: int, queries: int, num_hois: int, num_objects: int):
        self.shapes = {"hoi_logits": num_hois, "obj_logits": num_objects + 1, "sub_boxes": 4,
                       "obj_boxes": 4}
        self.layers, self.queries = layers, queries
        self.num_queries = queries  # the step's whole-batch normalisers read it

    def init(self, rng) -> dict:
        keys = jax.random.split(rng, len(self.shapes))
        return {name: jax.random.normal(key, (self.layers, self.queries, 3, size))
                for key, (name, size) in zip(keys, self.shapes.items())}

    def initial_state(self, tx, frozen: dict | None = None, seed: int = 0) -> dict:
        """The trainer's step-0 state (`step.init_state`): these params trained by `tx`, beside
        `frozen` ones (default none)."""
        return train_step.init_state(self.init(jax.random.PRNGKey(seed)), frozen or {}, tx, seed)

    def apply(self, variables, image, pixel_mask, clip_image, train, rngs):
        del pixel_mask, clip_image, train, rngs
        colour = image.mean((1, 2))  # [B, 3]
        params = variables["params"]  # may hold more (frozen) entries than the outputs'
        out = {k: jnp.einsum("bc,lnco->lbno", colour, params[k]) for k in self.shapes}
        return dict(out, sub_boxes=jax.nn.sigmoid(out["sub_boxes"]),
                    obj_boxes=jax.nn.sigmoid(out["obj_boxes"]))
