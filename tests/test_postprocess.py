"""Tests of hoiclip_jax/eval/scoring.py and nms.py: HICO top-k triplets (§7.1) and triplet NMS."""
import json
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from hoiclip_jax.eval import nms, scoring

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hico_eval"
LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25


def _topk_inputs():
    """Two images, N = 2 queries, K = 3 HOI classes, O = 2 objects (+ no object)."""
    hoi0 = [[0.0, LN3, -LN3], [0.0, -LN3, LN3]]
    obj0 = [[0.0, LN3, 5.0], [-LN3, 0.0, -5.0]]
    # Image 1 is image 0 with its two queries swapped.
    hoi = jnp.array([hoi0, hoi0[::-1]], jnp.float32)
    obj = jnp.array([obj0, obj0[::-1]], jnp.float32)
    sub = jnp.array([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]] * 2, jnp.float32)
    objb = sub[:, ::-1]
    orig_size = jnp.array([[100, 200], [300, 50]], jnp.int32)  # (h, w)
    hoi_to_obj = jnp.array([0, 1, 1], jnp.int32)
    return hoi, obj, sub, objb, orig_size, hoi_to_obj


def test_hico_topk_scores_ids_and_pixel_boxes():
    out = scoring.hico_topk(*_topk_inputs(), k=4)
    # Image 0 by hand: sigmoid(hoi) + sigmoid(obj)[hoi_to_obj]**2 (a sum, not a product):
    # q0: [0.5 + 0.25, 0.75 + 0.5625, 0.25 + 0.5625]; q1: [0.5 + 0.0625, 0.25 + 0.25, 0.75 + 0.25].
    np.testing.assert_allclose(out["scores"], [[1.3125, 1.0, 0.8125, 0.75]] * 2, atol=1e-6)
    np.testing.assert_array_equal(out["hoi_ids"], [[1, 2, 2, 0], [1, 2, 2, 0]])
    np.testing.assert_array_equal(out["query_ids"], [[0, 1, 0, 0], [1, 0, 1, 1]])
    # cxcywh (0.5, 0.5, 0.2, 0.4) in a 200 x 100 (w x h) image -> x 80..120, y 30..70.
    np.testing.assert_allclose(out["sub_xyxy"][0], [[80, 30, 120, 70], [0, 50, 100, 100]],
                               atol=1e-4)
    np.testing.assert_allclose(out["obj_xyxy"][0], [[0, 50, 100, 100], [80, 30, 120, 70]],
                               atol=1e-4)
    # Image 1 is 50 wide and 300 high.
    np.testing.assert_allclose(out["sub_xyxy"][1], [[20, 90, 30, 210], [0, 150, 25, 300]],
                               atol=1e-4)
    assert out["scores"].shape == (2, 4) and out["sub_xyxy"].shape == (2, 2, 4)


def test_hico_topk_ignores_no_object_logit_and_checks_k():
    hoi, obj, sub, objb, size, h2o = _topk_inputs()
    base = scoring.hico_topk(hoi, obj, sub, objb, size, h2o, k=6)
    changed = scoring.hico_topk(hoi, obj.at[..., -1].set(-30.0), sub, objb, size, h2o, k=6)
    for key in base:
        np.testing.assert_array_equal(base[key], changed[key])
    with pytest.raises(ValueError, match="k=7"):
        scoring.hico_topk(hoi, obj, sub, objb, size, h2o, k=7)


def _reference_nms(sub, obj, cls, scores, threshold, alpha, beta):
    """Slow oracle written from the rule: per class (first-appearance order) greedy loop."""
    keep = []
    for c in dict.fromkeys(cls.tolist()):
        idx = np.flatnonzero(cls == c)
        order = list(idx[np.argsort(scores[idx], kind="stable")[::-1]])
        while order:
            i, rest = order[0], order[1:]
            keep.append(int(i))
            survivors = []
            for j in rest:
                ovr = (nms.nms_iou(sub[[i]], sub[[j]])[0] ** alpha
                       * nms.nms_iou(obj[[i]], obj[[j]])[0] ** beta)
                if ovr <= threshold:
                    survivors.append(j)
            order = survivors
    return keep


def _random_triplets(rng, n, num_classes):
    """Clustered boxes and few classes, so that many pairs overlap near the threshold."""
    centres, sizes = rng.uniform(50, 150, (3, 2)), rng.uniform(20, 30, (3, 2))
    which = rng.integers(0, 3, n)
    xy = centres[which] + rng.normal(0, 2, (n, 2))
    wh = sizes[which] + rng.normal(0, 2, (n, 2))
    sub = np.concatenate([xy, xy + wh], 1)
    obj = sub + rng.normal(0, 1, (n, 4))
    scores = np.round(rng.uniform(0, 1, n), 1)  # rounding makes many exact ties
    return sub, obj, rng.integers(0, num_classes, n), scores


def test_triplet_nms_matches_slow_oracle_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        sub, obj, cls, scores = _random_triplets(rng, 40, 4)
        got = nms.triplet_nms(sub, obj, cls, scores, 0.7, 1.0, 0.5)
        assert got.tolist() == _reference_nms(sub, obj, cls, scores, 0.7, 1.0, 0.5)
        assert len(got) < 40  # the data is made to suppress something


