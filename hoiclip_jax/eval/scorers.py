"""The evaluation protocols' scorers: per-image top-k predictions -> table rows.

    python    HICO-Det (and the synthetic set) in the reference's python protocol (§8.1):
              Full / Rare / Non-rare (zero-shot: Unseen / Seen) mAP and mean max recall, on the
              images of the test annotation file. What training selects its best state by.
    official  HICO-Det as ho-rcnn's MATLAB code (`protocols.hico_official`): Default and
              Known-Object, on all test images of `anno_bbox.mat` (the paper's numbers).
    vcoco     V-COCO: the reference's python proxy (`mAP_all`, `mAP_thesis`, §8.2; what the
              published HOICLIP numbers are) and, when the v-coco files are there, the official
              role AP (Scenario 1 and 2, 25 and 24 roles).

A scorer is built once per test set (`build(config, tables, test_set)`, reading the protocol's
files) and then scores the per-image top-k predictions of `evaluator.predict_dataset` (one TFE
variant, `evaluator.select_variant`): `rows(predictions, name)` -> {row name: summary}, whose
keys are its `columns`. `registry.py` lists them.
"""
import dataclasses
import logging
import os
from typing import NamedTuple, Optional

import numpy as np

from data_pipeline import class_tables, loader, sources
from data_pipeline.hico_reader import HoiRecord
from data_pipeline import datasets
from hoiclip_jax.eval import scoring
from hoiclip_jax.eval.protocols import hico as hico_metrics
from hoiclip_jax.eval.protocols import anno_mat, hico_official, hico_topk, vcoco_files
from hoiclip_jax.eval.protocols import vcoco_official
from hoiclip_jax.eval.protocols import vcoco as vcoco_metrics



class Column(NamedTuple):
    key: str     # key of the summary dict
    title: str   # table header


def _none_for_nan(value) -> Optional[float]:
    return None if value is None or np.isnan(value) else float(value)


def stack_predictions(predictions: list[dict]) -> dict[str, np.ndarray]:
    """Per-image prediction dicts as one dict of arrays with a leading image axis."""
    return {k: np.stack([p[k] for p in predictions]) for k in predictions[0]}


# ----------------------------------------------------------------------------- python (HICO)

def hico_columns(groups: datasets.ClassGroups) -> tuple[Column, ...]:
    titles = [n.replace("_", "-").capitalize() for n in groups.names]
    keys = groups.metric_keys()
    return (Column(keys[0], "Full"), Column(keys[1], titles[0]), Column(keys[2], titles[1]),
            Column(keys[3], "MaxRec"))


def hico_eval_images(predictions: list[dict], records: list[HoiRecord], eval_config) -> list:
    """Top-k predictions (+ triplet NMS when `eval.use_nms`) and the GT of each record, as the
    `EvalImage`s of `protocols.hico`."""
    stacked = stack_predictions(predictions)
    images = hico_topk.predictions_from_topk(
        stacked, use_nms=eval_config.use_nms, nms_threshold=eval_config.nms_threshold,
        nms_alpha=eval_config.nms_alpha, nms_beta=eval_config.nms_beta,
        names=[r.file_name for r in records])
    for image, record in zip(images, records):
        image["gt_boxes"] = record.boxes
        image["gt_hois"] = record.hois  # (subject, object, verb, hoi): the class is the last column
    return images


def python_protocol(predictions: list[dict], records: list[HoiRecord],
                    groups: datasets.ClassGroups, num_hois: int, eval_config) -> dict:
    """`protocols.hico.evaluate`'s dict (rare / non-rare means over `groups`) plus the summary
    keys of `hico_columns(groups)`, e.g. `mAP_unseen` in a zero-shot setting."""
    images = hico_eval_images(predictions, records, eval_config)
    metrics = hico_metrics.evaluate(images, rare_hois=groups.first, num_hois=num_hois,
                                    overlap_iou=eval_config.overlap_iou,
                                    non_rare_hois=groups.second)
    first, second = groups.names
    metrics[f"mAP_{first}"] = metrics["mAP_rare"]
    metrics[f"mAP_{second}"] = metrics["mAP_non_rare"]
    return metrics


