"""Fake HICO-Det and V-COCO folders in the real layout, for smoke runs of the real configs.

    python -m tests.fake_layout --dataset hico --out /tmp/hico_20160224_det
    python -m hoiclip_jax.train --config configs/hico5p.py --workdir /tmp/run \
        --config.dataset.root=/tmp/hico_20160224_det ...

The images are random noise (small JPEGs) and the annotations random but valid records over the
real class tables: HICO-Det in the PPDM schema (1-based verb and HOI ids, COCO object ids,
`trainval_hico.json`, `test_hico.json`, the four `trainval_hico_{p}%.json` subsets (the first
max(p %, 8) training records), `corre_hico.npy`),
V-COCO in the HOIA schema (0-based verb-role ids, `object_id` -1 for roles without an object,
`COCO_{train,val}2014_…` names). Nothing here is learnable; it checks that a config reads its
files, builds, trains and evaluates. Deterministic in `seed`.
"""
import argparse
import json
import os

import ml_collections as mlc
import numpy as np
from PIL import Image

from data_pipeline import class_tables, splits
from data_pipeline.class_tables import ClassTables

IMAGE_SIZE = (64, 48)  # (w, h)
MIN_SUBSET = 8  # records of a fake fractional file at least, so that a small batch fills up


def write_hico(root: str, num_train: int = 24, num_test: int = 8, seed: int = 0,
               official_mat: bool = False) -> str:
    """Writes `root` (hico_20160224_det/) with random records over the 600 HICO-Det HOIs;
    `official_mat` adds `anno_bbox.mat` and `anno.mat` (the official protocol's files) whose
    test list has two more images, without any pair, than test_hico.json."""
    tables = _tables("hico")
    rng = np.random.default_rng(seed)
    train = [_hico_record(tables, rng, f"HICO_train2015_{i + 1:08d}.jpg", i + 1)
             for i in range(num_train)]
    test = [_hico_record(tables, rng, f"HICO_test2015_{i + 1:08d}.jpg", i + 1)
            for i in range(num_test)]
    files = {"trainval_hico.json": train, "test_hico.json": test}
    for percent in splits.FRACTIONS:  # the first records of the training file
        count = min(num_train, max(MIN_SUBSET, num_train * percent // 100))
        files[splits.fraction_file_name(percent)] = train[:count]
    _write(root, files, {"train2015": train, "test2015": test}, rng)
    np.save(os.path.join(root, "annotations", "corre_hico.npy"),
            np.ones((tables.num_verbs, tables.num_objects)))
    if official_mat:
        empty = [{"file_name": f"HICO_test2015_{num_test + i + 1:08d}.jpg", "annotations": [],
                  "hoi_annotation": []} for i in range(2)]
        _write(root, {}, {"test2015": empty}, rng)
        _write_official_mat(root, train, test + empty, tables.num_hois)
    return root


_BOX = [(k, "O") for k in ("x1", "y1", "x2", "y2")]
_HOI = [(k, "O") for k in ("id", "bboxhuman", "bboxobject", "connection", "invis")]
_IMAGE = [(k, "O") for k in ("filename", "size", "hoi")]


def _struct_array(dtype: list, rows: list) -> np.ndarray:
    """A 1 x n MATLAB struct array for scipy.io.savemat (numbers as 1 x 1 doubles)."""
    out = np.zeros((1, len(rows)), dtype)
    for k, row in enumerate(rows):
        out[0, k] = tuple(np.array([[v]], float) if isinstance(v, (int, float)) else v
                          for v in row)
    return out


def _mat_images(records: list[dict]) -> np.ndarray:
    """`bbox_<split>` of anno_bbox.mat: one visible HOI entry per pair, boxes 1-based."""
    w, h = IMAGE_SIZE
    size = _struct_array([(k, "O") for k in ("width", "height", "depth")], [(w, h, 3)])
    rows = []
    for r in records:
        hois = []
        for pair in r["hoi_annotation"]:
            human, obj = (r["annotations"][pair[k]]["bbox"] for k in ("subject_id", "object_id"))
            one_based = lambda box: [tuple(v + 1 for v in box)]
            hois.append((pair["hoi_category_id"], _struct_array(_BOX, one_based(human)),
                         _struct_array(_BOX, one_based(obj)), np.array([[1.0, 1.0]]), 0))
        rows.append((r["file_name"], size, _struct_array(_HOI, hois) if hois
                     else np.zeros((1, 0), _HOI)))
    return _struct_array(_IMAGE, rows)


def _write_official_mat(root: str, train: list[dict], test: list[dict], num_hois: int) -> None:
    import scipy.io  # only here: the rest of the data pipeline does not need scipy
    scipy.io.savemat(os.path.join(root, "anno_bbox.mat"),
                     {"bbox_train": _mat_images(train), "bbox_test": _mat_images(test)})
    names = np.empty((len(test), 1), object)
    labels = np.full((num_hois, len(test)), np.nan)
    for i, r in enumerate(test):
        names[i, 0] = r["file_name"]
        for pair in r["hoi_annotation"]:
            labels[pair["hoi_category_id"] - 1, i] = 1.0
    scipy.io.savemat(os.path.join(root, "anno.mat"), {"list_test": names, "anno_test": labels})


def write_vcoco(root: str, num_train: int = 24, num_test: int = 8, seed: int = 0) -> str:
    """Writes `root` (v-coco/) with random records over the 263 V-COCO HOIs (HOIA schema)."""
    tables = _tables("vcoco")
    rng = np.random.default_rng(seed)
    train = [_vcoco_record(tables, rng, f"COCO_train2014_{i + 1:012d}.jpg")
             for i in range(num_train)]
    test = [_vcoco_record(tables, rng, f"COCO_val2014_{i + 1:012d}.jpg")
            for i in range(num_test)]
    _write(root, {"trainval_vcoco.json": train, "test_vcoco.json": test},
           {"train2014": train, "val2014": test}, rng)
    np.save(os.path.join(root, "annotations", "corre_vcoco.npy"),
            np.ones((tables.num_verbs, tables.num_objects)))
    return root


def _tables(name: str) -> ClassTables:
    return class_tables.load_class_tables(mlc.ConfigDict(dict(name=name, class_table="")))


def _box(rng: np.random.Generator) -> list[float]:
    """A random xyxy pixel box of at least 8 x 8 inside the image."""
    w, h = IMAGE_SIZE
    x1, y1 = rng.integers(0, w - 8), rng.integers(0, h - 8)
    return [float(x1), float(y1), float(rng.integers(x1 + 8, w + 1)),
            float(rng.integers(y1 + 8, h + 1))]


def _hico_record(tables: ClassTables, rng, file_name: str, img_id: int) -> dict:
    """One person with 1-3 HOIs on its own object box each (PPDM schema)."""
    hois = rng.choice(tables.num_hois, size=rng.integers(1, 4), replace=False)
    annotations = [{"bbox": _box(rng), "category_id": tables.coco_ids[0]}]
    pairs = []
    for hoi in hois:
        verb, obj = tables.hois[int(hoi)]
        annotations.append({"bbox": _box(rng), "category_id": tables.coco_ids[obj]})
        pairs.append({"subject_id": 0, "object_id": len(annotations) - 1,
                      "category_id": verb + tables.verb_id_base,
                      "hoi_category_id": int(hoi) + 1})
    return {"file_name": file_name, "img_id": img_id, "annotations": annotations,
            "hoi_annotation": pairs}


def _vcoco_record(tables: ClassTables, rng, file_name: str) -> dict:
    """One person with 1-3 verb-roles; a role of the no-object class gets `object_id` -1."""
    hois = rng.choice(tables.num_hois, size=rng.integers(1, 4), replace=False)
    annotations = [{"bbox": _box(rng), "category_id": tables.coco_ids[0]}]
    pairs = []
    for hoi in hois:
        verb, obj = tables.hois[int(hoi)]
        if obj == tables.no_object_index:
            object_id = -1
        else:
            annotations.append({"bbox": _box(rng), "category_id": tables.coco_ids[obj]})
            object_id = len(annotations) - 1
        pairs.append({"subject_id": 0, "object_id": object_id, "category_id": verb})
    return {"file_name": file_name, "annotations": annotations, "hoi_annotation": pairs}


def _write(root: str, files: dict[str, list], folders: dict[str, list], rng) -> None:
    """Annotation `files` and a noise JPEG for every record of the image `folders`."""
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for name, records in files.items():
        with open(os.path.join(root, "annotations", name), "w") as f:
            json.dump(records, f)
    w, h = IMAGE_SIZE
    for folder, records in folders.items():
        os.makedirs(os.path.join(root, "images", folder), exist_ok=True)
        for record in records:
            pixels = rng.integers(0, 256, (h, w, 3), np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, "images", folder,
                                                      record["file_name"]), "JPEG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("hico", "vcoco"), required=True)
    parser.add_argument("--out", required=True, help="folder to write (the dataset root)")
    parser.add_argument("--num-train", type=int, default=24)
    parser.add_argument("--num-test", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write = write_hico if args.dataset == "hico" else write_vcoco
    print(write(args.out, args.num_train, args.num_test, args.seed))


if __name__ == "__main__":
    main()
