"""A small synthetic HOI data set in the exact HICO-Det layout, learnable in minutes on a CPU.

    python -m data_pipeline.synthetic --out data/synthetic --seed 0 --num-train 2000 --num-test 300

Writes `images/{train2015,test2015}/HICO_{split}2015_%08d.jpg` and `annotations/{trainval_hico,
test_hico}.json` (PPDM schema, reference §3.2), `annotations/classes.json` (schema of
`data_pipeline/tables/hico_classes.json`) and `annotations/corre_hico.npy` ([V, O] validity).

Each image (96..128 px a side) shows 0-3 stick figures and 0-3 objects on a plain, slightly noisy
background. Every object class has its own shape and colour. The annotations are derived from the
drawn geometry by `synthetic_scene.derive_interactions` (hand on object = hold, both hands up under
it = carry, raised foot on it = kick, both feet on top = ride, seated on it = sit_on, face turned
to the nearest object on that side = look_at, idle and far from everything = no_interaction with
the nearest object); the sampler only keeps layouts whose derived interactions are the intended
ones. Class frequencies have a long tail so that the rare split (< 10 training instances) means
something at --num-train 2000; the test split floors the sampling weights so that every class
appears in it.
"""
import argparse
import json
import os
import time

import numpy as np
from PIL import Image

from data_pipeline.synthetic import draw
from data_pipeline.synthetic import sampling, scene

RARE_THRESHOLD = 10  # as eval.rare_threshold: HOI classes with < 10 training instances
SPLITS = {"train": ("train2015", "trainval_hico.json"), "test": ("test2015", "test_hico.json")}
TEST_WEIGHT_FLOOR = 0.12
JPEG_QUALITY = 92


def class_table(train_counts: np.ndarray | None = None) -> dict:
    """The class table in the schema of tables/hico_classes.json (rare from `train_counts`)."""
    rare = [] if train_counts is None else [
        int(k) for k in np.flatnonzero(train_counts < RARE_THRESHOLD)]
    return {
        "source": "data_pipeline/synthetic/generate.py (rendered synthetic HOI data set)",
        "notes": ["verb id in annotations = verb index + 1 (as HICO-Det); object index = "
                  "position of the COCO category_id in coco_ids (person = 0).",
                  f"rare_hois: HOI classes with < {RARE_THRESHOLD} training instances in this "
                  "draw."],
        "verbs": list(scene.VERBS),
        "objects": list(scene.OBJECTS),
        "coco_ids": list(scene.COCO_IDS),
        "verb_id_base": 1,
        "hois": [{"verb": v, "object": o, "prompt": _prompt(v, o)} for v, o in scene.HOIS],
        "object_prompts": [f"a photo of {'an' if n[0] in 'aeiou' else 'a'} {n}"
                           for n in scene.OBJECTS]
                          + ["a photo of nothing"],
        "rare_hois": rare,
    }


def _prompt(verb: int, obj: int) -> str:
    name, obj_name = scene.VERBS[verb], scene.OBJECTS[obj]
    thing = f"{'an' if obj_name[0] in 'aeiou' else 'a'} {obj_name}"
    if name == "no_interaction":
        return f"a photo of a person and {thing}"
    return f"a photo of a person {scene.VERB_GERUNDS[name]} {thing}"


def image_record(file_name: str, img_id: int, picture) -> dict:
    """The PPDM-schema JSON entry of one rendered `synthetic_draw.Picture`."""
    return {
        "file_name": file_name,
        "img_id": img_id,
        "annotations": [{"bbox": [int(v) for v in box], "category_id": scene.COCO_IDS[label]}
                        for box, label in zip(picture.boxes, picture.labels)],
        "hoi_annotation": [{"subject_id": s, "object_id": o, "category_id": v + 1,
                            "hoi_category_id": scene.HOI_INDEX[(v, picture.labels[o])] + 1}
                           for s, o, v in picture.triplets],
    }


