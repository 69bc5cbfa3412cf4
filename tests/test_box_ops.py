"""box_ops against hand-computed values and a plain-python reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hoiclip_jax.lib import box_ops


def _py_iou_giou(a, b):
    """IoU and GIoU of two xyxy boxes, written out in plain python."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = inter / union
    return iou, iou - (hull - union) / hull


def _random_xyxy(rng, n):
    lo = rng.uniform(0, 0.6, size=(n, 2))
    return np.concatenate([lo, lo + rng.uniform(0.05, 0.4, size=(n, 2))], axis=1)


def test_conversions_known_values_and_round_trip():
    cxcywh = np.array([[0.5, 0.4, 0.2, 0.6]], np.float32)
    xyxy = np.array([[0.4, 0.1, 0.6, 0.7]], np.float32)
    np.testing.assert_allclose(box_ops.cxcywh_to_xyxy(cxcywh), xyxy, atol=1e-7)
    np.testing.assert_allclose(box_ops.xyxy_to_cxcywh(xyxy), cxcywh, atol=1e-7)
    boxes = np.random.default_rng(0).uniform(size=(2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(box_ops.xyxy_to_cxcywh(box_ops.cxcywh_to_xyxy(boxes)), boxes,
                               atol=1e-6)


def test_hand_computed_overlap():
    a = jnp.array([[0.0, 0.0, 0.2, 0.2]])
    b = jnp.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.6, 0.7]])
    # First pair: inter 0.01, union 0.07, hull 0.09. Second: disjoint, union 0.06, hull 0.42.
    np.testing.assert_allclose(box_ops.pairwise_iou(a, b), [[1 / 7, 0.0]], rtol=1e-5)
    np.testing.assert_allclose(box_ops.pairwise_giou(a, b),
                               [[1 / 7 - 0.02 / 0.09, -(0.42 - 0.06) / 0.42]], rtol=1e-5)


def test_pairwise_matches_python_reference_and_elementwise():
    rng = np.random.default_rng(1)
    a, b = _random_xyxy(rng, 5), _random_xyxy(rng, 3)
    iou, giou = box_ops.pairwise_iou(a, b), box_ops.pairwise_giou(a, b)
    assert iou.shape == giou.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            ref_iou, ref_giou = _py_iou_giou(a[i], b[j])
            np.testing.assert_allclose(iou[i, j], ref_iou, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(giou[i, j], ref_giou, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(box_ops.elementwise_giou(a[:3], b), np.diag(giou[:3]), rtol=1e-6)


def test_pairwise_broadcasts_leading_dims():
    rng = np.random.default_rng(2)
    pred = np.stack([np.stack([_random_xyxy(rng, 4) for _ in range(2)]) for _ in range(3)])
    gt = np.stack([_random_xyxy(rng, 2) for _ in range(2)])  # [B=2, M=2, 4]
    out = box_ops.pairwise_giou(pred, gt)  # [L=3, B=2, N=4, 4] x [B, M, 4]
    assert out.shape == (3, 2, 4, 2)
    np.testing.assert_allclose(out[2, 1], box_ops.pairwise_giou(pred[2, 1], gt[1]), rtol=1e-6)


def test_degenerate_boxes_are_finite_with_finite_gradients():
    zeros = jnp.zeros((2, 4))
    pred = jnp.array([[0.1, 0.1, 0.3, 0.4], [0.0, 0.0, 0.0, 0.0]])
    for fn in (box_ops.pairwise_iou, box_ops.pairwise_giou):
        assert np.isfinite(np.asarray(fn(pred, zeros))).all()
    np.testing.assert_allclose(box_ops.elementwise_giou(zeros, zeros), [0.0, 0.0])

    grad = jax.grad(lambda p: box_ops.elementwise_giou(p, zeros).sum()
                    + box_ops.pairwise_giou(p, zeros).sum())(pred)
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("fn", [box_ops.pairwise_iou, box_ops.pairwise_giou])
def test_identical_boxes_score_one(fn):
    boxes = _random_xyxy(np.random.default_rng(3), 4)
    np.testing.assert_allclose(np.diag(fn(boxes, boxes)), np.ones(4), rtol=1e-5)
