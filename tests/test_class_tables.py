"""Class tables: the packaged HICO-Det / V-COCO tables, the synthetic one, and bad tables."""
import json

import ml_collections as mlc
import numpy as np
import pytest

from data_pipeline import class_tables
from data_pipeline.synthetic import generate as synthetic, scene as synthetic_scene


def dataset_config(name: str, class_table: str = "") -> mlc.ConfigDict:
    return mlc.ConfigDict(dict(name=name, class_table=class_table))


def test_hico_tables():
    t = class_tables.load_class_tables(dataset_config("hico"))
    assert (t.num_verbs, t.num_objects, t.num_hois) == (117, 80, 600)
    assert len(t.rare_hois) == 138 and len(t.object_prompts) == 81
    assert t.no_object_index is None and t.verb_id_base == 1
    assert t.objects[0] == "person" and t.coco_ids[0] == 1
    assert t.hoi_to_verb.shape == t.hoi_to_obj.shape == (600,)
    assert t.hoi_to_verb.dtype == np.int32
    for k in (0, 123, 599):
        assert t.hoi_index(int(t.hoi_to_verb[k]), int(t.hoi_to_obj[k])) == k
    # HOI 0 is 'boarding an airplane': verb 'board', object 'airplane'.
    assert (t.verbs[t.hois[0][0]], t.objects[t.hois[0][1]]) == ("board", "airplane")


def test_vcoco_tables():
    t = class_tables.load_class_tables(dataset_config("vcoco"))
    assert (t.num_verbs, t.num_objects, t.num_hois) == (29, 81, 263)
    assert t.no_object_index == 80 and t.objects[80] == "no_object"
    assert len(t.coco_ids) == 80 and len(t.object_prompts) == 82
    assert t.verb_id_base == 0 and t.rare_hois == ()
    assert t.hoi_index(t.verbs.index("stand"), 80) >= 0


def test_synthetic_table_round_trip(tmp_path):
    counts = np.arange(len(synthetic_scene.HOIS))
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(synthetic.class_table(counts)))
    t = class_tables.load_class_tables(dataset_config("synthetic", str(path)))
    assert t.verbs == synthetic_scene.VERBS and t.objects == synthetic_scene.OBJECTS
    assert t.hois == synthetic_scene.HOIS
    assert t.rare_hois == tuple(range(10))  # classes with < 10 instances
    assert t.object_prompts[-1] == "a photo of nothing"
    assert t.hoi_prompts[t.hoi_index(1, synthetic_scene.OBJECTS.index("umbrella"))] == \
        "a photo of a person holding an umbrella"


def test_hoi_index_rejects_unknown_pair():
    t = class_tables.load_class_tables(dataset_config("hico"))
    valid = set(t.hois)
    pair = next((v, o) for v in range(t.num_verbs) for o in range(t.num_objects)
                if (v, o) not in valid)
    with pytest.raises(KeyError, match="not an HOI class"):
        t.hoi_index(*pair)


def test_no_packaged_table_for_synthetic():
    with pytest.raises(FileNotFoundError, match="class_table"):
        class_tables.load_class_tables(dataset_config("synthetic"))


@pytest.mark.parametrize("field,corrupt", [
    ("hois", lambda t: t["hois"].append(dict(t["hois"][0]))),
    ("object_prompts", lambda t: t["object_prompts"].pop()),
    ("coco_ids", lambda t: t["coco_ids"].__setitem__(1, t["coco_ids"][0])),
    ("hois[2]", lambda t: t["hois"][2].__setitem__("verb", 99)),
    ("objects[0]", lambda t: t["objects"].__setitem__(0, "ball")),
    ("rare_hois", lambda t: t["rare_hois"].append(10_000)),
])
def test_bad_tables_name_the_field(tmp_path, field, corrupt):
    table = synthetic.class_table(None)
    corrupt(table)
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        class_tables.read_class_tables(str(path), "synthetic")
