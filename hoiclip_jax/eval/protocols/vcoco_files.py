"""Reading the official V-COCO ground truth (s-gupta/v-coco: `vcoco_test.json`, the COCO
`instances_vcoco_all_2014.json` and `vcoco_test.ids`) into a `VcocoGroundTruth`, as
`vsrl_eval.py` builds it. Errors name the file, the entry and the field."""
import json
from typing import Mapping, Optional

import numpy as np

from hoiclip_jax.eval.protocols.vcoco_official import VcocoGroundTruth


def read_vcoco_gt(vcoco_json: str, instances_json: str, ids_file: str) -> VcocoGroundTruth:
    """Reads the standard V-COCO files into a `VcocoGroundTruth`.

    Args:
      vcoco_json: e.g. `data/vcoco/vcoco_test.json`: a list of one dict per action with
        `action_name`, `role_name` (['agent', roles...]), and per annotated person `ann_id`,
        `image_id`, `label` (1: does the action) and `role_object_id` (COCO ann ids of the
        agent and its role objects, 0 = none), stored flat and role-major as in the release
        ([n_roles * N]; a nested [N][n_roles] list is also accepted).
      instances_json: COCO instances with the split's images (`instances_vcoco_all_2014.json`).
      ids_file: e.g. `data/splits/vcoco_test.ids`, one COCO image id per line.
    """
    vsrl = _load_json(vcoco_json)
    if not isinstance(vsrl, list) or not vsrl:
        raise ValueError(f"{vcoco_json}: expected a non-empty list of action dicts")
    actions, roles, labelled = _read_actions(vcoco_json, vsrl)
    image_ids = np.loadtxt(ids_file, dtype=np.int64, ndmin=1)
    annotated = set(_field(vcoco_json, vsrl[0], 0, "ann_id").reshape(-1).tolist())
    if set(_field(vcoco_json, vsrl[0], 0, "image_id").reshape(-1).tolist()) != \
            set(image_ids.tolist()):
        raise ValueError(f"{vcoco_json}: its image ids are not those of {ids_file}")
    coco = _load_json(instances_json)
    persons = _coco_persons(instances_json, coco, image_ids)
    n = len(persons)
    person_actions = np.full((n, len(actions)), -1, np.int8)
    role_boxes = np.full((n, len(actions), 2, 4), np.nan)
    for p, (_, ann_id, _, objects) in enumerate(persons):
        if ann_id not in annotated:
            continue
        person_actions[p] = 0
        for a in range(len(actions)):
            role_ids = labelled[a].get(ann_id)
            if role_ids is None:
                continue
            person_actions[p, a] = 1
            for r, object_id in enumerate(role_ids):
                if object_id == 0:
                    continue
                if object_id not in objects:
                    raise ValueError(f"{vcoco_json}: action '{actions[a]}' role "
                                     f"'{roles[a][r]}' of person ann {ann_id} names ann "
                                     f"{object_id}, which is not a valid box of its image in "
                                     f"{instances_json}")
                role_boxes[p, a, r] = objects[object_id]
    return VcocoGroundTruth(
        actions=tuple(actions), roles=tuple(roles), image_ids=image_ids,
        person_image=np.array([x[0] for x in persons], np.int64).reshape(-1),
        person_boxes=np.array([x[2] for x in persons], np.float64).reshape(-1, 4),
        person_actions=person_actions, role_boxes=role_boxes)


def _load_json(path: str):
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def _field(path: str, action: Mapping, a: int, key: str) -> np.ndarray:
    if key not in action:
        raise ValueError(f"{path}: action dict {a} has no field '{key}'")
    return np.asarray(action[key])


def _read_actions(path: str, vsrl: list) -> tuple[list, list, list[dict]]:
    """Action names, role names and, per action, {person ann id: role object ids} of the
    persons labelled with it."""
    actions, roles, labelled = [], [], []
    for a, x in enumerate(vsrl):
        names = list(_field(path, x, a, "role_name"))
        if not names or names[0] != "agent" or len(names) > 3:
            raise ValueError(f"{path}: action {a} 'role_name' must be ['agent', up to two "
                             f"roles], got {names}")
        ann_ids = _field(path, x, a, "ann_id").reshape(-1).astype(np.int64)
        label = _field(path, x, a, "label").reshape(-1)
        role_ids = _field(path, x, a, "role_object_id").astype(np.int64)
        if role_ids.ndim == 1 and role_ids.size == len(names) * len(ann_ids):
            role_ids = role_ids.reshape(len(names), -1).T  # the release stores it role-major
        if role_ids.shape != (len(ann_ids), len(names)) or len(label) != len(ann_ids):
            raise ValueError(f"{path}: action {a} ('{x.get('action_name')}'): 'label' "
                             f"{label.shape} and 'role_object_id' {role_ids.shape} do not fit "
                             f"{len(ann_ids)} 'ann_id' and {len(names)} roles")
        positive = np.flatnonzero(label == 1)
        actions.append(str(_field(path, x, a, "action_name")))
        roles.append(tuple(str(n) for n in names[1:]))
        labelled.append({int(ann_ids[i]): role_ids[i, 1:].tolist() for i in positive})
    return actions, roles, labelled


def _coco_persons(path: str, coco: Mapping, image_ids: np.ndarray) -> list[tuple]:
    """(image index, ann id, box, {ann id: box of every valid box of the image}) of each valid
    person box of the split's images, image by image in annotation-file order."""
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{path}: COCO instances need a field '{key}'")
    # The protocol's person class is the first category (COCO id 1, 'person').
    person_category = coco["categories"][0]["id"]
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    anns = {}
    for ann in coco["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    persons = []
    for i, image_id in enumerate(image_ids.tolist()):
        if image_id not in sizes:
            raise ValueError(f"{path}: image {image_id} of the ids file is not in 'images'")
        valid = [(ann, box) for ann in anns.get(image_id, [])
                 if (box := _clean_box(ann, *sizes[image_id])) is not None]
        objects = {ann["id"]: box for ann, box in valid}
        persons += [(i, ann["id"], box, objects) for ann, box in valid
                    if ann["category_id"] == person_category]
    return persons


def _clean_box(ann: Mapping, width: float, height: float) -> Optional[list[float]]:
    """The annotation's xyxy box (x2 = x1 + max(0, w - 1), clipped to the image), or None for
    an ignored, zero-area or degenerate one."""
    if ann.get("ignore", 0) == 1:
        return None
    x, y, w, h = (float(v) for v in ann["bbox"])
    x1, y1 = min(width - 1., max(0., x)), min(height - 1., max(0., y))
    x2 = min(width - 1., max(0., x + max(0., w - 1.)))
    y2 = min(height - 1., max(0., y + max(0., h - 1.)))
    if ann["area"] > 0 and x2 > x1 and y2 > y1:
        return [x1, y1, x2, y2]
    return None
