"""Tests of the V-COCO evaluation: the python proxy (metrics/vcoco.py) against the reference
fixture and its quirks, `scoring.vcoco_topk`, and the official role AP
(metrics/vcoco_official.py) on hand-computed cases."""
import json
import math
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import class_tables
from hoiclip_jax.eval import scoring
from hoiclip_jax.eval.protocols import vcoco, vcoco_files, vcoco_official
from tests import fixture_readers

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "vcoco_eval" / "v1_default.json"
REPO = pathlib.Path(__file__).parent.parent
TABLES = class_tables.read_class_tables(
    str(REPO / "data_pipeline" / "tables" / "vcoco_classes.json"), "vcoco")
H = [0, 0, 99, 99]         # a human box
O1 = [100, 0, 199, 99]     # an object box
O2 = [110, 0, 209, 99]     # IoU(O1, O2) = 9000 / 11000 = 0.818
FAR = [500, 500, 599, 599]


def _assert_matches_expected(got: dict, expected: dict):
    assert abs(got["mAP_all"] - expected["mAP_all"]) <= 1e-9
    assert abs(got["mAP_thesis"] - expected["mAP_thesis"]) <= 1e-9
    assert got["n_verbs_with_gt"] == expected["n_verbs_with_gt"]
    assert got["thesis_verbs_without_gt"] == expected["thesis_verbs_without_gt"]
    per_verb = {str(v): stats for v, stats in got["per_verb"].items()}
    assert per_verb.keys() == expected["per_verb"].keys()
    for v, exp in expected["per_verb"].items():
        assert abs(per_verb[v]["ap"] - exp["ap"]) <= 1e-12, v
        assert abs(per_verb[v]["max_recall"] - exp["max_recall"]) <= 1e-12, v
        for key in ("name", "n_gt", "n_pred", "n_tp"):
            assert per_verb[v][key] == exp[key], (v, key)


def test_fixture_reproduces_reference():
    images, meta = fixture_readers.load_vcoco_fixture(str(FIXTURE))
    assert meta["thesis_map_indices"] == json.loads(
        (REPO / "data_pipeline" / "tables" / "vcoco_classes.json").read_text())["thesis_verb_ids"]
    got = vcoco.evaluate(images, len(meta["verb_classes"]), meta["thesis_map_indices"],
                         meta["evaluator_config"]["overlap_iou"], meta["verb_classes"])
    _assert_matches_expected(got, meta["expected"])


def test_cli_prints_expected_json():
    out = subprocess.run([sys.executable, "-m", "tests.fixture_readers", "vcoco", "--fixture",
                          str(FIXTURE)], cwd=REPO, capture_output=True, text=True, check=True)
    _assert_matches_expected(json.loads(out.stdout),
                             json.loads(FIXTURE.read_text())["expected"])


def _image(gt_boxes, gt_labels, gt_hois, pred_boxes, pred_labels, pred_hois):
    return {"gt_boxes": np.array(gt_boxes, float).reshape(-1, 4),
            "gt_box_labels": np.array(gt_labels, int), "gt_hois": np.array(gt_hois, int),
            "pred_boxes": np.array(pred_boxes, float).reshape(-1, 4),
            "pred_box_labels": np.array(pred_labels, int),
            "pred_hois": np.array(pred_hois, float).reshape(-1, 4)}


def _proxy(images, num_verbs=3, thesis=(0, 1, 2)):
    return vcoco.evaluate(images, num_verbs, list(thesis))


def test_proxy_iou_is_category_aware():
    # Same boxes; the object label 7 differs from the GT's 5 in the second image: FP there.
    right = _image([H, O1], [0, 5], [[0, 1, 0]], [H, O1], [0, 5], [[0, 1, 0, 0.9]])
    wrong = _image([H, O1], [0, 5], [[0, 1, 0]], [H, O1], [0, 7], [[0, 1, 0, 0.9]])
    person = _image([H, O1], [0, 5], [[0, 1, 0]], [H, O1], [3, 5], [[0, 1, 0, 0.9]])
    assert _proxy([right])["per_verb"][0]["n_tp"] == 1
    assert _proxy([wrong])["per_verb"][0]["n_tp"] == 0
    assert _proxy([person])["per_verb"][0]["n_tp"] == 0  # the subject's label counts too


