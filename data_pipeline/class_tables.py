"""Verb, object and HOI class tables (reference §3.2) loaded from one JSON file.

The schema is that of `data_pipeline/tables/hico_classes.json`: `verbs`, `objects` (person = 0),
`coco_ids` (the COCO category id of each object, in object order), `hois` (`[{verb, object,
prompt}]` in the official HOI order), `object_prompts` (one per object, then 'a photo of nothing'),
`rare_hois` and, for HICO-Det, `zero_shot_unseen` (the unseen HOI lists of reference §3.4).
V-COCO adds a no-object class: `objects` has one entry more than `coco_ids`, the last one (index
80) being the person-only target of HOIs without a role object.
"""
import dataclasses
import functools
import json
import os

import numpy as np

TABLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tables")

# Annotation verb ids are 1-based in HICO-Det (category_id 1..117) and 0-based in the V-COCO
# conversion (category_id 0..28, see the notes of tables/vcoco_classes.json). A table may state
# its own base under the key `verb_id_base` (the synthetic set does).
_VERB_ID_BASE = {"vcoco": 0}
_DEFAULT_VERB_ID_BASE = 1


@dataclasses.dataclass(frozen=True)
class ClassTables:
    """The class tables of one data set.

    Attributes:
        name: data set name ('hico', 'vcoco', 'synthetic', ...).
        verbs: [V] verb names.
        objects: [O] object names; person = 0; V-COCO's last entry is 'no_object'.
        coco_ids: COCO category id of each real object (len O, or O - 1 with a no-object class).
        hois: [K] (verb index, object index) pairs in the official HOI order.
        hoi_prompts: [K] text prompts of the HOI classes.
        object_prompts: [O + 1] text prompts of the objects, the last one for 'nothing'.
        rare_hois: HOI indices the table marks as rare (empty for V-COCO; informational, the
            evaluation recomputes rarity from the training file with `hoi_instance_counts`).
        verb_id_base: value of annotation `category_id` for verb index 0.
        zero_shot_unseen: (setting, unseen HOI indices) pairs of the zero-shot settings of
            reference §3.4 ('rare_first', 'non_rare_first', 'unseen_object', 'unseen_verb');
            empty when the table has none (V-COCO).
    """
    name: str
    verbs: tuple[str, ...]
    objects: tuple[str, ...]
    coco_ids: tuple[int, ...]
    hois: tuple[tuple[int, int], ...]
    hoi_prompts: tuple[str, ...]
    object_prompts: tuple[str, ...]
    rare_hois: tuple[int, ...]
    verb_id_base: int = _DEFAULT_VERB_ID_BASE
    zero_shot_unseen: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def num_verbs(self) -> int:
        return len(self.verbs)

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def num_hois(self) -> int:
        return len(self.hois)

    @property
    def no_object_index(self) -> int | None:
        """Object index of the no-object role (V-COCO: 80), None when the table has none."""
        return len(self.coco_ids) if len(self.objects) == len(self.coco_ids) + 1 else None

    @functools.cached_property
    def hoi_to_verb(self) -> np.ndarray:
        """[K] int32 verb index of each HOI class."""
        return np.array([v for v, _ in self.hois], np.int32).reshape(-1)

    @functools.cached_property
    def hoi_to_obj(self) -> np.ndarray:
        """[K] int32 object index of each HOI class."""
        return np.array([o for _, o in self.hois], np.int32).reshape(-1)

    @functools.cached_property
    def _hoi_lookup(self) -> dict[tuple[int, int], int]:
        return {pair: k for k, pair in enumerate(self.hois)}

    def unseen_hois(self, setting: str) -> tuple[int, ...]:
        """The HOI indices unseen in training under zero-shot `setting` (source order)."""
        lists = dict(self.zero_shot_unseen)
        if setting not in lists:
            raise ValueError(f"zero-shot setting {setting!r} is not in the '{self.name}' tables "
                             f"(they define {sorted(lists) or 'none'})")
        return lists[setting]

    def hoi_index(self, verb: int, obj: int) -> int:
        """HOI index of (verb index, object index); KeyError when the pair is not a class."""
        try:
            return self._hoi_lookup[(int(verb), int(obj))]
        except KeyError:
            raise KeyError(f"({self.verbs[verb] if 0 <= verb < self.num_verbs else verb}, "
                           f"{self.objects[obj] if 0 <= obj < self.num_objects else obj}) = "
                           f"(verb {verb}, object {obj}) is not an HOI class of the "
                           f"'{self.name}' tables") from None


def load_class_tables(dataset_config) -> ClassTables:
    """Loads the tables of `dataset_config.name`, or of `dataset_config.class_table` if set."""
    path = dataset_config.class_table
    if not path:
        path = os.path.join(TABLES_DIR, f"{dataset_config.name}_classes.json")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"dataset.class_table is empty and there is no packaged table for dataset "
                f"'{dataset_config.name}' ({path}); set dataset.class_table")
    return read_class_tables(path, dataset_config.name)


