"""FROZEN copy of data_pipeline/transforms.py at commit b0fe533: the 'light' augmentation that
the demo's accuracy was measured with (README "What `make demo` gives").

Do not edit. tests/test_transforms.py and tests/test_loader.py check that the live 'light' path
(`dataset.augmentation = 'light'`) gives bit-identical outputs to these functions for the same
image, record and rng. Keeping the code, rather than stored arrays, makes that check independent
of the Pillow and numpy versions, since both sides run on the same libraries.
"""
import dataclasses
import logging

import numpy as np
from PIL import Image

from data_pipeline.class_tables import ClassTables
from data_pipeline.hico_reader import HoiRecord

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as PIL's 'L' mode


@dataclasses.dataclass(frozen=True)
class Sample:
    """An image during augmentation.

    Attributes:
        image: PIL RGB image.
        boxes: [n, 4] float32 xyxy in pixels of `image`.
        labels: [n] int32 object index of each box.
        hois: [h, 4] int32 (subject box, object box or -1, verb, HOI) indexing `boxes`.
    """
    image: Image.Image
    boxes: np.ndarray
    labels: np.ndarray
    hois: np.ndarray


def train_example(image: Image.Image, record: HoiRecord, tables: ClassTables, dataset_config,
                  rng: np.random.Generator) -> dict:
    """One augmented training example; all randomness comes from `rng`."""
    d = dataset_config
    sample = sanitize(Sample(image, record.boxes, record.box_labels, record.hois))
    sample = random_flip(sample, rng, d.flip_prob)
    sample = color_jitter(sample, rng, d.color_jitter)
    short = int(d.train_short_sides[rng.integers(len(d.train_short_sides))])
    sample = resize(sample, short, d.max_side)
    return finalize(sample, image.size[::-1], record, tables, d)


def test_example(image: Image.Image, record: HoiRecord, tables: ClassTables,
                 dataset_config) -> dict:
    """One deterministic test example: resize to `test_short_side` (capped by `max_side`)."""
    d = dataset_config
    sample = sanitize(Sample(image, record.boxes, record.box_labels, record.hois))
    sample = resize(sample, d.test_short_side, d.max_side)
    return finalize(sample, image.size[::-1], record, tables, d)


