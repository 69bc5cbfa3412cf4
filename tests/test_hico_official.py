"""Tests of the official HICO-Det protocol (metrics/hico_official.py) and its .mat files
(metrics/hico_export.py): equal to the python protocol where they agree, and each documented
difference moving the number the expected way."""
import os

import numpy as np
import pytest
import scipy.io

from data_pipeline.class_tables import TABLES_DIR, read_class_tables
from data_pipeline.hico_reader import HoiRecord
from hoiclip_jax.eval.protocols import anno_mat, hico
from tests import fixture_readers
from hoiclip_jax.eval.protocols import hico_export
from hoiclip_jax.eval.protocols import hico_official as official

TABLES = read_class_tables(os.path.join(TABLES_DIR, "hico_classes.json"), "hico")
K = TABLES.num_hois
RARE = list(TABLES.rare_hois)
HOI_TO_OBJ = TABLES.hoi_to_obj
C = 0                                            # 'board airplane'
C_OBJ = int(HOI_TO_OBJ[C])
OTHER = int(np.flatnonzero(HOI_TO_OBJ != C_OBJ)[0])   # a class of another object
H, O = [0, 0, 99, 99], [200, 0, 299, 99]         # a human and an object box, 0-based


def _record(name, pairs):
    """A HoiRecord with one (human, object) box pair per (class, human box, object box)."""
    boxes = [b for _, h, o in pairs for b in (h, o)]
    hois = [[2 * k, 2 * k + 1, TABLES.hoi_to_verb[c], c] for k, (c, _, _) in enumerate(pairs)]
    return HoiRecord(name, 0, np.array(boxes, np.float32).reshape(-1, 4),
                     np.zeros(len(boxes), np.int32), np.array(hois, np.int32).reshape(-1, 4))


def _preds(triplets):
    """Prediction fields from (class, human box, object box, score) triplets."""
    boxes = [b for _, h, o, _ in triplets for b in (h, o)]
    hois = [[2 * k, 2 * k + 1, c, s] for k, (c, _, _, s) in enumerate(triplets)]
    return {"pred_boxes": np.array(boxes, float).reshape(-1, 4),
            "pred_hois": np.array(hois, float).reshape(-1, 4)}


def _official(records, predictions, **kwargs):
    gt = official.gt_from_records(records)
    settings = kwargs.pop("settings", ("default",))
    return official.evaluate_predictions(gt, predictions, RARE, HOI_TO_OBJ, settings=settings,
                                         **kwargs)


def _python(records, predictions):
    images = [{"gt_boxes": r.boxes, "gt_hois": r.hois,
               **predictions.get(r.file_name, _preds([]))} for r in records]
    return hico.evaluate(images, RARE, K)


def _ap(steps):
    """MATLAB's / the reference's 11-point sum at precision 1, one threshold at a time."""
    ap = 0.
    for _ in range(steps):
        ap = ap + 1. / 11.
    return ap


def _random_case(seed=0, n_images=20):
    """Integer boxes, every class with 1, 2 or 4 GT pairs (recalls never exactly 0.6 / 0.7),
    every image with GT, 1-4 detections per GT pair (copies, jittered copies, wrong boxes)."""
    rng = np.random.default_rng(seed)
    pairs = {i: [] for i in range(n_images)}
    triplets = {i: [] for i in range(n_images)}

    def box():
        x, y = rng.integers(0, 400, 2)
        return [int(x), int(y), int(x + rng.integers(20, 140)), int(y + rng.integers(20, 140))]

    for c in range(K):
        for _ in range(rng.choice([1, 2, 4])):
            i = int(rng.integers(n_images))
            h, o = box(), box()
            pairs[i].append((c, h, o))
            for _ in range(rng.integers(1, 5)):
                jitter = rng.integers(-8, 9, 4) * rng.integers(0, 2)
                fake = rng.random() < 0.2
                triplets[i].append((c, box() if fake else list(np.add(h, jitter)), list(o),
                                    float(rng.random())))
    records = [_record(f"img_{i}.jpg", pairs[i]) for i in range(n_images)]
    return records, {f"img_{i}.jpg": _preds(triplets[i]) for i in range(n_images)}


# ---------------------------------------------------------------------------------------------
# (a) Where caps, rounding and GT-less images play no part, official Default == python.

def test_equals_python_protocol_on_a_plain_case():
    records, predictions = _random_case()
    py = _python(records, predictions)
    off = _official(records, predictions)["default"]
    assert 0.2 < py["mAP"] < 0.95, "the case should have both TPs and FPs"
    assert py["n_classes_with_gt"] == K and py["n_excluded_no_predictions"] == 0
    for c in range(K):
        assert off["per_class"][c]["ap"] == py["per_class"][c]["ap"], c
        assert off["per_class"][c]["recall"] == py["per_class"][c]["max_recall"], c
    for key in ("mAP", "mAP_rare", "mAP_non_rare"):
        assert off[key] == pytest.approx(py[key], abs=1e-12), key
    assert off["mean_recall"] == pytest.approx(py["mean_max_recall"], abs=1e-12)
    assert (off["n_rare"], off["n_non_rare"]) == (138, 462)


