"""Analysis of a model on any image: load a checkpoint, predict triplets, read the features.

    config, params = hoiclip_jax.load_checkpoint("runs/demo")        # or a .pth with a config
    predictor = hoiclip_jax.analysis.Predictor(config, params)
    result = predictor("photo.jpg")
    for triplet in result.triplets[:5]:
        print(triplet)                      # person ride horse 0.873 person [...] horse [...]
    result.features["q_inter"]              # [N, W] Q_inter of the N queries

`load_checkpoint` restores onto ONE device (default: the first local one; pass
`jax.devices("cpu")[0]` for the CPU) whatever mesh saved the checkpoint: orbax reads the arrays
into abstract ones with a single-device sharding, so a state saved on 8 GPUs restores on a
laptop. It reads
- a workdir of `hoiclip_jax.train` (its `config.json`, the latest step of `checkpoints/`),
- a checkpoint folder: `<workdir>/checkpoints` or `<workdir>/best` (latest step there), or one
  step `<workdir>/checkpoints/<step>`,
- a released HOICLIP `.pth` or the `.msgpack` of `hoiclip_jax.tools.import_weights`, which carry
  no config: give the config of the model they hold.

`Predictor` gives exactly the evaluator's triplets for an image: the same test transform
(`data_pipeline.transforms.test_example`), the same top-k (k = `config.eval.max_hois`) and the
same post-processing. HICO-Det (and the synthetic set): `postprocess.hico_topk` over the HOI
classes, then the triplet NMS of `protocols.hico.prediction_from_topk` with `config.eval`. V-COCO:
`postprocess.vcoco_topk` over (query, verb-role) pairs with the verb-object validity of
`protocols.vcoco_correct_mat` (the data set's `corre_vcoco.npy`, else the stand-in from the HOI
table), no NMS, as the V-COCO evaluator. With `dataset.buckets` the evaluator pads each image
to the smallest bucket that holds its whole batch; the Predictor pads to the smallest that holds
the image alone, which is the evaluator's choice at eval batch size 1 (the CLIP branch attends
to padded positions, so the padding can move the scores slightly).
"""
import dataclasses
import functools
import logging
import os
import re
from typing import Any, Optional, Union

import flax.traverse_util as traverse_util
import jax
import numpy as np
from PIL import Image

from data_pipeline import class_tables, transforms
from data_pipeline.hico_reader import HoiRecord
from hoiclip_jax.lib import checkpoints
from hoiclip_jax.train import optim, state as state_io
from hoiclip_jax.eval import postprocess, registry as protocols
from hoiclip_jax import weights
from hoiclip_jax.eval.protocols import hico as hico_metrics
from hoiclip_jax.eval.protocols import vcoco as vcoco_metrics
from hoiclip_jax.models import hoiclip

WEIGHT_FILES = (".pth", ".msgpack")
# Sown features (hoiclip.INTERMEDIATES) -> the path of their sow in the model.
FEATURE_PATHS = {"clip_tokens": ("clip_tokens",), "q_inter": ("interaction", "queries"),
                 "o_inter": ("o_inter",), "verb_logits": ("verb_logits",)}
# The batch axis of every per-image array of a `Prediction` (features, then model outputs).
BATCH_AXIS = {"clip_tokens": 0, "q_inter": 0, "o_inter": 1, "verb_logits": 1,
              "hoi_logits": 1, "obj_logits": 1, "sub_boxes": 1, "obj_boxes": 1, "clip_cls": 0,
              "clip_visual": 0}
# Config sections whose keys each config chooses (the optimizer's group names).
FREE_FORM_FIELDS = ("optim.group_lr_mult.",)


# ----------------------------------------------------------------------------- loading

