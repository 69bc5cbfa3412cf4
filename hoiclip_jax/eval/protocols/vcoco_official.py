"""Official V-COCO role AP (Gupta and Malik's `vsrl_eval.py` protocol) in Python 3, vectorised.

Written from the protocol's description (`docs/reference.md` §P2), not from its
code. The ground truth comes from the standard files (`read_vcoco_gt`): `vcoco_test.json` (26
action dicts), COCO's `instances_vcoco_all_2014.json` and `vcoco_test.ids`. Detections are the
protocol's pickle format: a list of dicts, one per detected person (`detections_from_topk`
makes them from `scoring.vcoco_topk`): `image_id`, `person_box` [x1, y1, x2, y2],
`'{action}_agent'` = score and `'{action}_{role}'` = [x1, y1, x2, y2, score], an empty role box
being all zeros or all NaN.

Role AP of one (action, role) entry (`role_ap`), 25 entries (hit, eat and cut have two roles):
  - a detection is dropped when its role score is NaN;
  - its person box goes to the GT person of its image with the largest IoU (the first one on
    ties, even when every IoU is 0); if that person has no V-COCO annotation the detection is
    dropped;
  - it is a TP iff that person has the action, person IoU >= 0.5, role IoU >= 0.5 and the person
    is not yet covered for this entry in this image (detections of an image in descending role
    score); otherwise an FP;
  - when the person has the action but no role object: Scenario 1 counts the role as right only
    for an empty predicted role box, Scenario 2 always;
  - AP is the all-point VOC area over the detections of all images in descending score, with
    recall over every GT person that has the action (roles without object included).
The mean is over the 25 entries (`AP_role_25`) and, as papers report it, over the 24 without
point_instr (`AP_role_24`); both skip NaN entries (an action without GT person).

IoUs follow the protocol's +1-pixel formula with a clamped intersection (= `nms.nms_iou`);
GT boxes are COCO's xywh read as x2 = x1 + max(0, w - 1), clipped to the image. Where the
protocol's own code is silent or fails we chose: detections in an image without any GT person
count as FPs (the original raises on the empty argmax), an entry without detections has AP 0,
the arithmetic is float64 (the original mixes float32), and equal scores are visited with the
later detection first (what the original's `argsort()[::-1]` gives for small arrays; for large
ones its order of ties is unspecified).
"""
import dataclasses
import re
from typing import Mapping, Optional, Sequence

import numpy as np

from hoiclip_jax.eval import nms


POINT_INSTR = "point_instr"   # left out of the 24-entry mean, as papers report
_ROLE_SUFFIXES = ("obj", "instr")


@dataclasses.dataclass(frozen=True)
class VcocoGroundTruth:
    """The V-COCO test annotations that the role AP reads.

    Attributes:
      actions: [A] action names in file order (26: hold, stand, sit, ...).
      roles: [A] role names of each action after 'agent' (0, 1 or 2 of 'obj' / 'instr').
      image_ids: [I] int64 COCO image ids of the split, in ids-file order.
      person_image: [P] int64 index into image_ids of each GT person (valid COCO person boxes).
      person_boxes: [P, 4] float64 xyxy pixels.
      person_actions: [P, A] int8: 1 has the action, 0 has not, -1 person not annotated in
        V-COCO (detections matched to it are ignored).
      role_boxes: [P, A, 2, 4] float64 role object box of each (person, action, role); NaN
        where there is none (role not annotated, no second role, action not done).
    """
    actions: tuple[str, ...]
    roles: tuple[tuple[str, ...], ...]
    image_ids: np.ndarray
    person_image: np.ndarray
    person_boxes: np.ndarray
    person_actions: np.ndarray
    role_boxes: np.ndarray

    @property
    def entries(self) -> list[tuple[int, int]]:
        """The (action index, role index) pairs that get a role AP, in file order."""
        return [(a, r) for a, roles in enumerate(self.roles) for r in range(len(roles))]

    @property
    def entry_names(self) -> list[str]:
        """'{action}_{role}' of each entry (the detection keys, e.g. 'hit_instr')."""
        return [f"{self.actions[a]}_{self.roles[a][r]}" for a, r in self.entries]