def summarise(metrics: dict, columns: tuple[Column, ...]) -> dict:
    """The table values of `metrics` as JSON-ready floats (None for NaN)."""
    return {c.key: _none_for_nan(metrics[c.key]) for c in columns}


# ----------------------------------------------------------------------------- official (HICO)

@dataclasses.dataclass(frozen=True)
class OfficialFiles:
    """The official GT of the test split and the inputs of the Known-Object setting."""
    gt: hico_official.OfficialGt
    image_labels: Optional[hico_official.ImageLabels]
    groups: datasets.ClassGroups  # rare from anno_bbox.mat's training split (official 138)


def read_official_files(config, tables) -> OfficialFiles:
    """anno_bbox.mat (and anno.mat, for Known-Object) from the dataset root."""
    root = config.dataset.root
    path = os.path.join(root, "anno_bbox.mat")
    if not os.path.exists(path):
        raise FileNotFoundError(f"protocol 'official' needs {path} (the HICO-Det release's "
                                f"anno_bbox.mat)")
    gt = anno_mat.read_anno_bbox(path, "test")
    labels_path = os.path.join(root, "anno.mat")
    labels = None
    if os.path.exists(labels_path):
        labels = anno_mat.read_anno_image_labels(labels_path, "test")
    else:
        logging.warning("%s not found: Known-Object uses image labels derived from the GT "
                        "boxes, not the official ones", labels_path)
    if config.dataset.zero_shot != "none":
        groups = datasets.class_groups(config, tables, np.zeros(tables.num_hois))
    else:  # eval_one.m: rare = < 10 instances in anno_bbox.mat's training split
        counts = hico_official.instance_counts(anno_mat.read_anno_bbox(path, "train"),
                                               tables.num_hois)
        groups = datasets.class_groups(config, tables, counts)
    return OfficialFiles(gt, labels, groups)


def official_columns(groups: datasets.ClassGroups) -> tuple[Column, ...]:
    titles = [n.replace("_", "-").capitalize() for n in groups.names]
    return (Column("mAP", "Full"), Column(f"mAP_{groups.names[0]}", titles[0]),
            Column(f"mAP_{groups.names[1]}", titles[1]), Column("mean_recall", "Recall"))


def official_protocol(predictions: list[dict], records: list[HoiRecord], files: OfficialFiles,
                      tables, eval_config) -> dict[str, dict]:
    """{'default': summary, 'known_object': summary} of `official_columns`, from the top-k
    predictions (NMS as `eval.use_nms`) of `records`, which must cover the official test list
    (images of the list without a record have no detections)."""
    images = hico_eval_images(predictions, records, eval_config)
    by_name = {r.file_name: image for r, image in zip(records, images)}
    result = hico_official.evaluate_predictions(
        files.gt, by_name, files.groups.first, np.asarray(tables.hoi_to_obj),
        image_labels=files.image_labels, non_rare_hois=files.groups.second,
        overlap_iou=eval_config.overlap_iou)
    first, second = files.groups.names
    out = {}
    for setting, metrics in result.items():
        metrics = dict(metrics, **{f"mAP_{first}": metrics["mAP_rare"],
                                   f"mAP_{second}": metrics["mAP_non_rare"]})
        out[setting] = summarise(metrics, official_columns(files.groups))
    return out


def official_records(records: list[HoiRecord], gt: hico_official.OfficialGt) -> list[HoiRecord]:
    """`records` plus an empty record for every official test image they lack (the 112 test
    images without a pair in test_hico.json), so that inference covers all of them."""
    present = {r.file_name for r in records}
    extra = [HoiRecord(file_name=name, image_id=-1 - i, boxes=np.zeros((0, 4), np.float32),
                       box_labels=np.zeros(0, np.int32), hois=np.zeros((0, 4), np.int32))
             for i, name in enumerate(n for n in gt.file_names if n not in present)]
    return list(records) + extra


# ----------------------------------------------------------------------------- V-COCO

# The standard files of the v-coco repository (s-gupta/v-coco, after its setup script), looked
# for under <dataset root>/data/: the official role AP runs when all three are there.
VCOCO_OFFICIAL_FILES = ("vcoco/vcoco_test.json", "instances_vcoco_all_2014.json",
                        "splits/vcoco_test.ids")


