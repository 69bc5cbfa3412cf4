"""Tests of hoiclip_jax/eval/protocols/hico.py against the reference fixtures and the protocol's quirks."""
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from hoiclip_jax.eval import scoring
from hoiclip_jax.eval.protocols import hico, hico_topk
from tests import fixture_readers

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hico_eval"
REPO = pathlib.Path(__file__).parent.parent
H = [0, 0, 99, 99]        # a human box
O1 = [100, 0, 199, 99]    # an object box
O2 = [110, 0, 209, 99]    # IoU(O1, O2) = 9000 / 11000 = 0.818


def _ap(steps, precision=1.0):
    """The reference's 11-point sum, one step at a time (not `sum`, which compensates), when
    `steps` thresholds reach `precision` and the others none."""
    ap = 0.
    for _ in range(steps):
        ap = ap + precision / 11.
    return ap


def _image(gt_boxes, gt_hois, pred_boxes, pred_hois):
    return {"gt_boxes": np.array(gt_boxes, float).reshape(-1, 4),
            "gt_hois": np.array(gt_hois, int).reshape(-1, 3),
            "pred_boxes": np.array(pred_boxes, float).reshape(-1, 4),
            "pred_hois": np.array(pred_hois, float).reshape(-1, 4)}


def _assert_matches_expected(got, expected):
    for key in ("mAP", "mAP_rare", "mAP_non_rare", "mean_max_recall"):
        assert abs(got[key] - expected[key]) <= 1e-9, key
    for key in ("n_classes_with_gt", "n_rare_in_mean", "n_non_rare_in_mean",
                "n_excluded_no_predictions"):
        assert got[key] == expected[key], key
    per_class = {str(c): v for c, v in got["per_class"].items()}
    assert per_class.keys() == expected["per_class"].keys()
    for c, exp in expected["per_class"].items():
        assert abs(per_class[c]["ap"] - exp["ap"]) <= 1e-12, c
        assert abs(per_class[c]["max_recall"] - exp["max_recall"]) <= 1e-12, c
        for key in ("n_gt", "n_pred", "n_tp", "bucket"):
            assert per_class[c][key] == exp[key], (c, key)


@pytest.fixture(scope="module", params=["h1_default", "h2_easy"])
def fixture(request):
    images, meta = fixture_readers.load_hico_fixture(str(FIXTURES / f"{request.param}.json"))
    return images, meta


def test_fixture_results_without_and_with_nms(fixture):
    images, meta = fixture
    config, rare = meta["evaluator_config"], meta["rare_hoi_ids"]
    num_hois = len(meta["hoi_classes"])
    got = hico.evaluate(images, rare, num_hois, config["overlap_iou"])
    _assert_matches_expected(got, meta["expected"]["no_nms"])
    nms_images = hico.apply_triplet_nms(images, config["thres_nms"], config["nms_alpha"],
                                        config["nms_beta"])
    got = hico.evaluate(nms_images, rare, num_hois, config["overlap_iou"])
    _assert_matches_expected(got, meta["expected"]["nms"])


def test_fixture_nms_keep_lists(fixture):
    images, meta = fixture
    config = meta["evaluator_config"]
    raw = json.loads(pathlib.Path(FIXTURES / f"{meta['name']}.json").read_text())["images"]
    keeps = hico.triplet_nms_keep(images, config["thres_nms"], config["nms_alpha"],
                                  config["nms_beta"])
    assert [k.tolist() for k in keeps] == [im["nms_keep"] for im in raw]


def test_greedy_matching_has_no_fall_back():
    # Two GT HOIs of class 0 share the human; both predictions (same boxes H, O1) match both,
    # but their best (largest min-IoU) is GT 0 each time: the second one is an FP even though
    # GT 1 is free.
    image = _image([H, O1, O2], [[0, 1, 0], [0, 2, 0]], [H, O1],
                   [[0, 1, 0, 0.9], [0, 1, 0, 0.8]])
    stats = hico.evaluate([image], [], 1)["per_class"][0]
    assert (stats["n_gt"], stats["n_pred"], stats["n_tp"]) == (2, 2, 1)
    # rec [0.5, 0.5], prec [1, 0.5]: thresholds 0 .. 0.5 reach precision 1.
    assert stats["ap"] == _ap(6)
    # The target is the *largest* min-IoU: the first prediction (O1) takes GT 0, not GT 1
    # (min-IoU 0.818), so the second one (O3, which matches only GT 1: IoU 0.538) is a TP.
    o3 = [140, 0, 239, 99]
    image["pred_boxes"] = np.array([H, O1, o3], float)
    image["pred_hois"] = np.array([[0, 1, 0, 0.9], [0, 2, 0, 0.8]], float)
    assert hico.evaluate([image], [], 1)["per_class"][0]["n_tp"] == 2