def role_ap(gt: VcocoGroundTruth, detections: Sequence[Mapping], scenario: int = 1,
            overlap_iou: float = 0.5) -> dict:
    """Role AP of every (action, role) entry and their means (module docstring).

    Args:
      gt: `read_vcoco_gt` output.
      detections: the protocol's per-person dicts (`detections_from_topk`); only the keys
        `image_id`, `person_box` and the 25 `'{action}_{role}'` are read. Detections of images
        outside `gt.image_ids` are ignored.
      scenario: 1 or 2 (how a role without GT object is judged).
      overlap_iou: IoU needed for the person and for the role box (0.5).

    Returns:
      `AP_role_25`, `AP_role_24` (nanmean without point_instr; fractions) and `per_role`:
      {'{action}_{role}': {ap, n_pos, n_det, n_tp}}, n_det counting the detections recorded
      (not dropped) for the entry.
    """
    if scenario not in (1, 2):
        raise ValueError(f"role_ap: scenario must be 1 or 2, got {scenario}")
    image, person_box, role_box, role_score = _detection_arrays(gt, detections)
    person, person_iou = _match_persons(gt, image, person_box)
    n_pos = (gt.person_actions == 1).sum(0)
    per_role = {}
    for e, ((a, r), name) in enumerate(zip(gt.entries, gt.entry_names)):
        tp, score = _entry_tp(gt, a, r, image, person, person_iou, role_box[:, e],
                              role_score[:, e], scenario, overlap_iou)
        ap = _all_point_ap(tp, score, n_pos[a]) if n_pos[a] else float("nan")
        per_role[name] = {"ap": ap, "n_pos": int(n_pos[a]), "n_det": len(tp),
                          "n_tp": int(tp.sum())}
    aps = np.array([v["ap"] for v in per_role.values()])
    without_point = np.array([v["ap"] for k, v in per_role.items() if k != POINT_INSTR])
    return {"AP_role_25": _nanmean(aps), "AP_role_24": _nanmean(without_point),
            "per_role": per_role}


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def _detection_arrays(gt: VcocoGroundTruth, detections: Sequence[Mapping]):
    """image [D] (index into gt.image_ids), person_box [D, 4], role_box [D, E, 4] and
    role_score [D, E] of the detections of the split's images."""
    index = {int(i): n for n, i in enumerate(gt.image_ids.tolist())}
    try:
        where = [(n, index.get(int(d["image_id"]))) for n, d in enumerate(detections)]
    except KeyError:
        raise KeyError("role_ap: every detection needs an 'image_id'") from None
    kept = [n for n, i in where if i is not None]
    dets = [detections[n] for n in kept]

    def stack(key, width):
        try:
            values = np.array([d[key] for d in dets], np.float64).reshape(len(dets), -1) \
                if dets else np.zeros((0, width))
        except KeyError:
            n = next(n for n, d in zip(kept, dets) if key not in d)
            raise KeyError(f"role_ap: detection {n} (image_id {detections[n]['image_id']}) "
                           f"has no key '{key}'") from None
        if values.shape[1] != width:
            raise ValueError(f"role_ap: '{key}' must have {width} numbers per detection, "
                             f"got {values.shape[1]}")
        return values

    roles = np.stack([stack(k, 5) for k in gt.entry_names], axis=1)  # [D, E, 5]
    image = np.array([i for _, i in where if i is not None], np.int64)
    return image, stack("person_box", 4), roles[..., :4], roles[..., 4]