# ----------------------------------------------------------------------------- steps
def sanitize(sample: Sample) -> Sample:
    """Clamps boxes to the image, drops empty ones and the HOIs that refer to them (§3.3)."""
    w, h = sample.image.size
    boxes = np.clip(sample.boxes, 0, [w, h, w, h]).astype(np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if keep.all():
        return dataclasses.replace(sample, boxes=boxes)
    new_index = np.full(len(keep) + 1, -2, np.int32)  # entry -1 maps 'no object' to itself
    new_index[np.flatnonzero(keep)] = np.arange(keep.sum())
    new_index[-1] = -1
    hois = sample.hois.copy()
    hois[:, 0], hois[:, 1] = new_index[hois[:, 0]], new_index[hois[:, 1]]
    hois = hois[(hois[:, 0] >= 0) & (hois[:, 1] >= -1)]
    return Sample(sample.image, boxes[keep], sample.labels[keep], hois)


def random_flip(sample: Sample, rng: np.random.Generator, prob: float) -> Sample:
    """Mirrors the image left-right with probability `prob` (HICO verbs have no side)."""
    if rng.random() >= prob:
        return sample
    w = sample.image.size[0]
    boxes = sample.boxes.copy()
    boxes[:, 0], boxes[:, 2] = w - sample.boxes[:, 2], w - sample.boxes[:, 0]
    image = sample.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return dataclasses.replace(sample, image=image, boxes=boxes)


def color_jitter(sample: Sample, rng: np.random.Generator, strength: float) -> Sample:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s], applied in random order
    (torchvision ColorJitter(s, s, s), hue untouched)."""
    if strength <= 0:
        return sample
    x = np.asarray(sample.image, np.float32)
    factors = rng.uniform(max(0.0, 1 - strength), 1 + strength, size=3)
    for op in rng.permutation(3):
        f = factors[op]
        if op == 0:    # brightness: blend with black
            x = x * f
        elif op == 1:  # contrast: blend with the mean grey level
            x = f * x + (1 - f) * float((x @ _GRAY).mean())
        else:          # saturation: blend with the grey image
            x = f * x + (1 - f) * (x @ _GRAY)[..., None]
        x = np.clip(x, 0, 255)
    image = Image.fromarray(np.rint(x).astype(np.uint8))
    return dataclasses.replace(sample, image=image)


def resized_size(w: int, h: int, short: int, max_side: int) -> tuple[int, int]:
    """(new_w, new_h): short side to `short`, aspect kept, long side at most `max_side`."""
    lo, hi = min(w, h), max(w, h)
    if hi * short > max_side * lo:  # the long side would exceed max_side: shrink the target
        short = int(round(max_side * lo / hi))
    long = min(max_side, int(short * hi / lo))
    return (short, long) if w <= h else (long, short)


def resize(sample: Sample, short: int, max_side: int) -> Sample:
    """Bilinear resize of the image (`resized_size`) with the boxes scaled to match."""
    w, h = sample.image.size
    new_w, new_h = resized_size(w, h, short, max_side)
    if (new_w, new_h) == (w, h):
        return sample
    scale = np.array([new_w / w, new_h / h] * 2, np.float32)
    return dataclasses.replace(sample, image=sample.image.resize((new_w, new_h), Image.BILINEAR),
                               boxes=sample.boxes * scale)


# ----------------------------------------------------------------------------- output
def finalize(sample: Sample, orig_size: tuple[int, int], record: HoiRecord, tables: ClassTables,
             dataset_config) -> dict:
    """The example dict: normalised padded image, pixel mask, CLIP view and padded pair targets.

    `orig_size` is the (h, w) of the decoded image before any step.
    """
    d = dataset_config
    sample = sanitize(sample)
    w, h = sample.image.size
    canvas_h, canvas_w = d.canvas
    if h > canvas_h or w > canvas_w:
        raise ValueError(f"{record.file_name} (record {record.image_id}): resized image {h}x{w} "
                         f"does not fit dataset.canvas {canvas_h}x{canvas_w}; raise the canvas "
                         f"or lower dataset.max_side ({d.max_side})")
    pixels = (np.asarray(sample.image, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    image = np.zeros((canvas_h, canvas_w, 3), np.float32)
    image[:h, :w] = pixels
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
    [M], `obj_exists` [M], `hoi_labels` [M, K], `verb_labels` [M, V], `pair_mask` [M].
    """
    m = max_pairs
    out = {"sub_boxes": np.zeros((m, 4), np.float32), "obj_boxes": np.zeros((m, 4), np.float32),
           "obj_labels": np.zeros(m, np.int32), "obj_exists": np.zeros(m, bool),
           "hoi_labels": np.zeros((m, tables.num_hois), np.float32),
           "verb_labels": np.zeros((m, tables.num_verbs), np.float32),
           "pair_mask": np.zeros(m, bool)}
    w, h = sample.image.size
    boxes = _cxcywh(sample.boxes) / np.array([w, h, w, h], np.float32)
    rows, dropped = {}, set()
    for sub, obj, verb, hoi in sample.hois.tolist():
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
        out["verb_labels"][r, verb] = 1.0
        out["hoi_labels"][r, hoi] = 1.0
    if dropped:
        logging.debug("%s: %d pairs beyond dataset.max_pairs = %d dropped", name, len(dropped), m)
    return out


def _cxcywh(boxes: np.ndarray) -> np.ndarray:
    """[n, 4] xyxy -> [n, 4] (cx, cy, w, h)."""
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]],
                          axis=1).reshape(-1, 4)