def test_proxy_no_object_gt_needs_only_the_subject():
    # GT (human, no object, verb 1): any object box and label pass; the subject must match.
    gt = ([H], [0], [[0, -1, 1]])
    hit = _image(*gt, [H, FAR], [0, 80], [[0, 1, 1, 0.9]])
    miss = _image(*gt, [FAR, H], [0, 80], [[0, 1, 1, 0.9]])
    assert _proxy([hit])["per_verb"][1]["n_tp"] == 1
    assert _proxy([miss])["per_verb"][1]["n_tp"] == 0
    # A GT with an object still needs it: same prediction, GT object present -> FP.
    with_obj = _image([H, O1], [0, 5], [[0, 1, 1]], [H, FAR], [0, 5], [[0, 1, 1, 0.9]])
    assert _proxy([with_obj])["per_verb"][1]["n_tp"] == 0


def test_proxy_greedy_matching_has_no_fall_back():
    # GT HOIs A = (H, O1) and B = (H, O2) of verb 0. Both predictions have boxes (H, O1): both
    # target A (min IoU 1 > 0.818); the second is an FP although B is free.
    image = _image([H, O1, H, O2], [0, 5, 0, 5], [[0, 1, 0], [2, 3, 0]], [H, O1], [0, 5],
                   [[0, 1, 0, 0.9], [0, 1, 0, 0.8]])
    stats = _proxy([image])["per_verb"][0]
    assert (stats["n_tp"], stats["n_pred"], stats["n_gt"]) == (1, 2, 2)
    # The no-object overlap is IoU_sub: a prediction prefers the GT whose subject fits better.
    h_shift = [5, 0, 104, 99]  # IoU with H = 9500 / 10500
    # Prediction 1 (subject H) fits GT 1 best, prediction 2 (subject h_shift) GT 0: two TPs,
    # where taking the first GT that passes would give one.
    image = _image([h_shift, H], [0, 0], [[0, -1, 2], [1, -1, 2]], [H, FAR, h_shift, FAR],
                   [0, 80, 0, 80], [[0, 1, 2, 0.9], [2, 3, 2, 0.8]])
    assert _proxy([image])["per_verb"][2]["n_tp"] == 2


def test_proxy_means_records_and_empty_images():
    # Verb 0 has GT; verb 1 has GT but no prediction; verb 2 has predictions but no GT.
    a = _image([H, O1, H], [0, 5, 0], [[0, 1, 0], [2, -1, 1]], [H, O1], [0, 5],
               [[0, 1, 0, 0.9], [0, 1, 2, 0.8]])
    # An image without GT: its verb-0 prediction is an FP that outranks the TP.
    empty = _image([], [], np.zeros((0, 3)), [H, O1], [0, 5], [[0, 1, 0, 0.95]])
    got = vcoco.evaluate([a, empty], 4, [0, 1, 2, 3])
    assert sorted(got["per_verb"]) == [0, 1]
    assert got["per_verb"][0]["n_pred"] == 2 and got["per_verb"][0]["n_tp"] == 1
    # 11-point AP of (FP, TP) with one GT: precision 0.5 at every threshold.
    ap0 = 0.
    for _ in range(11):
        ap0 = ap0 + 0.5 / 11.
    assert got["per_verb"][0]["ap"] == ap0 and got["per_verb"][1]["ap"] == 0.0
    assert got["mAP_all"] == pytest.approx(ap0 / 2, abs=1e-15)
    assert got["mAP_thesis"] == pytest.approx(ap0 / 4, abs=1e-15)  # verbs 2, 3: AP 0
    assert got["thesis_verbs_without_gt"] == [2, 3]
    assert math.isnan(vcoco.evaluate([empty], 4, [0])["mAP_all"])


def test_proxy_rejects_bad_inputs():
    good = _image([H, O1], [0, 5], [[0, 1, 0]], [H, O1], [0, 5], [[0, 1, 0, 0.9]])
    with pytest.raises(ValueError, match="image 0 field 'gt_box_labels'"):
        _proxy([{**good, "gt_box_labels": np.array([0])}])
    with pytest.raises(ValueError, match="image 0 field 'gt_hois'.*object index"):
        _proxy([{**good, "gt_hois": np.array([[0, 5, 0]])}])
    with pytest.raises(ValueError, match="image 0 has no field 'pred_box_labels'"):
        _proxy([{k: v for k, v in good.items() if k != "pred_box_labels"}])


