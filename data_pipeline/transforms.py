"""Builds one training or test example (the table of docs/design.md) from an image and a record.

Training: the augmentation of `dataset.augmentation` ('reference', §3.3, or the demo's 'light';
`augment.py`). Test: short side to `test_short_side`, long side <= `max_side`. Every example is
then normalised with the ImageNet mean/std and padded to a canvas with a pixel mask; its CLIP
view is made from the augmented image; its pairs become padded cxcywh targets.

Every random choice is drawn first, from the image size alone, into a `Plan`; applying the plan
then touches the pixels. So an example's output size is known without decoding its image, and
the loader pads each batch to the smallest of `dataset.buckets` that holds it (`batch_canvas`).

Boxes are xyxy in pixel edges of the current image (a box [0, 0, w, h] covers the whole image).
"""
import logging
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from data_pipeline.augment import (Sample, apply_plan, enhance, first_boxes, float_jitter,
                                   light_plan, reference_plan, resize, resized_size, sanitize)
from data_pipeline.class_tables import ClassTables
from data_pipeline.hico_reader import HoiRecord

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
# [3, 256] f32: (v / 255 - mean) / std of each channel c and 8-bit value v (ToTensor + Normalize).
_NORMALIZED = ((np.arange(256, dtype=np.float32)[:, None] / 255.0 - IMAGENET_MEAN)
               / IMAGENET_STD).T.copy()


# ----------------------------------------------------------------------------- entry points
def train_example(image: Image.Image, record: HoiRecord, tables: ClassTables, dataset_config,
                  rng: np.random.Generator, canvas: Optional[Sequence[int]] = None,
                  out: Optional[np.ndarray] = None) -> dict:
    """One augmented training example; all randomness comes from `rng`.

    `canvas` (H, W) is the padded image size (default `dataset.canvas`); the loader passes the
    batch's bucket. `out`: see `finalize`.
    """
    d = dataset_config
    sample = Sample(image, record.boxes, record.box_labels, record.hois)
    if d.augmentation == "reference":
        sample = sanitize(first_boxes(sample, d.max_boxes))
        sample = apply_plan(sample, reference_plan(rng, *sample.image.size, d), enhance)
    else:
        _check_augmentation(d)
        sample = sanitize(sample)
        sample = apply_plan(sample, light_plan(rng, *sample.image.size, d), float_jitter)
    return finalize(sample, image.size[::-1], record, tables, d, canvas, out)


def test_example(image: Image.Image, record: HoiRecord, tables: ClassTables, dataset_config,
                 canvas: Optional[Sequence[int]] = None,
                 out: Optional[np.ndarray] = None) -> dict:
    """One deterministic test example: resize to `test_short_side` (capped by `max_side`)."""
    d = dataset_config
    sample = sanitize(Sample(image, record.boxes, record.box_labels, record.hois))
    sample = resize(sample, test_output_size(image.size, d))
    return finalize(sample, image.size[::-1], record, tables, d, canvas, out)


def train_output_size(image_size: tuple[int, int], dataset_config,
                      rng: np.random.Generator) -> tuple[int, int]:
    """(w, h) that `train_example` gives an image of `image_size` (w, h) with this `rng` state."""
    d = dataset_config
    make_plan = reference_plan if d.augmentation == "reference" else light_plan
    _check_augmentation(d)
    return make_plan(rng, *image_size, d).size


def test_output_size(image_size: tuple[int, int], dataset_config) -> tuple[int, int]:
    """(w, h) that `test_example` gives an image of `image_size` (w, h)."""
    d = dataset_config
    return resized_size(*image_size, d.test_short_side, d.max_side)


def batch_canvas(sizes: Sequence[tuple[int, int]], dataset_config) -> tuple[int, int]:
    """(H, W): the smallest by area (ties: first listed) of `dataset.buckets` and
    `dataset.canvas` that holds every (w, h) of `sizes` (the output sizes of one batch).

    The canvas is the largest shape: a bucket that does not fit inside it is never chosen (so a
    config that shrinks the canvas need not clear the buckets).
    """
    d = dataset_config
    need_w, need_h = max(s[0] for s in sizes), max(s[1] for s in sizes)
    canvas_h, canvas_w = d.canvas
    shapes = [tuple(b) for b in d.buckets if b[0] <= canvas_h and b[1] <= canvas_w]
    for h, w in sorted(shapes + [(canvas_h, canvas_w)], key=lambda s: s[0] * s[1]):
        if h >= need_h and w >= need_w:
            return int(h), int(w)
    raise ValueError(f"a batch needs a {need_h}x{need_w} canvas, larger than dataset.canvas "
                     f"{tuple(d.canvas)} and every dataset.buckets entry; raise the canvas or "
                     f"lower dataset.max_side ({d.max_side})")


def check_dataset_config(dataset_config) -> None:
    """Raises ValueError naming the field when the transform fields are inconsistent."""
    d = dataset_config
    _check_augmentation(d)
    for bucket in d.buckets:
        if not _is_size(bucket):
            raise ValueError(f"dataset.buckets entry {bucket!r}: must be (H, W), two positive "
                             f"integers")
    if not _is_size(d.canvas):
        raise ValueError(f"dataset.canvas {d.canvas!r}: must be (H, W), two positive integers")
    if d.augmentation == "reference":
        if not _is_size(d.crop_size):
            raise ValueError(f"dataset.crop_size {d.crop_size!r}: must be (min, max), two "
                             f"positive integers")
        lo, hi = d.crop_size
        if not 0 < lo <= hi or lo > min(d.crop_resize_sides):
            raise ValueError(f"dataset.crop_size {tuple(d.crop_size)}: needs 0 < min <= max and "
                             f"min <= every dataset.crop_resize_sides {d.crop_resize_sides}")
        if not 0.0 <= d.multiscale_prob <= 1.0:
            raise ValueError(f"dataset.multiscale_prob {d.multiscale_prob} is not a probability")