# ---------------------------------------------------------------------------------------------
# (b) Each documented difference.

def test_image_without_gt_adds_false_positives():
    with_gt = _record("a.jpg", [(C, H, O)])
    without_gt = _record("b.jpg", [])
    predictions = {"a.jpg": _preds([(C, H, O, 0.5)]), "b.jpg": _preds([(C, H, O, 0.9)])}
    py = _python([with_gt], predictions | {"b.jpg": _preds([])})
    assert py["per_class"][C]["ap"] == _ap(11)
    assert _official([with_gt], {"a.jpg": predictions["a.jpg"]})["default"][
        "per_class"][C]["ap"] == _ap(11)
    off = _official([with_gt, without_gt], predictions)["default"]["per_class"][C]
    assert off["ap"] == pytest.approx(0.5) and off["n_det"] == 2 and off["recall"] == 1.0


def test_cap_per_class_drops_low_scored_true_positives():
    records = [_record(f"{i}.jpg", [(C, H, O), (OTHER, H, O)]) for i in range(3)]
    predictions = {f"{i}.jpg": _preds([(C, H, O, 0.9 - 0.1 * i), (OTHER, H, O, 0.5 + 0.1 * i)])
                   for i in range(3)}
    full = _official(records, predictions)["default"]["per_class"]
    capped = _official(records, predictions, max_per_class=2)["default"]["per_class"]
    assert full[C]["recall"] == 1.0 and full[C]["ap"] == _ap(11)
    assert capped[C]["n_det"] == 2 and capped[C]["recall"] == pytest.approx(2 / 3)
    assert capped[C]["ap"] == _ap(7) < full[C]["ap"]     # thresholds 0 .. 0.6 reached
    assert capped[OTHER]["n_det"] == 2                    # the cap is per class


def test_known_object_drops_false_positives_in_images_without_the_object():
    records = [_record("a.jpg", [(C, H, O)]), _record("b.jpg", [(OTHER, H, O)])]
    predictions = {"a.jpg": _preds([(C, H, O, 0.5)]), "b.jpg": _preds([(C, H, O, 0.9)])}
    result = _official(records, predictions, settings=official.SETTINGS)
    assert result["default"]["per_class"][C]["ap"] == pytest.approx(0.5)
    assert result["known_object"]["per_class"][C]["ap"] == _ap(11)
    assert result["known_object"]["mAP"] > result["default"]["mAP"]
    # anno.mat labels: only a 1 for some HOI of the same object keeps an image.
    same_object = np.flatnonzero(HOI_TO_OBJ == C_OBJ)
    labels = np.full((K, 2), np.nan)
    labels[C, 0] = 1
    labels[OTHER, 1], labels[same_object[1], 1] = 1, -1
    names = ("b.jpg", "a.jpg")   # another column order than the GT's
    ko = lambda lab: _official(records, predictions, settings=("known_object",),
                               image_labels=official.ImageLabels(names, lab[:, ::-1]))[
        "known_object"]["per_class"][C]["ap"]
    assert ko(labels) == _ap(11)
    labels[same_object[1], 1] = 1
    assert ko(labels) == pytest.approx(0.5)
    labels[C, 0] = 0   # a GT pair in an image the setting drops: eval_one.m's assert
    with pytest.raises(ValueError, match="Known-Object"):
        ko(labels)


def test_rounding_moves_an_iou_across_the_threshold():
    records = [_record("a.jpg", [(C, [0, 0, 9, 9], [20, 0, 29, 9])])]
    # IoU of the human box: 4.6 * 10 / 100 = 0.46 as predicted, 5 * 10 / 100 = 0.5 rounded.
    predictions = {"a.jpg": _preds([(C, [0, 0, 3.6, 9], [20, 0, 29, 9], 0.9)])}
    assert _python(records, predictions)["per_class"][C]["ap"] == 0.0
    assert _official(records, predictions, round_boxes=False)["default"][
        "per_class"][C]["ap"] == 0.0
    assert _official(records, predictions)["default"]["per_class"][C]["ap"] == _ap(11)
    np.testing.assert_array_equal(official.matlab_round(
        np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999999999999994, 3.6])),
        [1, 2, 3, -1, -3, 0, 4])