def _numpy_vcoco_scores(hoi_logits, obj_logits, correct_mat):
    """Direct float64 computation of rule 8 (loops over verbs; no shared code)."""
    sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
    s = sig(hoi_logits) + sig(obj_logits)[..., TABLES.hoi_to_obj] ** 2
    verb = np.stack([s[..., TABLES.hoi_to_verb == v].max(-1) for v in range(TABLES.num_verbs)],
                    axis=-1)
    prob = np.exp(obj_logits - obj_logits.max(-1, keepdims=True))
    labels = np.argmax(prob[..., :-1], axis=-1)
    return verb * correct_mat[:, labels].transpose(1, 2, 0), labels


def test_vcoco_topk_matches_direct_numpy():
    rng = np.random.default_rng(0)
    batch, queries = 2, 6
    hoi = rng.normal(-2, 2, (batch, queries, TABLES.num_hois)).astype(np.float32)
    obj = rng.normal(0, 2, (batch, queries, TABLES.num_objects + 1)).astype(np.float32)
    obj[0, 0, -1] = 50.0          # "nothing" wins the softmax but is never the label
    obj[0, 1, 80] = 50.0          # the no-object label (80)
    obj[1, 2, 3] = 50.0           # object 3: few verbs go with it, the others score 0
    sub = rng.uniform(0.2, 0.6, (batch, queries, 4)).astype(np.float32)
    objb = rng.uniform(0.2, 0.6, (batch, queries, 4)).astype(np.float32)
    size = np.array([[480, 640], [300, 200]])
    correct = scoring.vcoco_correct_mat(TABLES.hoi_to_verb, TABLES.hoi_to_obj,
                                            TABLES.num_verbs, TABLES.num_objects + 1)
    k = queries * TABLES.num_verbs
    out = scoring.vcoco_topk(jnp.asarray(hoi), jnp.asarray(obj), sub, objb, size,
                                 TABLES.hoi_to_obj, TABLES.hoi_to_verb, correct, k=k)
    want, labels = _numpy_vcoco_scores(hoi, obj, correct)
    assert labels[0, 0] != 81 and labels[0, 1] == 80 and labels[1, 2] == 3
    np.testing.assert_array_equal(out["obj_labels"], labels)
    flat = want.reshape(batch, -1)
    order = np.argsort(-flat, axis=1, kind="stable")  # ties (the zeros): lower index first
    np.testing.assert_array_equal(out["query_ids"] * TABLES.num_verbs + out["verb_ids"], order)
    np.testing.assert_allclose(out["scores"], np.take_along_axis(flat, order, 1), rtol=2e-6)
    assert (flat == 0).sum() > 0  # correct_mat did zero some verbs
    cx, cy, w, h = np.moveaxis(sub.astype(np.float64), -1, 0)
    scale = np.array([[640, 480, 640, 480], [200, 300, 200, 300]])[:, None]
    np.testing.assert_allclose(out["sub_xyxy"], np.stack(
        [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * scale, rtol=1e-5)
    top = scoring.vcoco_topk(jnp.asarray(hoi), jnp.asarray(obj), sub, objb, size,
                                 TABLES.hoi_to_obj, TABLES.hoi_to_verb, correct, k=5)
    np.testing.assert_array_equal(top["verb_ids"], out["verb_ids"][:, :5])
    with pytest.raises(ValueError, match="k=175"):
        scoring.vcoco_topk(hoi, obj, sub, objb, size, TABLES.hoi_to_obj,
                               TABLES.hoi_to_verb, correct, k=175)
    # predictions_from_topk: subjects then objects, subject labels 0, ids q and N + q.
    pred = vcoco.predictions_from_topk({k: np.asarray(v) for k, v in top.items()})[1]
    assert pred["pred_boxes"].shape == (12, 4) and pred["pred_box_labels"][:6].tolist() == [0] * 6
    np.testing.assert_array_equal(pred["pred_box_labels"][6:], labels[1])
    np.testing.assert_array_equal(pred["pred_hois"][:, 1], pred["pred_hois"][:, 0] + 6)


# ---------------------------------------------------------------- official role AP (vsrl_eval)

P = [[0, 0, 99, 99], [200, 0, 299, 99], [400, 0, 499, 99], [600, 0, 699, 99]]
OBJ = [0, 200, 99, 299]
OTHER = [200, 200, 299, 299]
NAN4 = [math.nan] * 4


def _gt(actions, roles, person_image, person_boxes, person_actions, role_boxes, image_ids):
    n = len(person_boxes)
    boxes = np.full((n, len(actions), 2, 4), np.nan)
    for (p, a, r), box in role_boxes.items():
        boxes[p, a, r] = box
    return vcoco_official.VcocoGroundTruth(
        actions=tuple(actions), roles=tuple(tuple(r) for r in roles),
        image_ids=np.array(image_ids), person_image=np.array(person_image),
        person_boxes=np.array(person_boxes, float), person_actions=np.array(person_actions,
                                                                            np.int8),
        role_boxes=boxes)


def _det(image_id, person_box, **roles):
    det = {"image_id": image_id, "person_box": np.array(person_box, float)}
    det.update({k: np.array(v, float) for k, v in roles.items()})
    return det


def _all_point(tps, n_pos):
    """All-point AP of a TP/FP list in score order, the envelope written out by hand."""
    tp = np.cumsum(tps)
    rec, prec = tp / n_pos, tp / np.arange(1, len(tps) + 1)
    ap, prev = 0.0, 0.0
    for i in range(len(tps)):
        ap += (rec[i] - prev) * prec[i:].max()
        prev = rec[i]
    return ap


def test_role_ap_scenarios_and_empty_role_boxes():
    # Four persons doing 'hold'; P0, P1, P3 have no annotated object, P2 holds OBJ.
    gt = _gt(["hold"], [["obj"]], [0] * 4, P, [[1]] * 4, {(2, 0, 0): OBJ}, [7])
    dets = [_det(7, P[0], hold_obj=[0, 0, 0, 0, .9]),    # empty (zeros): S1 and S2 right
            _det(7, P[1], hold_obj=OTHER + [.8]),        # a box where none is: S1 wrong
            _det(7, P[2], hold_obj=NAN4 + [.7]),         # no box where there is one: wrong
            _det(7, P[2], hold_obj=OBJ + [.6]),          # right
            _det(7, P[3], hold_obj=NAN4 + [.5])]         # empty (NaN): S1 and S2 right
    s1 = vcoco_official.role_ap(gt, dets, scenario=1)
    s2 = vcoco_official.role_ap(gt, dets, scenario=2)
    # S1: TP FP FP TP TP -> rec .25 .25 .25 .5 .75, envelope 1 .6 .6 .6 .6 -> AP .55.
    assert s1["per_role"]["hold_obj"]["ap"] == pytest.approx(0.55, abs=1e-12)
    assert s1["per_role"]["hold_obj"]["ap"] == pytest.approx(_all_point([1, 0, 0, 1, 1], 4))
    # S2: TP TP FP TP TP -> .25 + .25 + .8 * .5 = .9.
    assert s2["per_role"]["hold_obj"]["ap"] == pytest.approx(0.9, abs=1e-12)
    assert s2["per_role"]["hold_obj"]["n_tp"] == 4 and s1["per_role"]["hold_obj"]["n_tp"] == 3
    assert s1["AP_role_25"] == s1["AP_role_24"] == s1["per_role"]["hold_obj"]["ap"]
    with pytest.raises(ValueError, match="scenario"):
        vcoco_official.role_ap(gt, dets, scenario=3)


def test_role_ap_matching_rules():
    # Image 1: P0 hits (instr OBJ, obj OTHER) and points (instr OBJ); P1 annotated, no action;
    # P2 not annotated in V-COCO (-1). Image 2: P3 hits with instr OBJ only. 'stand' is
    # agent-only: no role AP entry.
    actions = ["stand", "hit", "point"]
    roles = [[], ["instr", "obj"], ["instr"]]
    gt = _gt(actions, roles, [0, 0, 0, 1], P, [[1, 1, 1], [1, 0, 0], [-1, -1, -1], [0, 1, 0]],
             {(0, 1, 0): OBJ, (0, 1, 1): OTHER, (0, 2, 0): OBJ, (3, 1, 0): OBJ}, [1, 2])
    assert gt.entry_names == ["hit_instr", "hit_obj", "point_instr"]
    empty = [0, 0, 0, 0, 0]

    def det(image, person, instr, obj, score, point=None):
        return _det(image, person, stand_agent=1.0, hit_agent=score, point_agent=0.0,
                    hit_instr=instr + [score], hit_obj=obj + [score],
                    point_instr=point if point is not None else empty)

    dets = [
        det(1, P[0], OBJ, OTHER, .9, point=OBJ + [.4]),  # TP both roles; point TP
        det(1, P[0], OBJ, OTHER, .8),                    # duplicate: FP (P0 covered)
        det(1, P[1], OBJ, OTHER, .7),                    # P1 does not hit: FP
        det(1, P[2], OBJ, OTHER, .95),                   # best person P2 is unannotated: dropped
        det(1, [0, 0, 99, 30], OBJ, OTHER, .6),          # person IoU 0.31: FP
        det(2, P[3], OTHER, OBJ, .5),                    # instr wrong: FP; hit_obj: S1 FP
        det(2, P[3], OBJ, NAN4, .3),                     # instr TP; obj empty (NaN): S1 TP
        det(3, P[0], OBJ, OTHER, .99),                   # image not in the split: ignored
        det(1, P[0], NAN4, NAN4, math.nan),              # NaN score: dropped
    ]
    s1 = vcoco_official.role_ap(gt, dets, scenario=1)
    s2 = vcoco_official.role_ap(gt, dets, scenario=2)
    instr = s1["per_role"]["hit_instr"]
    # hit_instr (n_pos 2: P0, P3), order .9 .8 .7 .6 .5 .3: TP FP FP FP FP TP.
    assert (instr["n_pos"], instr["n_det"], instr["n_tp"]) == (2, 6, 2)
    assert instr["ap"] == pytest.approx(_all_point([1, 0, 0, 0, 0, 1], 2), abs=1e-12)
    assert instr["ap"] == pytest.approx(0.5 + 0.5 * 2 / 6, abs=1e-12)
    assert s2["per_role"]["hit_instr"]["ap"] == instr["ap"]  # GT roles everywhere
    # hit_obj: P3 has no object. S1: TP FP FP FP FP(box given) TP(NaN box).
    assert s1["per_role"]["hit_obj"]["ap"] == pytest.approx(_all_point([1, 0, 0, 0, 0, 1], 2))
    # S2: the role of P3 is always right: TP FP FP FP TP, then the .3 duplicate on P3: FP.
    assert s2["per_role"]["hit_obj"]["ap"] == pytest.approx(_all_point([1, 0, 0, 0, 1, 0], 2))
    # point_instr: only the first detection has a box; zero boxes elsewhere (wrong, GT exists).
    # The zero boxes have score 0, below the .4 of the right one (the NaN-score detection
    # still counts here: its point_instr score is 0, not NaN).
    point = s1["per_role"]["point_instr"]
    assert (point["n_pos"], point["n_det"], point["n_tp"], point["ap"]) == (1, 7, 1, 1.0)
    aps = [s1["per_role"][k]["ap"] for k in gt.entry_names]
    assert s1["AP_role_25"] == pytest.approx(np.mean(aps), abs=1e-15)
    assert s1["AP_role_24"] == pytest.approx(np.mean(aps[:2]), abs=1e-15)


def test_role_ap_first_person_on_ties_and_no_person_images():
    # The detection overlaps nobody: the protocol still picks the first GT person (argmax of
    # zeros); if that one is unannotated the detection is dropped, otherwise it is an FP.
    gt = _gt(["hold"], [["obj"]], [0, 0, 1, 1], P, [[-1], [1], [1], [-1]],
             {(1, 0, 0): OBJ, (2, 0, 0): OBJ}, [1, 2, 3])
    far = [900, 900, 950, 950]
    dets = [_det(1, far, hold_obj=OBJ + [.9]), _det(2, far, hold_obj=OBJ + [.8]),
            _det(3, P[0], hold_obj=OBJ + [.7]),  # image 3 has no GT person: FP
            _det(2, P[2], hold_obj=OBJ + [.6])]
    got = vcoco_official.role_ap(gt, dets)["per_role"]["hold_obj"]
    assert (got["n_det"], got["n_tp"]) == (3, 1)
    assert got["ap"] == pytest.approx(_all_point([0, 0, 1], 2))


def test_role_ap_reports_missing_keys_and_nan_without_positives():
    gt = _gt(["hold", "look"], [["obj"], ["obj"]], [0], P[:1], [[1, 0]],
             {(0, 0, 0): OBJ}, [1])
    with pytest.raises(KeyError, match="detection 0 .*'look_obj'"):
        vcoco_official.role_ap(gt, [_det(1, P[0], hold_obj=OBJ + [.9])])
    got = vcoco_official.role_ap(gt, [_det(1, P[0], hold_obj=OBJ + [.9],
                                           look_obj=OBJ + [.5])])
    assert got["per_role"]["hold_obj"]["ap"] == 1.0
    assert math.isnan(got["per_role"]["look_obj"]["ap"])   # no GT person looks
    assert got["AP_role_25"] == 1.0                        # nanmean
    empty = vcoco_official.role_ap(gt, [])
    assert empty["per_role"]["hold_obj"]["ap"] == 0.0 and empty["per_role"]["hold_obj"][
        "n_det"] == 0


def _write_vcoco_files(tmp_path, nested=False):
    """A two-image V-COCO split: vcoco json (role-major flat role_object_id), COCO instances
    and ids file."""
    # Person anns 1, 2 (image 10), 5 (image 11, not in V-COCO) and 7 (image 11, no action);
    # object anns 3 (image 10), 4 (image 10, zero area: invalid) and 6 (image 11).
    ann_ids, image_ids = [1, 2, 7], [10, 10, 11]
    hold = {"action_name": "hold", "role_name": ["agent", "obj"], "image_id": image_ids,
            "ann_id": ann_ids, "label": [1, 1, 0], "role_object_id": [1, 2, 7, 3, 0, 0]}
    hit = {"action_name": "hit", "role_name": ["agent", "instr", "obj"], "image_id": image_ids,
           "ann_id": ann_ids, "label": [0, 1, 0],
           "role_object_id": [1, 2, 7, 0, 0, 0, 0, 3, 0]}
    stand = {"action_name": "stand", "role_name": ["agent"], "image_id": image_ids,
             "ann_id": ann_ids, "label": [1, 0, 0], "role_object_id": [1, 2, 7]}
    if nested:
        for x in (hold, hit, stand):
            n = len(x["role_name"])
            x["role_object_id"] = np.array(x["role_object_id"]).reshape(n, -1).T.tolist()
    coco = {
        "images": [{"id": 10, "width": 640, "height": 480},
                   {"id": 11, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [10, 20, 100, 200], "area": 5},
            {"id": 3, "image_id": 10, "category_id": 2, "bbox": [600, 400, 100, 100],
             "area": 5},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [-5, 0, 50.5, 60], "area": 5},
            {"id": 4, "image_id": 10, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 0},
            {"id": 5, "image_id": 11, "category_id": 1, "bbox": [1, 1, 20, 20], "area": 5},
            {"id": 6, "image_id": 11, "category_id": 2, "bbox": [1, 1, 20, 20], "area": 5},
            {"id": 7, "image_id": 11, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 5}]}
    paths = [tmp_path / "vcoco_test.json", tmp_path / "instances.json", tmp_path / "test.ids"]
    paths[0].write_text(json.dumps([hold, stand, hit]))
    paths[1].write_text(json.dumps(coco))
    paths[2].write_text("10\n11\n")
    return [str(p) for p in paths]


@pytest.mark.parametrize("nested", [False, True])
def test_read_vcoco_gt(tmp_path, nested):
    gt = vcoco_files.read_vcoco_gt(*_write_vcoco_files(tmp_path, nested))
    assert gt.actions == ("hold", "stand", "hit")
    assert gt.roles == (("obj",), (), ("instr", "obj"))
    assert gt.entry_names == ["hold_obj", "hit_instr", "hit_obj"]
    np.testing.assert_array_equal(gt.image_ids, [10, 11])
    np.testing.assert_array_equal(gt.person_image, [0, 0, 1, 1])  # anns 1, 2, 5, 7 (file order)
    # xywh -> x2 = x1 + w - 1, clipped to [0, W - 1] x [0, H - 1].
    np.testing.assert_allclose(gt.person_boxes, [[10, 20, 109, 219], [0, 0, 44.5, 59],
                                                 [1, 1, 20, 20], [50, 50, 59, 59]])
    np.testing.assert_array_equal(gt.person_actions,
                                  [[1, 1, 0], [1, 0, 1], [-1, -1, -1], [0, 0, 0]])
    np.testing.assert_allclose(gt.role_boxes[0, 0, 0], [600, 400, 639, 479])  # hold: ann 3
    assert np.isnan(gt.role_boxes[1, 0, 0]).all()                            # hold: no object
    np.testing.assert_allclose(gt.role_boxes[1, 2, 1], [600, 400, 639, 479])  # hit obj: ann 3
    assert np.isnan(gt.role_boxes[1, 2, 0]).all() and np.isnan(gt.role_boxes[0, 2]).all()


def test_read_vcoco_gt_errors(tmp_path):
    vcoco_json, instances, ids = _write_vcoco_files(tmp_path)
    (tmp_path / "other.ids").write_text("10\n12\n")
    with pytest.raises(ValueError, match="not those of"):
        vcoco_files.read_vcoco_gt(vcoco_json, instances, str(tmp_path / "other.ids"))
    data = json.loads(pathlib.Path(vcoco_json).read_text())
    data[0]["role_object_id"] = [1, 2, 7, 4, 0, 0]  # ann 4 has zero area: not a valid box
    pathlib.Path(vcoco_json).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'hold' role 'obj' of person ann 1 names ann 4"):
        vcoco_files.read_vcoco_gt(vcoco_json, instances, ids)


def test_detections_from_topk_export_and_round_trip():
    verbs = TABLES.verbs
    v = {name: i for i, name in enumerate(verbs)}
    topk = {"scores": np.array([[.9, .8, .7, .6, .5]]),
            "verb_ids": np.array([[v["hold_obj"], v["cut_instr"], v["cut_obj"], v["stand"],
                                   v["hold_obj"]]]),
            "query_ids": np.array([[0, 0, 0, 0, 1]]),
            "sub_xyxy": np.array([[P[0], P[1], P[2]]], float),
            "obj_xyxy": np.array([[OBJ, OTHER, OBJ]], float),
            "obj_labels": np.array([[5, 80, 7]])}
    dets = vcoco.detections_from_topk(topk, [42], verbs, no_object_label=80)
    assert len(dets) == 2  # query 2 has no pair in the top-k
    d0, d1 = dets
    assert d0["image_id"] == 42 and d0["person_box"].tolist() == P[0]
    assert d0["hold_obj"].tolist() == OBJ + [.9]
    assert d0["cut_agent"] == .8 and d0["stand_agent"] == .6 and d0["hold_agent"] == .9
    assert np.isnan(d0["ride_instr"][4]) and np.isnan(d0["ride_agent"])
    assert np.isnan(d1["hold_obj"][:4]).all() and d1["hold_obj"][4] == .5  # label 80: NaN box
    assert len([k for k in d0 if k not in ("image_id", "person_box")
                and not k.endswith("_agent")]) == 25
    assert len([k for k in d0 if k.endswith("_agent")]) == 26
    keep = np.array([[True, False, True, True, True]])
    d0 = vcoco.detections_from_topk(topk, [42], verbs, 80, keep=keep)[0]
    assert np.isnan(d0["cut_instr"][4]) and d0["cut_agent"] == .7
    # The export feeds role_ap: a GT built over all 26 actions of the table.
    names = [vcoco.verb_action_role(x) for x in verbs]
    actions = list(dict.fromkeys(a for a, _ in names))
    roles = [[r for a2, r in names if a2 == a and r != "agent"] for a in actions]
    hold = actions.index("hold")
    acts = np.zeros((2, len(actions)), int)
    acts[0, hold] = acts[1, hold] = 1
    gt = _gt(actions, roles, [0, 0], P[:2], acts, {(0, hold, 0): OBJ}, [42])
    got = vcoco_official.role_ap(gt, dets, scenario=1)
    assert len(got["per_role"]) == 25 and "point_instr" in got["per_role"]
    assert got["per_role"]["hold_obj"]["n_tp"] == 2  # P1: no GT object, NaN box -> right in S1
    assert got["per_role"]["hold_obj"]["ap"] == 1.0


def test_verb_action_role_and_coco_image_id():
    assert vcoco.verb_action_role("talk_on_phone_instr") == ("talk_on_phone", "instr")
    assert vcoco.verb_action_role("hit_obj") == ("hit", "obj")
    assert vcoco.verb_action_role("stand") == ("stand", "agent")
    assert vcoco.coco_image_id("COCO_val2014_000000000139.jpg") == 139
    with pytest.raises(ValueError, match="no COCO image id"):
        vcoco.coco_image_id("picture.jpg")
