"""Annotation reader: accepts the synthetic files and V-COCO no-object roles, rejects every kind
of malformed record with a message naming the file, the image and the field."""
import copy
import json
import os

import ml_collections as mlc
import numpy as np
import pytest

from data_pipeline import class_tables, hico_reader
from data_pipeline.synthetic import generate as synthetic


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    synthetic.generate(out, seed=1, num_train=20, num_test=6)
    ann = os.path.join(out, "annotations")
    tables = class_tables.load_class_tables(mlc.ConfigDict(dict(
        name="synthetic", class_table=os.path.join(ann, "classes.json"))))
    with open(os.path.join(ann, "trainval_hico.json")) as f:
        raw = json.load(f)
    return ann, tables, raw


def test_reads_synthetic_files(synth):
    ann, tables, raw = synth
    records = hico_reader.read_annotations(os.path.join(ann, "trainval_hico.json"), tables)
    assert len(records) == 20
    assert [r.image_id for r in records] == list(range(20))
    for entry, r in zip(raw, records):
        assert r.file_name == entry["file_name"]
        assert r.boxes.dtype == np.float32 and r.boxes.shape == (len(entry["annotations"]), 4)
        assert r.box_labels.dtype == np.int32 and r.hois.dtype == np.int32
        assert r.hois.shape == (len(entry["hoi_annotation"]), 4)
        for sub, obj, verb, hoi in r.hois:
            assert r.box_labels[sub] == 0
            assert tables.hois[hoi] == (verb, r.box_labels[obj])
    counts = hico_reader.hoi_instance_counts(records, tables.num_hois)
    assert counts.shape == (tables.num_hois,)
    assert counts.sum() == sum(len(e["hoi_annotation"]) for e in raw)
    test = hico_reader.read_annotations(os.path.join(ann, "test_hico.json"), tables)
    assert len(test) == 6


def test_zero_area_and_inverted_boxes_are_accepted(synth, tmp_path):
    # Degenerate boxes are dropped (training) or kept (test) later, as the reference does.
    _, tables, raw = synth
    data = copy.deepcopy(raw)
    x1, y1, _, _ = data[0]["annotations"][0]["bbox"]
    data[0]["annotations"][0]["bbox"] = [x1, y1, x1, y1 + 5]
    data[1]["annotations"][0]["bbox"] = [50, 10, 20, 40]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    records = hico_reader.read_annotations(str(path), tables)
    assert records[0].boxes[0, 0] == records[0].boxes[0, 2]
    np.testing.assert_array_equal(records[1].boxes[0], [50, 10, 20, 40])
    assert hico_reader.count_inverted(records) == 1


def test_vcoco_no_object_role_and_derived_hoi(tmp_path):
    tables = class_tables.load_class_tables(mlc.ConfigDict(dict(name="vcoco", class_table="")))
    stand, hold = tables.verbs.index("stand"), tables.verbs.index("hold_obj")
    cup = tables.objects.index("cup")
    data = [{"file_name": "COCO_val2014_000000000001.jpg",
             "annotations": [{"bbox": [10, 10, 50, 90], "category_id": 1},
                             {"bbox": [40, 40, 60, 60], "category_id": tables.coco_ids[cup]}],
             "hoi_annotation": [{"subject_id": 0, "object_id": -1, "category_id": stand},
                                {"subject_id": 0, "object_id": 1, "category_id": hold}]}]
    path = tmp_path / "v.json"
    path.write_text(json.dumps(data))
    (record,) = hico_reader.read_annotations(str(path), tables)
    np.testing.assert_array_equal(record.hois, [
        [0, -1, stand, tables.hoi_index(stand, 80)],
        [0, 1, hold, tables.hoi_index(hold, cup)]])
    assert record.box_labels.tolist() == [0, cup]


