"""The reference-output fixtures of the python evaluators (tests/fixtures/{hico,vcoco}_eval/):
reading `hico_eval_fixture/v1` and `vcoco_eval_fixture/v1` files, and the command line that
evaluates one and prints the result as the fixture's reference outputs are written:

    python -m tests.fixture_readers hico --fixture tests/fixtures/hico_eval/h1_default.json
    python -m tests.fixture_readers vcoco --fixture tests/fixtures/vcoco_eval/v1_default.json

HICO-Det prints {"no_nms": ..., "nms": ...} (without and with triplet NMS); V-COCO prints
{"mAP_all", "mAP_thesis", ..., "per_verb": {...}}.
"""
import argparse
import json
import math
import sys
from typing import Sequence

import numpy as np

from hoiclip_jax.eval.protocols import hico, vcoco

HICO_SCHEMA = "hico_eval_fixture/v1"
VCOCO_SCHEMA = "vcoco_eval_fixture/v1"


def read_fixture_json(path: str, schema: str) -> dict:
    """The JSON of a fixture file, checked to be of `schema` (HICO-Det's or V-COCO's)."""
    with open(path) as f:
        meta = json.load(f)
    if meta.get("schema") != schema:
        raise ValueError(f"{path}: field 'schema' is {meta.get('schema')!r}, expected "
                         f"{schema!r}")
    return meta


def load_hico_fixture(path: str) -> tuple[list, dict]:
    """Reads a `hico_eval_fixture/v1` file (fixture README): the images and the rest of the file.

    Returns:
      (images, meta): `protocols.hico.EvalImage`s (gt_hois with 4 columns), and the file's other top-level
      fields (`hoi_classes`, `rare_hoi_ids`, `evaluator_config`, `expected`, ...).
    """
    meta = read_fixture_json(path, HICO_SCHEMA)
    images = []
    for i, raw in enumerate(meta.pop("images")):
        try:
            images.append(hico.EvalImage(
                gt_boxes=np.array(raw["gt_boxes"], np.float64).reshape(-1, 4),
                gt_hois=np.array(raw["gt_hois"], np.int64).reshape(-1, 4),
                pred_boxes=np.array(raw["pred_boxes"], np.float64).reshape(-1, 4),
                pred_hois=np.array(raw["pred_hois"], np.float64).reshape(-1, 4)))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: image {i} ({raw.get('filename')}): {e!r}") from None
    return images, meta


def load_vcoco_fixture(path: str) -> tuple[list, dict]:
    """Reads a `vcoco_eval_fixture/v1` file: the images and the file's other top-level fields
    (`verb_classes`, `thesis_map_indices`, `evaluator_config`, `expected`, ...)."""
    meta = read_fixture_json(path, VCOCO_SCHEMA)
    images = []
    for i, raw in enumerate(meta.pop("images")):
        try:
            images.append(vcoco.EvalImage(
                gt_boxes=np.array(raw["gt_boxes"], np.float64).reshape(-1, 4),
                gt_box_labels=np.array(raw["gt_box_labels"], np.int64).reshape(-1),
                gt_hois=np.array(raw["gt_hois"], np.int64).reshape(-1, 3),
                pred_boxes=np.array(raw["pred_boxes"], np.float64).reshape(-1, 4),
                pred_box_labels=np.array(raw["pred_box_labels"], np.int64).reshape(-1),
                pred_hois=np.array(raw["pred_hois"], np.float64).reshape(-1, 4)))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: image {i} (image_id {raw.get('image_id')}): {e!r}") \
                from None
    return images, meta


def result_to_json(result: dict, per_key: str = "per_class") -> dict:
    """An evaluation result with string class ids under `per_key` and NaN as None (strict
    JSON); V-COCO's results use `per_key='per_verb'`."""
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v
    out = {k: clean(v) for k, v in result.items() if k != per_key}
    out[per_key] = {str(c): {k: clean(v) for k, v in stats.items()}
                    for c, stats in result[per_key].items()}
    return out


def evaluate_hico(path: str) -> dict:
    images, meta = load_hico_fixture(path)
    config = meta["evaluator_config"]
    num_hois, rare = len(meta["hoi_classes"]), meta["rare_hoi_ids"]
    no_nms = hico.evaluate(images, rare, num_hois, config["overlap_iou"])
    nms_images = hico.apply_triplet_nms(images, config["thres_nms"], config["nms_alpha"],
                                        config["nms_beta"])
    with_nms = hico.evaluate(nms_images, rare, num_hois, config["overlap_iou"])
    return {"no_nms": result_to_json(no_nms), "nms": result_to_json(with_nms)}


def evaluate_vcoco(path: str) -> dict:
    images, meta = load_vcoco_fixture(path)
    verbs = meta["verb_classes"]
    result = vcoco.evaluate(images, len(verbs), meta["thesis_map_indices"],
                            meta["evaluator_config"]["overlap_iou"], verbs)
    return result_to_json(result, per_key="per_verb")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fixture_readers",
                                     description="Evaluates a fixture file; prints one JSON "
                                                 "object.")
    parser.add_argument("protocol", choices=("hico", "vcoco"))
    parser.add_argument("--fixture", required=True, help="path of the fixture JSON")
    args = parser.parse_args(argv)
    run = evaluate_hico if args.protocol == "hico" else evaluate_vcoco
    json.dump(run(args.fixture), sys.stdout, allow_nan=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
