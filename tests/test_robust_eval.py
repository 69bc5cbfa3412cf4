"""Robustness of the evaluation inputs (README "What happens when…", case 12): predictions with NaN or inf
scores or boxes stop the evaluation with an error naming the image, never a silently wrong mAP."""
import numpy as np
import pytest

from hoiclip_jax.eval.protocols import hico, hico_topk

H, O = [0, 0, 99, 99], [100, 0, 199, 99]


def _topk(batch: int = 3) -> dict:
    """`hico_topk`-shaped numpy output: B images, k = 2 triplets, N = 2 queries, finite."""
    boxes = np.tile(np.array([H, O], float), (batch, 1, 1))
    return {"scores": np.full((batch, 2), 0.5), "hoi_ids": np.zeros((batch, 2), int),
            "query_ids": np.tile([0, 1], (batch, 1)), "sub_xyxy": boxes,
            "obj_xyxy": boxes.copy()}


@pytest.mark.parametrize("field, index", [("scores", (1, 0)), ("sub_xyxy", (1, 1, 2)),
                                          ("obj_xyxy", (1, 0, 0))])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("use_nms", [False, True])
def test_non_finite_topk_names_the_image(field, index, bad, use_nms):
    topk = _topk()
    topk[field][index] = bad
    names = ["HICO_test2015_00000001.jpg", "HICO_test2015_00000002.jpg", "c.jpg"]
    with pytest.raises(ValueError, match=rf"image 'HICO_test2015_00000002.jpg' \(#1\) .*"
                                         rf"non-finite value in '{field}'"):
        hico_topk.predictions_from_topk(topk, use_nms, 0.7, 1.0, 0.5, names=names)
    with pytest.raises(ValueError, match=rf"image 1 has a non-finite value in '{field}'"):
        hico_topk.predictions_from_topk(topk, use_nms, 0.7, 1.0, 0.5)
    # Finite input goes through.
    assert len(hico_topk.predictions_from_topk(_topk(), use_nms, 0.7, 1.0, 0.5, names=names)) == 3


def test_evaluate_rejects_non_finite_predictions_naming_the_image():
    good = {"gt_boxes": np.array([H, O], float), "gt_hois": np.array([[0, 1, 0]]),
            "pred_boxes": np.array([H, O], float), "pred_hois": np.array([[0, 1, 0, 0.9]])}
    assert hico.evaluate([good, good], [], 1)["mAP"] == pytest.approx(1.0)
    nan_score = dict(good, pred_hois=np.array([[0, 1, 0, np.nan]]))
    with pytest.raises(ValueError, match=r"image 1 field 'pred_hois': non-finite score"):
        hico.evaluate([good, nan_score], [], 1)
    nan_box = dict(good, pred_boxes=np.array([H, [100, np.nan, 199, 99]]))
    with pytest.raises(ValueError, match=r"image 1 field 'pred_boxes': non-finite coordinate"):
        hico.evaluate([good, nan_box], [], 1)