def test_detections_are_shifted_onto_one_based_gt():
    gt = official.OfficialGt(("a.jpg",), np.array([0]), np.array([C]),
                             np.array([[1., 1., 2., 2.]]), np.array([[5., 5., 6., 6.]]))

    def ap(h, o):
        dets = official.Detections(np.array([0]), np.array([C]), np.array([h], float),
                                   np.array([o], float), np.array([1.0]))
        return official.evaluate_official(gt, dets, RARE, HOI_TO_OBJ, settings=("default",))[
            "default"]["per_class"][C]["ap"]

    assert ap([0, 0, 1, 1], [4, 4, 5, 5]) == _ap(11)   # 0-based copy of the GT: IoU 1
    assert ap([1, 1, 2, 2], [5, 5, 6, 6]) == 0.0       # the 1-based values: IoU 1/7


def test_recall_of_exactly_0_6_reaches_matlab_threshold():
    records = [_record(f"{i}.jpg", [(C, H, O)]) for i in range(5)]
    predictions = {f"{i}.jpg": _preds([(C, H, O, 0.9 - 0.1 * i)]) for i in range(3)}
    assert _python(records, predictions)["per_class"][C]["ap"] == _ap(6)
    assert _official(records, predictions)["default"]["per_class"][C]["ap"] == _ap(7)


def test_one_pixel_wide_boxes_overlap_in_matlab_only():
    line_h, line_o = [5, 0, 5, 9], [50, 0, 50, 9]   # x1 == x2: one pixel column
    records = [_record("a.jpg", [(C, line_h, line_o)])]
    predictions = {"a.jpg": _preds([(C, line_h, line_o, 0.9)])}
    assert _python(records, predictions)["per_class"][C]["ap"] == 0.0
    assert _official(records, predictions)["default"]["per_class"][C]["ap"] == _ap(11)


def test_classes_without_gt_or_detections_count_as_zero():
    records = [_record("a.jpg", [(C, H, O)])]
    result = _official(records, {"a.jpg": _preds([(C, H, O, 0.9), (OTHER, H, O, 0.8)])})
    stats = result["default"]
    assert stats["mAP"] == pytest.approx(_ap(11) / K)
    assert np.isnan(stats["per_class"][OTHER]["recall"]) and stats["per_class"][OTHER]["ap"] == 0
    assert stats["per_class"][C + 1]["recall"] == 0 and stats["n_classes_without_gt"] == K - 1
    with pytest.raises(ValueError, match="not in the GT's image list"):
        _official(records, {"z.jpg": _preds([])})


# ---------------------------------------------------------------------------------------------
# (c) .mat readers and the exporter.

_BOX = [("x1", "O"), ("y1", "O"), ("x2", "O"), ("y2", "O")]
_HOI = [("id", "O"), ("bboxhuman", "O"), ("bboxobject", "O"), ("connection", "O"),
        ("invis", "O")]
_IMAGE = [("filename", "O"), ("size", "O"), ("hoi", "O")]


def _struct_array(dtype, rows):
    """A 1 x n MATLAB struct array for savemat (numbers as 1 x 1 doubles)."""
    out = np.zeros((1, len(rows)), dtype)
    for k, row in enumerate(rows):
        out[0, k] = tuple(np.array([[v]], float) if isinstance(v, (int, float)) else v
                          for v in row)
    return out


def _mat_hoi(hoi_id, humans, objects, connection, invis=0):
    return (hoi_id, _struct_array(_BOX, humans), _struct_array(_BOX, objects),
            np.array(connection, float).reshape(-1, 2), invis)


def _write_anno_bbox(path, drop_field=None):
    size = _struct_array([("width", "O"), ("height", "O"), ("depth", "O")], [(640, 480, 3)])
    hois_1 = _struct_array(_HOI, [
        _mat_hoi(3, [(11, 12, 51, 52), (1, 2, 31, 32)], [(101, 2, 151, 62)],
                 [[1, 1], [2, 1]]),
        (9, np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0)), 1),    # invis: skipped
        _mat_hoi(600, [(5, 5, 25, 25)], [(30, 30, 60, 60)], [[1, 1]])])   # 1-element arrays
    images = [("HICO_test2015_00000001.jpg", size, hois_1),
              ("HICO_test2015_00000002.jpg", size, np.zeros((1, 0), _HOI))]
    dtype = [f for f in _IMAGE if f[0] != drop_field]
    rows = [tuple(v for f, v in zip(_IMAGE, image) if f[0] != drop_field) for image in images]
    scipy.io.savemat(path, {"bbox_test": _struct_array(dtype, rows)})


