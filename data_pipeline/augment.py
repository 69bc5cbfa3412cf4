"""Training augmentation as plans (reference §3.3): every random choice is drawn first, from the
image size alone, into a `Plan`; `apply_plan` then touches the pixels and boxes of a `Sample`.

  'reference'  the reference pipeline: keep the first `max_boxes` boxes; horizontal flip
               (`flip_prob`); torchvision ColorJitter(b, c, s) with b = c = s = `color_jitter`;
               then, with probability `multiscale_prob`, a multi-scale resize (short side from
               `train_short_sides`, long side <= `max_side`), otherwise resize (short side from
               `crop_resize_sides`) -> random crop (width and height in `crop_size`) ->
               multi-scale resize. A crop drops the boxes it leaves empty and their pairs.
  'light'      flip, a float colour jitter and one multi-scale resize: the synthetic demo's
               augmentation (tests/frozen_light_transforms.py).

Boxes are xyxy in pixel edges of the current image (a box [0, 0, w, h] covers the whole image).
"""
import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageEnhance

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as PIL's 'L' mode


# torchvision's PIL ColorJitter ops, indexed as Plan.jitter's op: brightness blends with black,
# contrast with the rounded mean grey level, saturation with the grey image.
_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


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


@dataclasses.dataclass(frozen=True)
class Plan:
    """The random choices of one training example, drawn before any pixel is touched.

    Attributes:
        flip: mirror left-right first.
        jitter: (op, factor) in the order applied; op 0 brightness, 1 contrast, 2 saturation.
        geometry: steps in order: ('resize', (w, h)) or ('crop', (left, top, w, h)).
        size: (w, h) of the image after the last step.
    """
    flip: bool
    jitter: tuple
    geometry: tuple
    size: tuple[int, int]


def reference_plan(rng: np.random.Generator, width: int, height: int, dataset_config) -> Plan:
    """The random choices of the reference augmentation (§3.3) for a `width` x `height` image.

    RandomSizeCrop draws the crop's width in [lo, min(image width, hi)] and height likewise
    (bounds included), then its top-left corner uniformly, as DETR's transforms.
    """
    d = dataset_config
    flip = bool(rng.random() < d.flip_prob)
    order = rng.permutation(3)  # torchvision ColorJitter draws the order, then the factors
    factors = _jitter_factors(rng, d.color_jitter)
    jitter = tuple((int(op), float(factors[op])) for op in order) if d.color_jitter > 0 else ()
    if rng.random() < d.multiscale_prob:
        size = resized_size(width, height, _choice(rng, d.train_short_sides), d.max_side)
        return Plan(flip, jitter, (("resize", size),), size)
    first = resized_size(width, height, _choice(rng, d.crop_resize_sides), None)
    lo, hi = d.crop_size
    crop_w = int(rng.integers(lo, min(first[0], hi) + 1))
    crop_h = int(rng.integers(lo, min(first[1], hi) + 1))
    top = int(rng.integers(0, first[1] - crop_h + 1))
    left = int(rng.integers(0, first[0] - crop_w + 1))
    size = resized_size(crop_w, crop_h, _choice(rng, d.train_short_sides), d.max_side)
    return Plan(flip, jitter, (("resize", first), ("crop", (left, top, crop_w, crop_h)),
                               ("resize", size)), size)


def light_plan(rng: np.random.Generator, width: int, height: int, dataset_config) -> Plan:
    """The random choices of the 'light' augmentation, drawn in the order of the code the demo
    was measured with: flip, jitter factors, jitter order, short side."""
    d = dataset_config
    flip = bool(rng.random() < d.flip_prob)
    jitter = ()
    if d.color_jitter > 0:
        factors = rng.uniform(max(0.0, 1 - d.color_jitter), 1 + d.color_jitter, size=3)
        # numpy float64 factors, as that code used them (a Python float would round the float32
        # pixels differently under numpy's promotion rules).
        jitter = tuple((int(op), factors[op]) for op in rng.permutation(3))
    size = resized_size(width, height, _choice(rng, d.train_short_sides), d.max_side)
    return Plan(flip, jitter, (("resize", size),), size)


def _jitter_factors(rng: np.random.Generator, strength: float) -> np.ndarray:
    """[3] brightness, contrast, saturation factors, uniform in [max(0, 1 - s), 1 + s]."""
    if strength <= 0:
        return np.ones(3)
    return rng.uniform(max(0.0, 1 - strength), 1 + strength, size=3)


def _choice(rng: np.random.Generator, values: Sequence[int]) -> int:
    return int(values[rng.integers(len(values))])


def apply_plan(sample: Sample, plan: Plan,
               jitter: Callable[[Sample, tuple], Sample]) -> Sample:
    """Flip, colour jitter (`jitter(sample, plan.jitter)`), then the geometry steps."""
    if plan.flip:
        sample = flip(sample)
    sample = jitter(sample, plan.jitter)
    for kind, arg in plan.geometry:
        sample = resize(sample, arg) if kind == "resize" else crop(sample, arg)
    return sample