@dataclasses.dataclass(frozen=True)
class VcocoFiles:
    """What V-COCO scoring reads besides the predictions.

    correct_mat: [V, C] verb-object validity of §7.2 (C >= the object labels).
    thesis_verbs: the 24 verb ids of mAP_thesis.
    official_gt: the official role-AP ground truth, or None when its files are absent.
    """
    correct_mat: np.ndarray
    thesis_verbs: tuple[int, ...]
    official_gt: Optional[vcoco_official.VcocoGroundTruth]


def vcoco_correct_mat(config, tables) -> np.ndarray:
    """[V, O + 1] verb-object validity of §7.2: `<root>/annotations/corre_vcoco.npy` with the
    reference's ones column appended, or, when the file is absent (logged), the stand-in made
    from the HOI table (`scoring.vcoco_correct_mat`)."""
    path = os.path.join(config.dataset.root, "annotations", "corre_vcoco.npy")
    num_obj_logits = tables.num_objects + 1
    if not os.path.exists(path):
        logging.warning("%s not found: the verb-object validity is the stand-in made from the "
                        "HOI table (scoring.vcoco_correct_mat)", path)
        return scoring.vcoco_correct_mat(tables.hoi_to_verb, tables.hoi_to_obj,
                                             tables.num_verbs, num_obj_logits)
    mat = np.load(path).astype(np.float32)
    if mat.shape[0] != tables.num_verbs or mat.shape[1] not in (tables.num_objects - 1,
                                                                 tables.num_objects):
        raise ValueError(f"{path}: shape {mat.shape}, expected [{tables.num_verbs}, "
                         f"{tables.num_objects - 1}] (the reference's file)")
    # The reference appends a column of ones for the no-object label (§7.2).
    while mat.shape[1] < num_obj_logits:
        mat = np.concatenate([mat, np.ones((mat.shape[0], 1), np.float32)], axis=1)
    return mat


def read_vcoco_files(config, tables) -> VcocoFiles:
    """corre_vcoco.npy (a stand-in when absent), the thesis verbs and the official GT."""
    root = config.dataset.root
    mat = vcoco_correct_mat(config, tables)
    raw = class_tables.load_json(os.path.join(class_tables.TABLES_DIR, "vcoco_classes.json"))
    paths = [os.path.join(root, "data", f) for f in VCOCO_OFFICIAL_FILES]
    official = None
    if all(os.path.exists(p) for p in paths):
        official = vcoco_files.read_vcoco_gt(*paths)
    else:
        logging.info("official V-COCO role AP skipped: needs %s", ", ".join(paths))
    return VcocoFiles(mat, tuple(raw["thesis_verb_ids"]), official)


def vcoco_columns(files: VcocoFiles) -> tuple[Column, ...]:
    columns = (Column("mAP_all", "mAP_all"), Column("mAP_thesis", "mAP_thesis"))
    if files.official_gt is not None:
        columns += (Column("AP_role_S1", "S1 (24)"), Column("AP_role_S2", "S2 (24)"),
                    Column("AP_role_S1_25", "S1 (25)"), Column("AP_role_S2_25", "S2 (25)"))
    return columns


def vcoco_protocol(predictions: list[dict], records: list[HoiRecord], files: VcocoFiles,
                   tables, eval_config) -> dict:
    """The summary of `vcoco_columns`: the reference's proxy (11-point AP, mAP_all over verbs
    with GT, mAP_thesis over the 24) and, with the official files, the role AP of Scenario 1
    and 2 over the 24 roles without point_instr (as papers report) and over all 25."""
    stacked = stack_predictions(predictions)
    images = vcoco_metrics.predictions_from_topk(stacked)
    for image, record in zip(images, records):
        image.update(gt_boxes=record.boxes, gt_box_labels=record.box_labels,
                     gt_hois=record.hois)
    metrics = vcoco_metrics.evaluate(images, tables.num_verbs, files.thesis_verbs,
                                     eval_config.overlap_iou, tables.verbs)
    if files.official_gt is not None:
        image_ids = [vcoco_official.coco_image_id(r.file_name) for r in records]
        detections = vcoco_official.detections_from_topk(stacked, image_ids, tables.verbs,
                                                         tables.no_object_index)
        for scenario in (1, 2):
            ap = vcoco_official.role_ap(files.official_gt, detections, scenario,
                                        eval_config.overlap_iou)
            metrics[f"AP_role_S{scenario}"] = ap["AP_role_24"]
            metrics[f"AP_role_S{scenario}_25"] = ap["AP_role_25"]
    return summarise(metrics, vcoco_columns(files))