def load_checkpoint(path: str, config=None, *, step: Optional[int] = None,
                    device: Optional[jax.Device] = None) -> tuple[Any, dict]:
    """(config, params) of a workdir, a checkpoint folder, or a `.pth` / `.msgpack` file.

    Args:
      path: see the module docstring.
      config: the ConfigDict of the model; default: `<workdir>/config.json`. Required for a
        `.pth` / `.msgpack` (e.g. `configs.hico.get_config()`).
      step: the step to restore (default: the latest of the folder). Not for weight files.
      device: where the params are put (default: `jax.local_devices()[0]`).

    Returns:
      (config, params): params is the nested 'params' dict of `hoiclip.build_model(config.model,
      tables)`, float32, on `device`.

    Raises:
      FileNotFoundError: `path` is none of the above, or holds no checkpoint.
      ValueError: a weight file without `config`, or a step that contradicts the path.
      checkpoints.CheckpointError: the checkpoint does not fit the config (every difference
        listed) or cannot be read.
    """
    device = jax.local_devices()[0] if device is None else device
    if os.path.isfile(path):
        if not path.endswith(WEIGHT_FILES):
            raise ValueError(f"{path}: not a weight file ({'/'.join(WEIGHT_FILES)}); give one, "
                             f"a workdir or a checkpoint folder")
        if config is None or step is not None:
            raise ValueError(f"{path}: a weight file needs `config` (the config of the model "
                             f"it holds; --config on the command line) and takes no step")
        tables = class_tables.load_class_tables(config.dataset)
        return config, jax.device_put(params_from_weights(path, config, tables), device)
    workdir, subdir, step = locate_checkpoint(path, step)
    if config is None:
        config = checkpoints.read_config(workdir)
        check_config_fields(config, os.path.join(workdir, checkpoints.CONFIG_FILE))
    tables = class_tables.load_class_tables(config.dataset)
    return config, restore_params(workdir, subdir, step, config, tables, device)


def locate_checkpoint(path: str, step: Optional[int]) -> tuple[str, str, Optional[int]]:
    """(workdir, subdir, step or None for the latest) of a workdir or checkpoint folder."""
    path = os.path.normpath(os.path.abspath(path))
    parent, name = os.path.split(path)
    folders = (checkpoints.CHECKPOINT_DIR, checkpoints.BEST_DIR)
    if re.fullmatch(r"\d+", name) and os.path.basename(parent) in folders:
        if step is not None and step != int(name):
            raise ValueError(f"{path} is step {name}, but step={step} was asked for")
        workdir, subdir = os.path.split(parent)
        return workdir, subdir, int(name)
    if name in folders and not os.path.isfile(os.path.join(path, checkpoints.CONFIG_FILE)):
        return parent, name, step
    if os.path.isfile(os.path.join(path, checkpoints.CONFIG_FILE)):
        return path, checkpoints.CHECKPOINT_DIR, step
    raise FileNotFoundError(
        f"{path}: not a workdir (no {checkpoints.CONFIG_FILE}), a checkpoint folder "
        f"(<workdir>/{{{','.join(folders)}}}[/<step>]) or a weight file "
        f"({'/'.join(WEIGHT_FILES)})")


class ConfigFieldsError(ValueError):
    """A saved config that lacks fields of this version's configs."""


def check_config_fields(config, where: str) -> None:
    """Raises ConfigFieldsError listing the fields of this version's configs (`hoiclip_jax.lib.config_base`)
    that the saved `config` lacks: a workdir written by an older version, whose model this
    version might build differently. Pass the run's config file instead."""
    from hoiclip_jax.lib import config_base as common
    flat = lambda c: {k for k in traverse_util.flatten_dict(c.to_dict(), sep=".")
                      if not k.startswith(FREE_FORM_FIELDS)}
    missing = sorted(flat(common.hoiclip_config(config.dataset.name)) - flat(config))
    if missing:
        raise ConfigFieldsError(
            f"{where} lacks the config fields {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''} (written by an older version of "
            f"hoiclip-jax?): pass the run's config (--config / config=) instead")


def restore_params(workdir: str, subdir: str, step: Optional[int], config, tables,
                   device: jax.Device) -> dict:
    """The params of `<workdir>/<subdir>/<step>` (default: latest) restored onto `device`.

    The whole train state is read (the checkpoint's tree is checked against it), its optimizer
    state dropped; every array lands on `device` alone, whatever sharding wrote it.
    """
    ckpt = checkpoints.Checkpointer(workdir, keep=1, subdir=subdir, read_only=True)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
        _, state = state_io.abstract_state(config, tables)
        abstract = checkpoints.abstract_like(state, jax.sharding.SingleDeviceSharding(device))
        restored, meta = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    logging.info("Restored %s/%d (epoch %s) onto %s", ckpt.directory, step, meta.get("epoch"),
                 device)
    return optim.merge_params(restored["trainable"], restored["frozen"])


def params_from_weights(path: str, config, tables) -> dict:
    """Params from a HOICLIP `.pth` / import `.msgpack` (`weights.load_pretrained`).

    A complete file (a released HOICLIP checkpoint fills every param) is loaded into abstract
    params, so nothing is initialised. A partial one (a DETR `.pth`, a partial `.msgpack`) is
    loaded over the initial params of `config`, as training would start from it; a warning lists
    what stays at init.
    """
    model = hoiclip.build_model(config.model, tables)
    params, report = weights.load_pretrained(path, hoiclip.abstract_params(model, config.dataset),
                                             config, tables)
    if not report.left_at_init:
        return jax.tree.map(np.asarray, params)
    logging.warning("%s does not hold the whole model; the rest is initialised from the config "
                    "(random or CLIP text, as at the start of training):\n%s", path,
                    report.summary())
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.pretrained = path
    return state_io.initial_params(config, tables)[1]