def _set(path, value):
    """A corruption that sets data[path...] = value (value(data) when callable)."""
    def corrupt(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(data) if callable(value) else value
        return data
    return corrupt


def _first_hoi(data):
    return next(i for i, e in enumerate(data) if e["hoi_annotation"])


CORRUPTIONS = {
    "missing file_name": (lambda d: [{k: v for k, v in e.items() if k != "file_name"}
                                     for e in d], "'file_name'"),
    "annotations not a list": (_set([0, "annotations"], {"bbox": [0, 0, 1, 1]}),
                               "'annotations'"),
    "missing hoi_annotation": (lambda d: [{k: v for k, v in e.items() if k != "hoi_annotation"}
                                          for e in d], "'hoi_annotation'"),
    "bbox of 3 numbers": (_set([0, "annotations", 0, "bbox"], [1, 2, 3]), "annotations[0].bbox"),
    "bbox not finite": (_set([0, "annotations", 0, "bbox"], [1, 2, float("nan"), 9]),
                        "annotations[0].bbox"),
    "bbox of strings": (_set([0, "annotations", 0, "bbox"], ["1", "2", "3", "4"]),
                        "annotations[0].bbox"),
    "unknown category": (_set([0, "annotations", 0, "category_id"], 999),
                         "annotations[0].category_id 999"),
    "subject out of range": (lambda d: _set([_first_hoi(d), "hoi_annotation", 0, "subject_id"],
                                            57)(d), "hoi_annotation[0].subject_id"),
    "subject is a bool": (lambda d: _set([_first_hoi(d), "hoi_annotation", 0, "subject_id"],
                                         False)(d), "hoi_annotation[0].subject_id"),
    "no-object without a no-object class": (
        lambda d: _set([_first_hoi(d), "hoi_annotation", 0, "object_id"], -1)(d),
        "hoi_annotation[0].object_id"),
    "subject is not a person": (
        lambda d: _set([_first_hoi(d), "hoi_annotation", 0, "subject_id"],
                       lambda d2: d2[_first_hoi(d2)]["hoi_annotation"][0]["object_id"])(d),
        "hoi_annotation[0].subject_id"),
    "verb id out of range": (lambda d: _set([_first_hoi(d), "hoi_annotation", 0, "category_id"],
                                            0)(d), "hoi_annotation[0].category_id"),
    "hoi id inconsistent": (
        lambda d: _set([_first_hoi(d), "hoi_annotation", 0, "hoi_category_id"],
                       lambda d2: d2[_first_hoi(d2)]["hoi_annotation"][0]["hoi_category_id"] % 26
                       + 1)(d), "hoi_annotation[0].hoi_category_id"),
    "hoi id missing": (lambda d: [dict(e, hoi_annotation=[
        {k: v for k, v in h.items() if k != "hoi_category_id"} for h in e["hoi_annotation"]])
        for e in d], "hoi_category_id"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_malformed_record_names_file_image_and_field(synth, tmp_path, name):
    _, tables, raw = synth
    corrupt, field = CORRUPTIONS[name]
    data = corrupt(copy.deepcopy(raw))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(hico_reader.AnnotationError) as err:
        hico_reader.read_annotations(str(path), tables)
    message = str(err.value)
    assert str(path) in message and field in message
    assert "image #" in message
    if "file_name" not in name:
        index = int(message.split("image #")[1].split()[0])
        assert data[index]["file_name"] in message


def test_invalid_json_names_line_and_column(synth, tmp_path):
    _, tables, _ = synth
    path = tmp_path / "broken.json"
    path.write_text('[{"file_name": "a.jpg",\n  "annotations": [}]')
    with pytest.raises(hico_reader.AnnotationError, match=r"broken.json.*line 2 column"):
        hico_reader.read_annotations(str(path), tables)
    assert issubclass(hico_reader.AnnotationError, ValueError)


def test_top_level_must_be_a_list(synth, tmp_path):
    _, tables, raw = synth
    path = tmp_path / "dict.json"
    path.write_text(json.dumps({"images": raw}))
    with pytest.raises(hico_reader.AnnotationError, match="top level must be a list"):
        hico_reader.read_annotations(str(path), tables)
