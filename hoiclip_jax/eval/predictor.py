"""Analysis of a model on any image: the evaluator's triplets and the model's features.

    config, params = hoiclip_jax.load_checkpoint("runs/demo")        # or a .pth with a config
    predictor = hoiclip_jax.Predictor(config, params)
    result = predictor("photo.jpg")
    for triplet in result.triplets[:5]:
        print(triplet)                      # person ride horse 0.873 person [...] horse [...]
    result.features["q_inter"]              # [N, W] Q_inter of the N queries

`Predictor` gives exactly the evaluator's triplets for an image: the same test transform
(`data_pipeline.transforms.test_example`), the same top-k (k = `config.eval.max_hois`) and the
same post-processing. HICO-Det (and the synthetic set): `scoring.hico_topk` over the HOI
classes, then the triplet NMS of `protocols.hico_topk.predictions_from_topk` with
`config.eval`. V-COCO:
`scoring.vcoco_topk` over (query, verb-role) pairs with the verb-object validity of
`scorers.vcoco_correct_mat` (the data set's `corre_vcoco.npy`, else the stand-in from the HOI
table), no NMS, as the V-COCO evaluator. With `dataset.buckets` the evaluator pads each image
to the smallest bucket that holds its whole batch; the Predictor pads to the smallest that holds
the image alone, which is the evaluator's choice at eval batch size 1 (the CLIP branch attends
to padded positions, so the padding can move the scores slightly).
"""

import dataclasses
import os
from typing import Optional, Union

import jax
import numpy as np
from PIL import Image

from data_pipeline import class_tables, transforms
from data_pipeline.hico_reader import HoiRecord
from hoiclip_jax.eval import inference, registry
from hoiclip_jax.models import hoiclip

# The batch axis of every per-image array of a `Prediction` (features, then model outputs).
BATCH_AXIS = {"clip_tokens": 0, "q_inter": 0, "o_inter": 1, "verb_logits": 1,
              "hoi_logits": 1, "obj_logits": 1, "sub_boxes": 1, "obj_boxes": 1, "clip_cls": 0,
              "clip_visual": 0}

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
      topk: `scoring.hico_topk` of the image: `scores`, `hoi_ids`, `query_ids` [k],
        `sub_xyxy`, `obj_xyxy` [N, 4] (what `evaluation.make_predict_fn` returns per image);
        V-COCO (`scoring.vcoco_topk`): `verb_ids` instead of `hoi_ids`, and `obj_labels`
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


class Predictor:
    """Image in, triplets and intermediate features out (see `Prediction`).

    Args:
      config: the model's config (from `load_checkpoint`).
      params: its params (from `load_checkpoint`).
      device: where the model runs (default: the device of the params' first leaf).
      tfe_k: the training-free enhancement of the triplets: 0 for none; default: the first k of
        `config.eval.tfe_k` (the evaluator's first TFE row, the paper's k = 10), else none.
    """

    def __init__(self, config, params: dict, device: Optional[jax.Device] = None,
                 tfe_k: Optional[int] = None):
        self.config = config
        self.tables = class_tables.load_class_tables(config.dataset)
        self.model = hoiclip.build_model(config.model, self.tables)
        if device is None:
            leaf = jax.tree.leaves(params)[0]
            device = (min(leaf.devices(), key=lambda d: d.id) if isinstance(leaf, jax.Array)
                      else jax.local_devices()[0])
        self.device = device
        self.params = jax.device_put(params, device)
        self.protocol = registry.for_dataset(config.dataset.name)
        e = config.eval
        self.tfe_k = (int(e.tfe_k[0]) if e.tfe_k else 0) if tfe_k is None else int(tfe_k)
        self._forward = jax.jit(inference.make_forward(
            self.model, self.tables, int(e.max_hois), (self.tfe_k,) if self.tfe_k else (),
            float(e.tfe_weight), self.protocol.correct_mat(config, self.tables),
            with_features=True))

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
        ranked, out, features = jax.device_get(self._forward(self.params, batch))
        topk, = inference.select_variant([ranked], self.tfe_k)
        evaluated = self.protocol.image_predictions(topk, self.config.eval)[0]
        topk = {k: v[0] for k, v in topk.items()}
        return Prediction(
            triplets=self.triplets(evaluated["pred_boxes"], evaluated["pred_hois"],
                                   evaluated.get("pred_box_labels")),
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