def test_read_anno_bbox_struct_layout(tmp_path):
    path = str(tmp_path / "anno_bbox.mat")
    _write_anno_bbox(path)
    gt = anno_mat.read_anno_bbox(path)
    assert gt.file_names == ("HICO_test2015_00000001.jpg", "HICO_test2015_00000002.jpg")
    np.testing.assert_array_equal(gt.image, [0, 0, 0])
    np.testing.assert_array_equal(gt.cls, [2, 2, 599])
    np.testing.assert_array_equal(gt.sub, [[11, 12, 51, 52], [1, 2, 31, 32], [5, 5, 25, 25]])
    np.testing.assert_array_equal(gt.obj, [[101, 2, 151, 62], [101, 2, 151, 62],
                                           [30, 30, 60, 60]])
    np.testing.assert_array_equal(official.instance_counts(gt, K)[[2, 8, 599]], [2, 0, 1])
    bad = str(tmp_path / "bad.mat")
    _write_anno_bbox(bad, drop_field="hoi")
    with pytest.raises(ValueError, match=r"bad\.mat.*bbox_test\(1\).*'hoi'"):
        anno_mat.read_anno_bbox(bad)
    with pytest.raises(ValueError, match=r"no field 'bbox_train'"):
        anno_mat.read_anno_bbox(path, "train")


def test_read_anno_image_labels_and_known_object(tmp_path):
    names = np.empty((2, 1), object)
    names[0, 0], names[1, 0] = "b.jpg", "a.jpg"
    labels = np.full((K, 2), np.nan)
    labels[C, 1], labels[OTHER, 0] = 1, 1
    path = str(tmp_path / "anno.mat")
    scipy.io.savemat(path, {"list_test": names, "anno_test": labels})
    read = anno_mat.read_anno_image_labels(path)
    assert read.file_names == ("b.jpg", "a.jpg")
    np.testing.assert_array_equal(read.labels, labels)
    records = [_record("a.jpg", [(C, H, O)]), _record("b.jpg", [(OTHER, H, O)])]
    predictions = {"a.jpg": _preds([(C, H, O, 0.5)]), "b.jpg": _preds([(C, H, O, 0.9)])}
    ko = _official(records, predictions, settings=("known_object",), image_labels=read)
    assert ko["known_object"]["per_class"][C]["ap"] == _ap(11)
    scipy.io.savemat(path, {"list_test": names, "anno_test": labels[:, :1]})
    with pytest.raises(ValueError, match=r"anno\.mat.*'anno_test'"):
        anno_mat.read_anno_image_labels(path)


def test_export_reads_back_to_the_same_detections(tmp_path):
    rng = np.random.default_rng(1)
    n_images, n_dets = 4, 400
    file_names = [f"HICO_test2015_{i:08d}.jpg" for i in range(1, n_images + 1)]
    predictions = {}
    for name in file_names:
        cls = rng.integers(0, K, n_dets // n_images)
        xy = rng.uniform(0, 300, (len(cls), 2, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 100, (len(cls), 2, 2))], -1)
        predictions[name] = _preds([(c, b[0], b[1], s) for c, b, s in
                                    zip(cls, boxes, rng.choice(5, len(cls)) / 4)])
    dets = official.detections_from_predictions(predictions, file_names, K)
    prepared = official.prepare_detections(dets, max_per_class=1)  # ties at the cap too
    paths = hico_export.write_detection_files(prepared, str(tmp_path), n_images, HOI_TO_OBJ)
    assert len(paths) == 80 and os.path.basename(paths[0]) == "detections_01.mat"
    person = scipy.io.loadmat(paths[0])["all_boxes"]
    airplane = scipy.io.loadmat(str(tmp_path / "detections_05.mat"))["all_boxes"]
    # PPDM's tables: person = HOIs 161-170, airplane = HOIs 1-10 (1-based).
    assert person.shape == (10, n_images) and airplane.shape == (10, n_images)
    first = official.subset(prepared, prepared.cls == 0)
    if len(first.cls):
        np.testing.assert_array_equal(airplane[0, first.image[0]][0, :4], first.sub[0])
    back = hico_export.read_detection_files(str(tmp_path), HOI_TO_OBJ, n_images)
    for got, want in zip(back, prepared):
        np.testing.assert_array_equal(got, want)
    assert np.bincount(back.cls, minlength=K).max() == 1
    np.testing.assert_array_equal(back.sub, np.round(back.sub))
    gt = official.OfficialGt(tuple(file_names), back.image[:50], back.cls[:50],
                             back.sub[:50] + 1, back.obj[:50] + 1)
    from_files = official.evaluate_official(gt, back, RARE, HOI_TO_OBJ)
    direct = official.evaluate_predictions(gt, predictions, RARE, HOI_TO_OBJ, max_per_class=1)
    for setting in official.SETTINGS:
        assert (fixture_readers.result_to_json(from_files[setting])
                == fixture_readers.result_to_json(direct[setting]))
    assert from_files["default"]["mAP"] > 0