# ----------------------------------------------------------------------------- prediction

@dataclasses.dataclass(frozen=True)
class Triplet:
    """One detected interaction <person, verb, object>.

    Attributes:
      verb, object: class names (class tables).
      score: the evaluator's score, sigmoid(HOI logit) + sigmoid(object logit)**2 (in [0, 2]).
      sub_box, obj_box: [4] xyxy in pixels of the original image.
      hoi, verb_id, object_id: class indices (HOI class, verb, object). V-COCO ranks (query,
        verb-role) pairs, not HOI classes: its `hoi` is -1, `verb` a verb-role name
        ("eat_obj") and `object` the query's predicted object ('no_object' for a role without
        one, where `obj_box` is whatever the query predicted).
      query: the query (pair of boxes) the triplet comes from.
    """
    verb: str
    object: str
    score: float
    sub_box: np.ndarray
    obj_box: np.ndarray
    hoi: int
    verb_id: int
    object_id: int
    query: int

    def __str__(self) -> str:
        box = lambda b: "[" + ", ".join(f"{v:.1f}" for v in b) + "]"
        return (f"person {self.verb} {self.object} {self.score:.3f}  "
                f"person {box(self.sub_box)} {self.object} {box(self.obj_box)}")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the model makes of one image.

    Attributes:
      triplets: after the triplet NMS of `config.eval` (when `use_nms`; none for V-COCO), best
        score first.
      pred_boxes, pred_hois: the evaluator's per-image prediction (`protocols.hico
        .prediction_from_topk`; V-COCO: `protocols.vcoco.predictions_from_topk`): [2N, 4] boxes
        (N subjects then N objects) and [P, 4] rows (subject id, object id, HOI class (V-COCO:
        verb-role), score) in the evaluator's order.
      topk: `postprocess.hico_topk` of the image: `scores`, `hoi_ids`, `query_ids` [k],
        `sub_xyxy`, `obj_xyxy` [N, 4] (what `evaluation.make_predict_fn` returns per image);
        V-COCO (`postprocess.vcoco_topk`): `verb_ids` instead of `hoi_ids`, and `obj_labels`
        [N].
      features: `clip_tokens` [T, W] (CLIP ln_post tokens), `q_inter` [N, W] (Q_inter),
        `o_inter` [L, N, E] (O_inter per interaction-decoder layer, in CLIP space),
        `verb_logits` [L, N, V] (S_v, the verb adapter before verb2hoi).
      outputs: the model outputs without the batch axis (`hoi_logits` [L, N, K], ...).
      size: (w, h) of the image.
    """
    triplets: list[Triplet]
    pred_boxes: np.ndarray
    pred_hois: np.ndarray
    topk: dict[str, np.ndarray]
    features: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    size: tuple[int, int]


ImageLike = Union[str, Image.Image, np.ndarray]


@functools.partial(jax.jit, static_argnames=("model", "k"))
def _forward(params, batch, hoi_to_obj, hoi_to_verb, correct_mat, *, model, k: int):
    """Model outputs, top-k and the sown features of a batch: `evaluation.make_predict_fn`'s
    computation, plus the features. `correct_mat` None: HICO-Det's top-k, else V-COCO's
    (`hoi_to_verb` and `correct_mat` [V, O + 1] used). Compiled once per (model, k, input
    shapes, data set kind): Predictors of one config share it."""
    out, state = model.apply({"params": params}, batch["image"], batch["pixel_mask"],
                             batch["clip_image"], train=False, mutable=[hoiclip.INTERMEDIATES])
    heads = (out["hoi_logits"][-1], out["obj_logits"][-1], out["sub_boxes"][-1],
             out["obj_boxes"][-1], batch["orig_size"])
    if correct_mat is None:
        topk = postprocess.hico_topk(*heads, hoi_to_obj, k)
    else:
        topk = postprocess.vcoco_topk(*heads, hoi_to_obj, hoi_to_verb, correct_mat, k)
    features = {}
    for name, path in FEATURE_PATHS.items():
        node = state[hoiclip.INTERMEDIATES]
        for part in path:
            node = node[part]
        features[name] = node[0].astype(np.float32)  # sow keeps a tuple of the values
    return out, topk, features


class Predictor:
    """Image in, triplets and intermediate features out (see `Prediction`).

    Args:
      config: the model's config (from `load_checkpoint`).
      params: its params (from `load_checkpoint`).
      device: where the model runs (default: the device of the params' first leaf).
    """

    def __init__(self, config, params: dict, device: Optional[jax.Device] = None):
        self.config = config
        self.tables = class_tables.load_class_tables(config.dataset)
        self.model = hoiclip.build_model(config.model, self.tables)
        if device is None:
            leaf = jax.tree.leaves(params)[0]
            device = (min(leaf.devices(), key=lambda d: d.id) if isinstance(leaf, jax.Array)
                      else jax.local_devices()[0])
        self.device = device
        self.params = jax.device_put(params, device)
        self._hoi_to_obj = jax.device_put(np.asarray(self.tables.hoi_to_obj, np.int32), device)
        self._hoi_to_verb = jax.device_put(np.asarray(self.tables.hoi_to_verb, np.int32), device)
        self._correct_mat = None
        if config.dataset.name == "vcoco":
            self._correct_mat = jax.device_put(protocols.vcoco_correct_mat(config, self.tables),
                                               device)

    def inputs(self, image: Image.Image) -> dict:
        """The evaluator's test transform of one RGB image, as a numpy batch of one:
        `image` [1, H, W, 3], `pixel_mask` [1, H, W], `clip_image` [1, C, C, 3], `orig_size`
        [1, 2]."""
        d = self.config.dataset
        empty = HoiRecord("<input image>", 0, np.zeros((0, 4), np.float32),
                          np.zeros(0, np.int32), np.zeros((0, 4), np.int32))
        canvas = transforms.batch_canvas([transforms.test_output_size(image.size, d)], d)
        example = transforms.test_example(image, empty, self.tables, d, canvas)
        return {k: example[k][None] for k in ("image", "pixel_mask", "clip_image", "orig_size")}

    def __call__(self, image: ImageLike) -> Prediction:
        """Predicts one image: a path, a PIL image or a [H, W, 3] uint8 array."""
        image = load_image(image)
        batch = jax.device_put(self.inputs(image), self.device)
        out, topk, features = jax.device_get(_forward(
            self.params, batch, self._hoi_to_obj, self._hoi_to_verb, self._correct_mat,
            model=self.model, k=int(self.config.eval.max_hois)))
        if self._correct_mat is None:
            topk = {k: v[0] for k, v in topk.items()}
            e = self.config.eval
            evaluated = hico_metrics.prediction_from_topk(
                topk, use_nms=e.use_nms, nms_threshold=e.nms_threshold, nms_alpha=e.nms_alpha,
                nms_beta=e.nms_beta)
            box_labels = None
        else:
            evaluated = vcoco_metrics.predictions_from_topk(topk)[0]
            topk = {k: v[0] for k, v in topk.items()}
            box_labels = evaluated["pred_box_labels"]
        return Prediction(
            triplets=self.triplets(evaluated["pred_boxes"], evaluated["pred_hois"], box_labels),
            pred_boxes=evaluated["pred_boxes"], pred_hois=evaluated["pred_hois"], topk=topk,
            features=_first_image(features), outputs=_first_image(out), size=image.size)

    def triplets(self, pred_boxes: np.ndarray, pred_hois: np.ndarray,
                 box_labels: Optional[np.ndarray] = None) -> list[Triplet]:
        """`Triplet`s of the evaluator's [P, 4] rows, by descending score (stable). Without
        `box_labels` the third column is an HOI class (HICO-Det); with the [2N] object label of
        each box it is a V-COCO verb-role, and the object class is the object box's label."""
        order = np.argsort(-pred_hois[:, 3], kind="stable")
        result = []
        for sub, obj, cls, score in pred_hois[order]:
            if box_labels is None:
                hoi = int(cls)
                verb, obj_class = self.tables.hois[hoi]
            else:
                hoi, verb, obj_class = -1, int(cls), int(box_labels[int(obj)])
            result.append(Triplet(
                verb=self.tables.verbs[verb], object=self.tables.objects[obj_class],
                score=float(score), sub_box=pred_boxes[int(sub)], obj_box=pred_boxes[int(obj)],
                hoi=hoi, verb_id=int(verb), object_id=int(obj_class), query=int(sub)))
        return result


def _first_image(arrays: dict) -> dict[str, np.ndarray]:
    """The arrays of image 0 of a batch (`BATCH_AXIS` removed)."""
    return {k: np.take(np.asarray(v), 0, axis=BATCH_AXIS[k]) for k, v in arrays.items()}


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or a [H, W, 3] uint8 array."""
    if isinstance(image, str):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image {image}: no such file")
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image array of shape {image.shape} {image.dtype}: expected "
                             f"[H, W, 3] uint8 RGB")
        return Image.fromarray(image)
    return image.convert("RGB")