def _is_size(value) -> bool:
    """Two positive integers (a tuple or list, as configs and JSON give them)."""
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _check_augmentation(d) -> None:
    if d.augmentation not in ("reference", "light"):
        raise ValueError(f"dataset.augmentation {d.augmentation!r}: expected 'reference' or "
                         f"'light'")


# ----------------------------------------------------------------------------- plans


# ----------------------------------------------------------------------------- steps


# ----------------------------------------------------------------------------- output
def finalize(sample: Sample, orig_size: tuple[int, int], record: HoiRecord, tables: ClassTables,
             dataset_config, canvas: Optional[Sequence[int]] = None,
             out: Optional[np.ndarray] = None) -> dict:
    """The example dict: normalised padded image, pixel mask, CLIP view and padded pair targets.

    `orig_size` is the (h, w) of the decoded image before any step; `canvas` (H, W) the padded
    size (default `dataset.canvas`). `out`, if given, is a zero-filled [H, W, 3] f32 array that
    becomes `image` (the loader passes a row of its batch array, saving a copy of the image).
    """
    d = dataset_config
    sample = sanitize(sample)
    w, h = sample.image.size
    canvas_h, canvas_w = d.canvas if canvas is None else canvas
    if h > canvas_h or w > canvas_w:
        raise ValueError(f"{record.file_name} (record {record.image_id}): resized image {h}x{w} "
                         f"does not fit the canvas {canvas_h}x{canvas_w} (dataset.canvas or a "
                         f"bucket); raise the canvas or lower dataset.max_side ({d.max_side})")
    if out is None:
        image = np.zeros((canvas_h, canvas_w, 3), np.float32)
    elif out.shape == (canvas_h, canvas_w, 3) and out.dtype == np.float32:
        image = out
    else:
        raise ValueError(f"out: {out.shape} {out.dtype}, expected ({canvas_h}, {canvas_w}, 3) "
                         f"float32")
    pixels = np.asarray(sample.image)
    for c in range(3):  # a table look-up: 3x faster than the arithmetic, and the same floats
        image[:h, :w, c] = _NORMALIZED[c][pixels[..., c]]
    pixel_mask = np.zeros((canvas_h, canvas_w), bool)
    pixel_mask[:h, :w] = True
    example = {"image": image, "pixel_mask": pixel_mask,
               "clip_image": clip_view(sample.image, d.clip_image_size),
               "image_id": np.int32(record.image_id),
               "orig_size": np.array(orig_size, np.int32)}
    example.update(pair_targets(sample, tables, d.max_pairs, record.file_name))
    return example


def clip_view(image: Image.Image, size: int) -> np.ndarray:
    """[size, size, 3] f32: bicubic short side to `size`, centre crop, CLIP mean/std (§3.3)."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    crop = np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255.0
    return (crop - CLIP_MEAN) / CLIP_STD


def pair_targets(sample: Sample, tables: ClassTables, max_pairs: int, name: str) -> dict:
    """One row per unique (subject, object) pair, in order of first appearance, padded to M.

    Returns `sub_boxes`, `obj_boxes` [M, 4] cxcywh normalised by the image size, `obj_labels`
    [M], `obj_exists` [M], `hoi_labels` [M, K], `pair_mask` [M].
    """
    m = max_pairs
    out = {"sub_boxes": np.zeros((m, 4), np.float32), "obj_boxes": np.zeros((m, 4), np.float32),
           "obj_labels": np.zeros(m, np.int32), "obj_exists": np.zeros(m, bool),
           "hoi_labels": np.zeros((m, tables.num_hois), np.float32),
           "pair_mask": np.zeros(m, bool)}
    w, h = sample.image.size
    boxes = _cxcywh(sample.boxes) / np.array([w, h, w, h], np.float32)
    rows, dropped = {}, set()
    for sub, obj, _, hoi in sample.hois.tolist():
        if (sub, obj) not in rows:
            if len(rows) == m:
                dropped.add((sub, obj))
                continue
            rows[(sub, obj)] = r = len(rows)
            out["sub_boxes"][r] = boxes[sub]
            out["pair_mask"][r] = True
            if obj == -1:
                if tables.no_object_index is None:
                    raise ValueError(f"{name}: a pair without object, but the "
                                     f"'{tables.name}' tables have no no-object class")
                out["obj_labels"][r] = tables.no_object_index
            else:
                out["obj_boxes"][r], out["obj_labels"][r] = boxes[obj], sample.labels[obj]
                out["obj_exists"][r] = True
        r = rows[(sub, obj)]
        out["hoi_labels"][r, hoi] = 1.0
    if dropped:
        logging.debug("%s: %d pairs beyond dataset.max_pairs = %d dropped", name, len(dropped), m)
    return out


def _cxcywh(boxes: np.ndarray) -> np.ndarray:
    """[n, 4] xyxy -> [n, 4] (cx, cy, w, h)."""
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]],
                          axis=1).reshape(-1, 4)