def test_classes_without_prediction_and_images_without_gt():
    images = [
        # Class 1 (rare) is found; class 2 (rare) has GT but no prediction at all.
        _image([H, O1, O2], [[0, 1, 1], [0, 2, 2]], [H, O1], [[0, 1, 1, 0.9]]),
        # No GT in this image: the class-1 prediction is an FP; class 5 has no GT anywhere, so
        # its prediction is not recorded.
        _image([], [], [H, O1], [[0, 1, 1, 0.95], [0, 1, 5, 0.99]]),
    ]
    result = hico.evaluate(images, rare_hois=[1, 2], num_hois=6)
    assert sorted(result["per_class"]) == [1, 2]
    one, two = result["per_class"][1], result["per_class"][2]
    # Class 1: FP (0.95) then TP (0.9): rec [0, 1], prec [0, 0.5] -> 11 x 0.5 / 11.
    assert (one["n_pred"], one["n_tp"], one["bucket"]) == (2, 1, "rare")
    assert one["ap"] == _ap(11, 0.5) == 0.5000000000000001
    assert (two["ap"], two["n_pred"], two["max_recall"]) == (0.0, 0, 0.0)
    assert two["bucket"] == "excluded_no_predictions"
    assert result["mAP"] == pytest.approx(one["ap"] / 2)          # class 2 counts as 0
    assert result["mAP_rare"] == one["ap"]                        # class 2 left out
    assert np.isnan(result["mAP_non_rare"])
    assert result["mean_max_recall"] == 0.5
    assert (result["n_rare_in_mean"], result["n_excluded_no_predictions"]) == (1, 1)


def test_eleven_point_thresholds_quirk():
    # Ten GT HOIs of class 0, three found: recall reaches exactly 0.3, which does not reach the
    # np.arange threshold 0.30000000000000004, so AP = 3/11, not 4/11.
    humans = [[10 * i, 0, 10 * i + 8, 8] for i in range(10)]
    objects = [[10 * i, 50, 10 * i + 8, 58] for i in range(10)]
    gt = [[i, 10 + i, 0] for i in range(10)]
    preds = [[i, 10 + i, 0, 1.0 - 0.1 * i] for i in range(3)]
    result = hico.evaluate([_image(humans + objects, gt, humans + objects, preds)], [], 1)
    stats = result["per_class"][0]
    assert (stats["n_tp"], stats["max_recall"]) == (3, 0.3)
    assert stats["ap"] == _ap(3) and stats["ap"] != pytest.approx(4 / 11)
    # And a perfect class sums eleven 1/11 steps to 1.0000000000000002.
    perfect = hico.evaluate([_image([H, O1], [[0, 1, 0]], [H, O1], [[0, 1, 0, 0.5]])], [], 1)
    assert perfect["per_class"][0]["ap"] == _ap(11) == 1.0000000000000002


def test_plus_one_iou_and_strict_overlap_test():
    gt = np.array([[0, 0, 9, 9]], float)
    # +1 convention: 50 / (100 + 50 - 50) = 0.5 exactly (without it: 36 / 81 = 0.44).
    assert hico.box_iou(gt, np.array([[0, 0, 4, 9]], float))[0] == 0.5
    assert hico.box_iou(gt, np.array([[0, 0, 3, 9]], float))[0] == pytest.approx(0.4)
    # Strict test on raw coordinates: touching boxes and identical zero-width boxes give 0.
    assert hico.box_iou(gt, np.array([[9, 0, 19, 9]], float))[0] == 0.0
    line = np.array([[5, 0, 5, 9]], float)
    assert hico.box_iou(line, line)[0] == 0.0
    # In the evaluator: IoU 0.5 matches (>=), 0.4 does not, and a zero-width GT never matches.
    for pred_box, n_tp in (([0, 0, 4, 9], 1), ([0, 0, 3, 9], 0)):
        image = _image([[0, 0, 9, 9], O1], [[0, 1, 0]], [pred_box, O1], [[0, 1, 0, 0.5]])
        assert hico.evaluate([image], [], 1)["per_class"][0]["n_tp"] == n_tp
    image = _image([[5, 0, 5, 9], O1], [[0, 1, 0]], [[5, 0, 5, 9], O1], [[0, 1, 0, 0.5]])
    assert hico.evaluate([image], [], 1)["per_class"][0]["n_tp"] == 0


def test_gt_hois_with_verb_column_and_input_errors():
    three = _image([H, O1], [[0, 1, 2]], [H, O1], [[0, 1, 2, 0.5]])
    four = dict(three, gt_hois=np.array([[0, 1, 7, 2]]))  # (sub, obj, verb, hoi)
    assert hico.evaluate([four], [], 3) == hico.evaluate([three], [], 3)
    bad = dict(three, pred_hois=np.array([[0, 1, 3, 0.5]]))
    with pytest.raises(ValueError, match=r"image 1 field 'pred_hois'.*HOI class"):
        hico.evaluate([three, bad], [], 3)
    no_object = dict(three, gt_hois=np.array([[0, -1, 2]]))
    with pytest.raises(ValueError, match=r"image 0 field 'gt_hois': object index"):
        hico.evaluate([no_object], [], 3)
    with pytest.raises(ValueError, match="image 0 has no field 'pred_boxes'"):
        hico.evaluate([{k: v for k, v in three.items() if k != "pred_boxes"}], [], 3)