def first_boxes(sample: Sample, n: int) -> Sample:
    """Keeps the first `n` boxes (all if n <= 0) and the HOIs among them: the reference trains
    on at most num_queries boxes of an image, taken in annotation order (§3.3)."""
    if n <= 0 or len(sample.boxes) <= n:
        return sample
    return _keep_boxes(sample, np.arange(len(sample.boxes)) < n)


def sanitize(sample: Sample) -> Sample:
    """Clamps boxes to the image, drops empty ones and the HOIs that refer to them (§3.3)."""
    w, h = sample.image.size
    boxes = np.clip(sample.boxes, 0, [w, h, w, h]).astype(np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if keep.all():
        return dataclasses.replace(sample, boxes=boxes)
    return _keep_boxes(dataclasses.replace(sample, boxes=boxes), keep)


def _keep_boxes(sample: Sample, keep: np.ndarray) -> Sample:
    """Keeps the boxes where `keep` [n] bool is True, re-indexes the HOIs and drops those that
    lose their subject or their object (an HOI without object, index -1, stays)."""
    new_index = np.full(len(keep) + 1, -2, np.int32)  # entry -1 maps 'no object' to itself
    new_index[np.flatnonzero(keep)] = np.arange(keep.sum())
    new_index[-1] = -1
    hois = sample.hois.copy()
    hois[:, 0], hois[:, 1] = new_index[hois[:, 0]], new_index[hois[:, 1]]
    hois = hois[(hois[:, 0] >= 0) & (hois[:, 1] >= -1)]
    return Sample(sample.image, sample.boxes[keep], sample.labels[keep], hois)


def flip(sample: Sample) -> Sample:
    """Mirrors the image left-right (HICO verbs have no side)."""
    w = sample.image.size[0]
    boxes = sample.boxes.copy()
    boxes[:, 0], boxes[:, 2] = w - sample.boxes[:, 2], w - sample.boxes[:, 0]
    image = sample.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return dataclasses.replace(sample, image=image, boxes=boxes)


def enhance(sample: Sample, jitter: tuple) -> Sample:
    """torchvision ColorJitter on a PIL image: each (op, factor) in turn with PIL ImageEnhance,
    8-bit after every op (the reference's integer rounding and clipping)."""
    image = sample.image
    for op, factor in jitter:
        image = _ENHANCERS[op](image).enhance(factor)
    return dataclasses.replace(sample, image=image)


def float_jitter(sample: Sample, jitter: tuple) -> Sample:
    """The 'light' colour jitter: the same three blends in float, rounded to 8 bits once."""
    if not jitter:
        return sample
    x = np.asarray(sample.image, np.float32)
    for op, f in jitter:
        if op == 0:    # brightness: blend with black
            x = x * f
        elif op == 1:  # contrast: blend with the mean grey level
            x = f * x + (1 - f) * float((x @ _GRAY).mean())
        else:          # saturation: blend with the grey image
            x = f * x + (1 - f) * (x @ _GRAY)[..., None]
        x = np.clip(x, 0, 255)
    image = Image.fromarray(np.rint(x).astype(np.uint8))
    return dataclasses.replace(sample, image=image)


def resized_size(w: int, h: int, short: int, max_side: Optional[int]) -> tuple[int, int]:
    """(new_w, new_h): short side to `short`, aspect kept, long side at most `max_side` (None:
    no cap). As DETR's resize, except that the long side is also capped after rounding."""
    lo, hi = min(w, h), max(w, h)
    if max_side is not None and hi * short > max_side * lo:  # the long side would be too long
        short = int(round(max_side * lo / hi))
    long = int(short * hi / lo)
    if max_side is not None:
        long = min(max_side, long)
    return (short, long) if w <= h else (long, short)


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Bilinear resize of the image to `size` (w, h) with the boxes scaled to match."""
    w, h = sample.image.size
    new_w, new_h = size
    if (new_w, new_h) == (w, h):
        return sample
    scale = np.array([new_w / w, new_h / h] * 2, np.float32)
    return dataclasses.replace(sample, image=sample.image.resize((new_w, new_h), Image.BILINEAR),
                               boxes=sample.boxes * scale)


def crop(sample: Sample, region: tuple[int, int, int, int]) -> Sample:
    """Crops (left, top, w, h); boxes are shifted, clamped to the crop, and those left empty are
    dropped with their HOIs (the reference drops the pairs whose box a crop removes)."""
    left, top, w, h = region
    image = sample.image.crop((left, top, left + w, top + h))
    boxes = sample.boxes - np.array([left, top, left, top], np.float32)
    return sanitize(dataclasses.replace(sample, image=image, boxes=boxes))