# ----------------------------------------------------------------------------- the scorers

class PythonScorer:
    """HICO-Det's python protocol on the records of the test annotation file."""
    correct_mat = None  # HICO-Det's top-k ranks (query, HOI class) pairs

    def __init__(self, config, tables, test_set):
        self.eval_config, self.num_hois, self.groups = config.eval, tables.num_hois, test_set.groups
        self.split = test_set.split
        self.columns = hico_columns(test_set.groups)

    def rows(self, predictions: list[dict], name: str) -> dict[str, dict]:
        metrics = python_protocol(predictions, self.split.records, self.groups, self.num_hois,
                                  self.eval_config)
        return {name: summarise(metrics, self.columns)}


@dataclasses.dataclass(frozen=True)
class FallbackImages:
    """`record -> image` from `primary` for its records, else from the image folder (the
    official test images that the test annotation file leaves out)."""
    primary: object
    folder: loader.FolderImages
    primary_ids: frozenset

    def __call__(self, record):
        if record.image_id in self.primary_ids:
            return self.primary(record)
        return self.folder(record)

    def size(self, record) -> tuple[int, int]:
        """(w, h) of the record's image (`inference.bucket_groups`)."""
        if record.image_id not in self.primary_ids:
            return self.folder.size(record)
        primary = self.primary
        return primary.size(record) if hasattr(primary, "size") else primary(record).size


class OfficialScorer:
    """HICO-Det's official protocol: every test image of anno_bbox.mat is predicted, also those
    without a pair in the test annotation file (read from the image folder)."""
    correct_mat = None

    def __init__(self, config, tables, test_set):
        self.eval_config, self.tables = config.eval, tables
        self.files = read_official_files(config, tables)
        self.columns = official_columns(self.files.groups)
        split = test_set.split
        records = official_records(split.records, self.files.gt)
        if len(records) > len(split.records):
            logging.info("protocol 'official': %d test images without a pair in %s are "
                         "predicted as well", len(records) - len(split.records),
                         config.dataset.test_file)
            d = config.dataset
            folder = loader.FolderImages(os.path.join(d.root, "images", d.test_images))
            images = FallbackImages(split.images, folder,
                                    frozenset(r.image_id for r in split.records))
            split = dataclasses.replace(split, records=records, images=images)
        self.split: sources.HoiSplit = split

    def rows(self, predictions: list[dict], name: str) -> dict[str, dict]:
        settings = official_protocol(predictions, self.split.records, self.files, self.tables,
                                     self.eval_config)
        return {f"{name} Default": settings["default"],
                f"{name} Known-Object": settings["known_object"]}


class VcocoScorer:
    """V-COCO: the reference's proxy, plus the official role AP when its files are there."""

    def __init__(self, config, tables, test_set):
        self.eval_config, self.tables = config.eval, tables
        self.files = read_vcoco_files(config, tables)
        self.correct_mat = self.files.correct_mat  # V-COCO's top-k ranks (query, verb) pairs
        self.split = test_set.split
        self.columns = vcoco_columns(self.files)

    def rows(self, predictions: list[dict], name: str) -> dict[str, dict]:
        return {name: vcoco_protocol(predictions, self.split.records, self.files, self.tables,
                                     self.eval_config)}


def hico_image_predictions(stacked: dict, eval_config) -> list[dict]:
    """HICO-Det's per-image triplets from stacked top-k: the triplet NMS of `eval_config`."""
    return hico_topk.predictions_from_topk(
        stacked, use_nms=eval_config.use_nms, nms_threshold=eval_config.nms_threshold,
        nms_alpha=eval_config.nms_alpha, nms_beta=eval_config.nms_beta)


def vcoco_image_predictions(stacked: dict, eval_config) -> list[dict]:
    """V-COCO's per-image detections from stacked top-k (no NMS, as the evaluator)."""
    del eval_config
    return vcoco_metrics.predictions_from_topk(stacked)