def test_topk_to_evaluation_end_to_end():
    # One 200 x 100 (w x h) image; query 0 sits exactly on the GT pair of class 1.
    gt_boxes = [[20, 10, 60, 50], [100, 40, 180, 90]]
    sub = jnp.array([[[0.2, 0.3, 0.2, 0.4], [0.9, 0.9, 0.1, 0.1]]])
    obj = jnp.array([[[0.7, 0.65, 0.4, 0.5], [0.1, 0.1, 0.1, 0.1]]])
    hoi_logits = jnp.array([[[-3.0, 4.0, -2.0], [-1.0, -1.5, -2.5]]])
    obj_logits = jnp.array([[[-4.0, 3.0, 0.0], [0.0, -3.0, 0.0]]])
    topk = scoring.hico_topk(hoi_logits, obj_logits, sub, obj, jnp.array([[100, 200]]),
                                 jnp.array([0, 1, 1]), k=6)
    topk = {k: np.asarray(v)[0] for k, v in topk.items()}  # one image, as prediction_from_topk
    pred = hico_topk.prediction_from_topk(topk, use_nms=True, nms_threshold=0.7, nms_alpha=1.0,
                                     nms_beta=0.5)
    assert pred["pred_boxes"].shape == (4, 4)  # N subject boxes, then N object boxes
    np.testing.assert_allclose(pred["pred_boxes"][[0, 2]], gt_boxes, atol=1e-4)
    np.testing.assert_array_equal(pred["pred_hois"][0, :3], [0, 2, 1])  # (q, N + q, class)
    # The two queries are far apart: NMS keeps all six triplets, in class-by-class order.
    assert sorted(pred["pred_hois"][:, 3].tolist()) == sorted(topk["scores"].tolist())
    result = hico.evaluate([dict(pred, gt_boxes=np.array(gt_boxes, float),
                                 gt_hois=np.array([[0, 1, 1]]))], [], 3)
    assert result["mAP"] == 1.0000000000000002 and list(result["per_class"]) == [1]


def test_predictions_from_topk_applies_nms():
    boxes = np.array([[[0, 0, 9, 9], [0, 0, 9, 9.5]]], float)
    topk = {"scores": np.array([[0.9, 0.8, 0.7]]), "hoi_ids": np.array([[4, 4, 3]]),
            "query_ids": np.array([[0, 1, 1]]), "sub_xyxy": boxes, "obj_xyxy": boxes}
    no_nms, = hico_topk.predictions_from_topk(topk, False, 0.7, 1.0, 0.5)
    nms, = hico_topk.predictions_from_topk(topk, True, 0.7, 1.0, 0.5)
    assert len(no_nms["pred_hois"]) == 3
    # Queries 0 and 1 nearly coincide: class 4 keeps query 0 only; class 3 is untouched.
    np.testing.assert_array_equal(nms["pred_hois"], no_nms["pred_hois"][[0, 2]])


def test_cli_prints_expected_json_for_h2():
    path = FIXTURES / "h2_easy.json"
    out = subprocess.run([sys.executable, "-m", "tests.fixture_readers", "hico",
                          "--fixture",
                          str(path)], capture_output=True, text=True, check=True, cwd=REPO)
    printed = json.loads(out.stdout)
    expected = json.loads(path.read_text())["expected"]
    assert set(printed) == {"no_nms", "nms"}
    for variant in ("no_nms", "nms"):
        _assert_matches_expected(printed[variant], expected[variant])


def test_class_in_neither_list_counts_in_full_only():
    # Fractional training files leave some classes out of both lists (reference §4.2).
    far = [300, 0, 399, 99]
    images = [_image([H, O1, O2], [[0, 1, 1], [0, 2, 2], [0, 1, 3]], [H, O1, O2, far],
                     [[0, 1, 1, 0.9], [0, 2, 2, 0.8], [0, 3, 3, 0.7]])]
    result = hico.evaluate(images, rare_hois=[1], num_hois=4, non_rare_hois=[2])
    buckets = {c: v["bucket"] for c, v in result["per_class"].items()}
    assert buckets == {1: "rare", 2: "non_rare", 3: "neither"}
    assert result["mAP"] == pytest.approx(2 / 3, abs=1e-12)     # class 3 (AP 0) is in Full
    assert result["mAP_rare"] == result["mAP_non_rare"] == _ap(11)
    default = hico.evaluate(images, rare_hois=[1], num_hois=4)  # complement: 3 is non-rare
    assert default["mAP_non_rare"] == pytest.approx(0.5, abs=1e-12)