def generate_split(out: str, split: str, seed: int, num_images: int) -> list[dict]:
    """Renders and writes the images of one split; returns its JSON records."""
    folder, _ = SPLITS[split]
    image_dir = os.path.join(out, "images", folder)
    os.makedirs(image_dir, exist_ok=True)
    weights = sampling.intent_weights(floor=TEST_WEIGHT_FLOOR if split == "test" else 0.0)
    records = []
    for i in range(1, num_images + 1):
        # One generator per image: an image depends only on (seed, split, index).
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        picture = draw.render(sampling.sample_scene(rng, weights), rng)
        file_name = f"HICO_{folder}_{i:08d}.jpg"
        Image.fromarray(picture.pixels).save(os.path.join(image_dir, file_name),
                                             quality=JPEG_QUALITY)
        records.append(image_record(file_name, i, picture))
    return records


def hoi_counts(records: list[dict]) -> np.ndarray:
    """[K] number of HOI instances per class in JSON records."""
    counts = np.zeros(len(scene.HOIS), np.int64)
    for r in records:
        for h in r["hoi_annotation"]:
            counts[h["hoi_category_id"] - 1] += 1
    return counts


def generate(out: str, seed: int, num_train: int, num_test: int) -> dict:
    """Writes the whole data set under `out`; returns a summary dict."""
    records = {split: generate_split(out, split, seed, n)
               for split, n in (("train", num_train), ("test", num_test))}
    ann_dir = os.path.join(out, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    for split, (_, file_name) in SPLITS.items():
        with open(os.path.join(ann_dir, file_name), "w") as f:
            json.dump(records[split], f)
    train_counts = hoi_counts(records["train"])
    table = class_table(train_counts)
    with open(os.path.join(ann_dir, "classes.json"), "w") as f:
        json.dump(table, f, indent=1)
    np.save(os.path.join(ann_dir, "corre_hico.npy"), scene.correspondence())
    return summarize(records, train_counts, table)


def summarize(records: dict, train_counts: np.ndarray, table: dict) -> dict:
    summary = {"hoi_classes": len(scene.HOIS), "rare_classes": len(table["rare_hois"]),
               "rare_names": [f"{scene.VERBS[scene.HOIS[k][0]]} {scene.OBJECTS[scene.HOIS[k][1]]}"
                              for k in table["rare_hois"]],
               "train_classes_seen": int((train_counts > 0).sum())}
    for split, recs in records.items():
        pairs = sum(len({(h["subject_id"], h["object_id"]) for h in r["hoi_annotation"]})
                    for r in recs)
        summary[split] = {
            "images": len(recs),
            "images_without_hoi": sum(not r["hoi_annotation"] for r in recs),
            "pairs": pairs,
            "hoi_instances": sum(len(r["hoi_annotation"]) for r in recs),
            "classes_present": int((hoi_counts(recs) > 0).sum())}
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (data set root)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--num-train", type=int, required=True)
    parser.add_argument("--num-test", type=int, required=True)
    args = parser.parse_args(argv)
    tic = time.perf_counter()
    s = generate(args.out, args.seed, args.num_train, args.num_test)
    for split in ("train", "test"):
        t = s[split]
        print(f"{split:5s}: {t['images']} images ({t['images_without_hoi']} without "
              f"interactions), {t['pairs']} pairs, {t['hoi_instances']} HOI instances, "
              f"{t['classes_present']} classes present")
    print(f"HOI classes: {s['hoi_classes']} ({len(scene.VERBS)} verbs x {len(scene.OBJECTS)} "
          f"objects), {s['train_classes_seen']} seen in training; rare (< {RARE_THRESHOLD} "
          f"train instances): {s['rare_classes']}: {', '.join(s['rare_names'])}")
    print(f"Wrote {args.out} in {time.perf_counter() - tic:.1f} s")


if __name__ == "__main__":
    main()