def test_triplet_nms_batch_equals_per_image_and_chunking(monkeypatch):
    rng = np.random.default_rng(1)
    images = [_random_triplets(rng, int(n), 3) for n in (30, 1, 0, 45)]
    expected, offset = [], 0
    for sub, obj, cls, scores in images:
        expected += (nms.triplet_nms(sub, obj, cls, scores, 0.7, 1.0, 0.5)
                     + offset).tolist()
        offset += len(scores)
    flat = [np.concatenate(parts) for parts in zip(*images)]
    image_ids = np.repeat(np.arange(4), [len(im[3]) for im in images])
    got = nms.triplet_nms_batch(image_ids, *flat, 0.7, 1.0, 0.5)
    assert got.tolist() == expected
    monkeypatch.setattr(nms, "_MAX_PAIRS_PER_CHUNK", 50)
    assert nms.triplet_nms_batch(image_ids, *flat, 0.7, 1.0, 0.5).tolist() == expected


def test_triplet_nms_hand_case_greedy_chain_classes_and_order():
    # Same class 1: A (0.9), B (0.8) overlaps A by IoU 0.818, C (0.7) overlaps A by 0.667 and B
    # by 0.818. B is suppressed by A; C survives because only kept triplets suppress.
    a, b, c = [0, 0, 9, 9], [1, 0, 10, 9], [2, 0, 11, 9]
    obj = [[50, 50, 80, 80]] * 4
    sub = np.array([c, a, a, b], float)  # index 1 is class 2 (never suppressed by class 1)
    cls = np.array([1, 2, 1, 1])
    scores = np.array([0.7, 0.95, 0.9, 0.8])
    keep = nms.triplet_nms(sub, np.array(obj, float), cls, scores, 0.7, 1.0, 0.5)
    # Class 1 first (it appears first), in NMS order A, C; then class 2.
    assert keep.tolist() == [2, 0, 1]


def test_triplet_nms_overlap_formula_and_strict_threshold():
    box = [0, 0, 9, 9]
    # IoU_sub 0.9, IoU_obj 0.64: 0.9 * 0.64**0.5 = 0.72 > 0.7 but 0.9 * 0.64 = 0.576 <= 0.7.
    sub = np.array([box, [0, 0, 9, 8]], float)
    obj = np.array([box, [0, 0, 7, 7]], float)
    cls, scores = np.array([3, 3]), np.array([0.6, 0.5])
    assert nms.triplet_nms(sub, obj, cls, scores, 0.7, 1.0, 0.5).tolist() == [0]
    assert nms.triplet_nms(sub, obj, cls, scores, 0.7, 1.0, 1.0).tolist() == [0, 1]
    # Suppression needs overlap > threshold: IoU_sub exactly 0.5 with beta 0 is kept at 0.5.
    sub = np.array([box, [0, 0, 9, 4]], float)
    assert nms.triplet_nms(sub, obj, cls, scores, 0.5, 1.0, 0.0).tolist() == [0, 1]
    assert nms.triplet_nms(sub, obj, cls, scores, 0.49, 1.0, 0.0).tolist() == [0]


def test_triplet_nms_reference_quirks():
    obj = np.array([[0, 0, 9, 9]] * 2, float)
    cls = np.array([0, 0])
    # Equal scores: the later index comes first (argsort()[::-1]) and suppresses the earlier.
    sub = np.array([[0, 0, 9, 9]] * 2, float)
    assert nms.triplet_nms(sub, obj, cls, np.array([0.5, 0.5]), 0.7, 1, 0.5).tolist() \
        == [1]
    # The NMS IoU clamps instead of testing overlap strictly: two 0.1-px wide boxes that only
    # touch get IoU 11 / 13.2 = 0.83 and are suppressed (the evaluator's IoU would be 0).
    sub = np.array([[0, 0, 0.1, 10], [0.1, 0, 0.2, 10]])
    assert nms.nms_iou(sub[:1], sub[1:])[0] == pytest.approx(11 / 13.2)
    assert nms.triplet_nms(sub, obj, cls, np.array([0.9, 0.8]), 0.7, 1, 0.5).tolist() \
        == [0]
    # A zero union gives a NaN overlap, which the reference treats as "not <= threshold".
    sub = np.array([[0, 0, -1, -1]] * 2, float)
    assert np.isnan(nms.nms_iou(sub[:1], sub[1:])[0])
    assert nms.triplet_nms(sub, obj, cls, np.array([0.9, 0.8]), 0.7, 1, 0.5).tolist() \
        == [0]


def test_triplet_nms_rejects_bad_inputs():
    box = np.zeros((2, 4))
    with pytest.raises(ValueError, match="'hoi_ids' has 1 rows"):
        nms.triplet_nms(box, box, np.array([0]), np.array([0.1, 0.2]), 0.7, 1, 0.5)
    with pytest.raises(ValueError, match="'scores' has a non-finite value at index 1"):
        nms.triplet_nms(box, box, np.array([0, 0]), np.array([0.1, np.nan]), 0.7, 1, 0.5)
    with pytest.raises(ValueError, match="non-decreasing"):
        nms.triplet_nms_batch(np.array([1, 0]), box, box, np.array([0, 0]),
                                      np.array([0.1, 0.2]), 0.7, 1, 0.5)


@pytest.mark.parametrize("name", ["h1_default", "h2_easy"])
def test_triplet_nms_reproduces_fixture_keep_lists(name):
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    config = fixture["evaluator_config"]
    for image in fixture["images"]:
        boxes = np.array(image["pred_boxes"])
        hois = np.array(image["pred_hois"])
        keep = nms.triplet_nms(boxes[hois[:, 0].astype(int)], boxes[hois[:, 1].astype(int)],
                                       hois[:, 2].astype(int), hois[:, 3], config["thres_nms"],
                                       config["nms_alpha"], config["nms_beta"])
        assert keep.tolist() == image["nms_keep"], image["filename"]
