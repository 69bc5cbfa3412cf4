"""Box conversions, IoU and generalised IoU in jnp (DETR conventions).

Boxes are normalised to the image size and carry no "+1" pixel term: `cxcywh` is (centre x,
centre y, width, height) and `xyxy` is (x0, y0, x1, y1) with x1 >= x0, y1 >= y0 for real boxes.
Padded GT boxes are all zeros, so every division is guarded: degenerate boxes give finite values
(IoU 0, GIoU 0 between two empty boxes) and finite gradients, which matters because the losses
mask such entries out by multiplication and a NaN times 0 is still NaN.

Functions take any number of leading batch dimensions; the pairwise ones broadcast them, e.g.
`[L, B, N, 4] x [B, M, 4] -> [L, B, N, M]`.
"""
import jax.numpy as jnp

# Smallest area used as a denominator. Normalised areas of real boxes are far above it (a 1x1
# pixel box in a 1333x1333 image is 5.6e-7), so it only changes the result for degenerate boxes.
_EPS = 1e-9


def cxcywh_to_xyxy(boxes: jnp.ndarray) -> jnp.ndarray:
    """[..., 4] cxcywh -> [..., 4] xyxy."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_cxcywh(boxes: jnp.ndarray) -> jnp.ndarray:
    """[..., 4] xyxy -> [..., 4] cxcywh."""
    x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
    """[..., 4] xyxy -> [...] area; inverted boxes count as empty."""
    wh = jnp.clip(boxes[..., 2:] - boxes[..., :2], 0.0)
    return wh[..., 0] * wh[..., 1]


def _safe_div(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
    # jnp.maximum (not jnp.where) keeps the gradient finite when den is 0.
    return num / jnp.maximum(den, _EPS)


def _iou_and_hull(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """IoU, union and enclosing-box area of boxes that already broadcast against each other."""
    inter_lo = jnp.maximum(a[..., :2], b[..., :2])
    inter_hi = jnp.minimum(a[..., 2:], b[..., 2:])
    inter_wh = jnp.clip(inter_hi - inter_lo, 0.0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    hull_wh = jnp.clip(jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2]),
                       0.0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return _safe_div(inter, union), union, hull


def _giou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    iou, union, hull = _iou_and_hull(a, b)
    return iou - _safe_div(hull - union, hull)


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """IoU of every box in `a` with every box in `b`.

    Args:
      a: [..., N, 4] xyxy.
      b: [..., M, 4] xyxy (leading dims broadcast with those of `a`).

    Returns:
      [..., N, M] IoU in [0, 1].
    """
    return _iou_and_hull(a[..., :, None, :], b[..., None, :, :])[0]


def pairwise_giou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Generalised IoU of every box in `a` ([..., N, 4] xyxy) with every box in `b` ([..., M, 4]).

    Returns [..., N, M] values in [-1, 1].
    """
    return _giou(a[..., :, None, :], b[..., None, :, :])


def elementwise_giou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Generalised IoU of matching boxes: [..., 4] xyxy x [..., 4] xyxy -> [...]."""
    return _giou(a, b)