def _match_persons(gt: VcocoGroundTruth, image: np.ndarray,
                   box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[D] GT person (row of gt) with the largest IoU in each detection's image, the first on
    ties (-1 when the image has no GT person), and [D] that IoU (0 when none)."""
    by_image = np.argsort(gt.person_image, kind="stable")
    lo = np.searchsorted(gt.person_image[by_image], image, side="left")
    count = np.searchsorted(gt.person_image[by_image], image, side="right") - lo
    pair_det = np.repeat(np.arange(len(image)), count)
    within = np.arange(len(pair_det)) - np.repeat(np.cumsum(count) - count, count)
    pair_person = by_image[np.repeat(lo, count) + within]
    iou = nms.nms_iou(gt.person_boxes[pair_person], box[pair_det])
    best = np.lexsort((-iou, pair_det))  # stable: the first person among equal IoUs
    first = np.ones(len(best), bool)
    first[1:] = pair_det[best[1:]] != pair_det[best[:-1]]
    person, person_iou = np.full(len(image), -1, np.int64), np.zeros(len(image))
    person[pair_det[best[first]]] = pair_person[best[first]]
    person_iou[pair_det[best[first]]] = iou[best[first]]
    return person, person_iou


def _entry_tp(gt, a, r, image, person, person_iou, role_box, role_score, scenario,
              overlap_iou) -> tuple[np.ndarray, np.ndarray]:
    """[R] bool TP and [R] score of the detections recorded for entry (a, r), in the order in
    which the protocol records them (image by image, descending score)."""
    has_person = person >= 0
    action = np.zeros(len(person), np.int8)  # no GT person in the image: never the action
    action[has_person] = gt.person_actions[person[has_person], a]
    keep = ~np.isnan(role_score) & (action != -1)
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((-idx, -role_score[idx], image[idx]))]  # ties: later detection first
    gt_role = np.full((len(idx), 4), np.nan)
    gt_role[has_person[idx]] = gt.role_boxes[person[idx][has_person[idx]], a, r]
    pred_role = role_box[idx]
    no_gt_role = np.isnan(gt_role).all(1)
    if scenario == 1:
        empty = (pred_role == 0).all(1) | np.isnan(pred_role).all(1)
        role_ok_without_gt = empty
    else:
        role_ok_without_gt = np.ones(len(idx), bool)
    with np.errstate(invalid="ignore"):
        role_iou = nms.nms_iou(np.nan_to_num(gt_role), pred_role)
        role_ok = np.where(no_gt_role, role_ok_without_gt, role_iou >= overlap_iou)
        ok = (action[idx] == 1) & (person_iou[idx] >= overlap_iou) & role_ok
    # A person is covered by the first detection (in this order) that gets it right.
    tp = np.zeros(len(idx), bool)
    hits = np.flatnonzero(ok)
    _, first = np.unique(person[idx][hits], return_index=True)
    tp[hits[first]] = True
    return tp, role_score[idx]


def _all_point_ap(tp: np.ndarray, score: np.ndarray, n_pos: int) -> float:
    """All-point (VOC2010) AP of recorded detections; equal scores: later recorded first."""
    order = np.lexsort((-np.arange(len(score)), -score))
    tp = tp[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(~tp)
    recall = np.concatenate([[0.], tp_cum / n_pos, [1.]])
    precision = np.concatenate([[0.], tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(float).eps),
                                [0.]])
    # Precision envelope: the best precision at this recall or any higher one.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def verb_action_role(verb: str) -> tuple[str, str]:
    """'hit_instr' -> ('hit', 'instr'); a verb without role suffix ('stand') -> ('stand',
    'agent')."""
    action, _, role = verb.rpartition("_")
    return (action, role) if role in _ROLE_SUFFIXES and action else (verb, "agent")


def coco_image_id(file_name: str) -> int:
    """COCO image id of a file name such as 'COCO_val2014_000000000139.jpg' (-> 139)."""
    match = re.search(r"(\d+)\.\w+$", file_name)
    if match is None:
        raise ValueError(f"no COCO image id at the end of file name {file_name!r}")
    return int(match.group(1))


def detections_from_topk(topk: Mapping[str, np.ndarray], image_ids: Sequence[int],
                         verb_names: Sequence[str], no_object_label: int,
                         keep: Optional[np.ndarray] = None) -> list[dict]:
    """The protocol's per-person detections from `scoring.vcoco_topk` output.

    GEN-VLKT's export (`generate_vcoco_official.py`, evaluation-protocols §P2): one dict per
    query (its subject box is the person); each verb(-role) of the query gets the query's
    score for it, its role box being the query's object box, or NaN when the predicted object
    is the no-object class; `'{action}_agent'` is the score of an agent-only verb, the role
    score of a one-role action and the larger of the two role scores for hit, eat and cut.
    A (query, verb) pair missing from the top-k (or dropped by `keep`) gets a NaN score, which
    the evaluator skips: with k = N * V every query has every verb, as in GEN-VLKT. Queries with
    no pair at all give no dict.

    Args:
      topk: `vcoco_topk` output as numpy (`scores`, `verb_ids`, `query_ids` [B, k],
        `sub_xyxy`, `obj_xyxy` [B, N, 4], `obj_labels` [B, N]).
      image_ids: [B] COCO image id of each image (`coco_image_id(record.file_name)`).
      verb_names: [V] verb names of the class table ('hold_obj', 'stand', ...).
      no_object_label: the object label meaning "no role object" (V-COCO: 80).
      keep: optional [B, k] bool, the pairs to export (e.g. after a triplet NMS).

    Returns:
      A list of dicts (`image_id`, `person_box`, `'{action}_agent'`, `'{action}_{role}'`),
      ready to be pickled for `vsrl_eval.py` or passed to `role_ap`.
    """
    scores = np.asarray(topk["scores"], np.float64)
    batch, num_queries = np.shape(topk["obj_labels"])
    table = np.full((batch, num_queries, len(verb_names)), np.nan)
    kept = np.ones(scores.shape, bool) if keep is None else np.asarray(keep, bool)
    b, _ = np.nonzero(kept)
    table[b, np.asarray(topk["query_ids"])[kept], np.asarray(topk["verb_ids"])[kept]] = \
        scores[kept]
    obj_boxes = np.asarray(topk["obj_xyxy"], np.float64).copy()
    obj_boxes[np.asarray(topk["obj_labels"]) == no_object_label] = np.nan
    sub_boxes = np.asarray(topk["sub_xyxy"], np.float64)
    parsed = [verb_action_role(v) for v in verb_names]
    role_verbs = [v for v, (_, role) in enumerate(parsed) if role != "agent"]
    role_keys = [f"{parsed[v][0]}_{parsed[v][1]}" for v in role_verbs]
    roles = np.empty((batch, num_queries, len(role_verbs), 5))  # the query's box, per role
    roles[..., :4] = obj_boxes[:, :, None]
    roles[..., 4] = table[..., role_verbs]
    agent_of = {}
    for v, (action, _) in enumerate(parsed):
        agent_of.setdefault(action, []).append(v)
    agent_keys = [f"{action}_agent" for action in agent_of]
    # fmax: NaN only when every role of the action is missing.
    agents = np.stack([np.fmax.reduce(table[..., verbs], axis=-1)
                       for verbs in agent_of.values()], axis=-1)
    detections = []
    for i, q in zip(*np.nonzero(~np.isnan(table).all(-1))):
        det = {"image_id": int(image_ids[i]), "person_box": sub_boxes[i, q].copy()}
        det.update(zip(role_keys, roles[i, q].copy()))  # rows of this detection's own copy
        det.update(zip(agent_keys, agents[i, q].tolist()))
        detections.append(det)
    return detections