def load_json(path: str, error: type[Exception] = ValueError):
    """json.load of `path`; a syntax error (a truncated file included) raises `error` naming the
    file, line and column, and bytes that are not UTF-8 name the file and the byte offset."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise error(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: "
                        f"{e.msg}") from None
        except UnicodeDecodeError as e:  # e.g. a file cut inside a multi-byte character
            raise error(f"{path}: not UTF-8 text at byte {e.start}: {e.reason}") from None


def read_class_tables(path: str, name: str) -> ClassTables:
    """Reads and validates a class-table JSON; `name` is the data set it belongs to."""
    raw = load_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    for key in ("verbs", "objects", "coco_ids", "hois", "object_prompts"):
        if not isinstance(raw.get(key), list):
            raise ValueError(f"{path}: key '{key}' must be a list")
    # V-COCO has no rare split, so its table has no `rare_hois`.
    rare = raw["rare_hois"] if "rare_hois" in raw else []
    if not isinstance(rare, list):
        raise ValueError(f"{path}: key 'rare_hois' must be a list")
    base = raw["verb_id_base"] if "verb_id_base" in raw else _VERB_ID_BASE.get(
        name, _DEFAULT_VERB_ID_BASE)
    tables = ClassTables(
        name=name,
        verbs=tuple(raw["verbs"]),
        objects=tuple(raw["objects"]),
        coco_ids=tuple(raw["coco_ids"]),
        hois=tuple(_hoi_pair(path, i, h) for i, h in enumerate(raw["hois"])),
        hoi_prompts=tuple(h["prompt"] for h in raw["hois"]),
        object_prompts=tuple(raw["object_prompts"]),
        rare_hois=tuple(rare),
        verb_id_base=base,
        zero_shot_unseen=_zero_shot_lists(path, raw),
    )
    _check_tables(path, tables, raw)
    return tables


def _hoi_pair(path: str, i: int, hoi) -> tuple[int, int]:
    if not (isinstance(hoi, dict) and _is_int(hoi.get("verb")) and _is_int(hoi.get("object"))
            and isinstance(hoi.get("prompt"), str)):
        raise ValueError(f"{path}: hois[{i}] must be {{verb: int, object: int, prompt: str}}, "
                         f"got {hoi!r}")
    return hoi["verb"], hoi["object"]


def _zero_shot_lists(path: str, raw: dict) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """`zero_shot_unseen` ({setting: [HOI index]}) as sorted (setting, indices) pairs."""
    lists = raw["zero_shot_unseen"] if "zero_shot_unseen" in raw else {}
    if not isinstance(lists, dict) or not all(isinstance(v, list) for v in lists.values()):
        raise ValueError(f"{path}: key 'zero_shot_unseen' must map setting names to lists")
    return tuple((name, tuple(lists[name])) for name in sorted(lists))


def _check_tables(path: str, t: ClassTables, raw: dict) -> None:
    """Raises ValueError naming the field when the tables are inconsistent."""
    def fail(field, msg):
        raise ValueError(f"{path}: {field}: {msg}")

    if not t.verbs or not all(isinstance(v, str) for v in t.verbs):
        fail("verbs", "must be a non-empty list of strings")
    if not t.objects or not all(isinstance(o, str) for o in t.objects):
        fail("objects", "must be a non-empty list of strings")
    if t.objects[0] != "person":
        fail("objects[0]", f"must be 'person', got {t.objects[0]!r}")
    if len(t.coco_ids) not in (t.num_objects, t.num_objects - 1):
        fail("coco_ids", f"{len(t.coco_ids)} ids for {t.num_objects} objects")
    if not all(_is_int(c) for c in t.coco_ids) or len(set(t.coco_ids)) != len(t.coco_ids):
        fail("coco_ids", "must be distinct integers")
    if "no_object_index" in raw and raw["no_object_index"] != t.no_object_index:
        fail("no_object_index", f"{raw['no_object_index']} but objects/coco_ids imply "
                                f"{t.no_object_index}")
    for k, (v, o) in enumerate(t.hois):
        if not (0 <= v < t.num_verbs and 0 <= o < t.num_objects):
            fail(f"hois[{k}]", f"(verb {v}, object {o}) out of range")
    if len(set(t.hois)) != t.num_hois:
        fail("hois", "contains duplicate (verb, object) pairs")
    if len(t.object_prompts) != t.num_objects + 1:
        fail("object_prompts", f"{len(t.object_prompts)} prompts, expected num_objects + 1 = "
                               f"{t.num_objects + 1}")
    if not all(_is_int(k) and 0 <= k < t.num_hois for k in t.rare_hois):
        fail("rare_hois", f"entries must be HOI indices in [0, {t.num_hois})")
    for setting, unseen in t.zero_shot_unseen:
        if not all(_is_int(k) and 0 <= k < t.num_hois for k in unseen) or \
                len(set(unseen)) != len(unseen):
            fail(f"zero_shot_unseen.{setting}", f"entries must be distinct HOI indices in "
                                                f"[0, {t.num_hois})")
    if not _is_int(t.verb_id_base) or t.verb_id_base not in (0, 1):
        fail("verb_id_base", f"must be 0 or 1, got {t.verb_id_base!r}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
