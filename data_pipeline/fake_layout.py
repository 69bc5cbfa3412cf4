"""Fake HICO-Det and V-COCO folders in the real layout, for smoke runs of the real configs.

    python -m data_pipeline.fake_layout --dataset hico --out /tmp/hico_20160224_det
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


def write_hico(root: str, num_train: int = 24, num_test: int = 8, seed: int = 0) -> str:
    """Writes `root` (hico_20160224_det/) with random records over the 600 HICO-Det HOIs."""
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
    return root


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
