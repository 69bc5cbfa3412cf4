"""The reference-output fixtures of the HICO-Det python protocol (`tests/fixtures/hico_eval/`):

    python -m hoiclip_jax.eval.protocols.hico_fixture \
        --fixture tests/fixtures/hico_eval/h1_default.json

evaluates a `hico_eval_fixture/v1` file without and with triplet NMS and prints the results as
one JSON object, as the reference evaluator's outputs in the fixture are written."""
import argparse
import json
import math
import sys
from typing import Sequence

import numpy as np

from hoiclip_jax.eval.protocols.hico import EvalImage, apply_triplet_nms, evaluate

FIXTURE_SCHEMA = "hico_eval_fixture/v1"


def load_fixture(path: str) -> tuple[list[EvalImage], dict]:
    """Reads a `hico_eval_fixture/v1` file (fixture README): the images and the rest of the file.

    Returns:
      (images, meta): `EvalImage`s (gt_hois with 4 columns), and the file's other top-level
      fields (`hoi_classes`, `rare_hoi_ids`, `evaluator_config`, `expected`, ...).
    """
    with open(path) as f:
        meta = json.load(f)
    if meta.get("schema") != FIXTURE_SCHEMA:
        raise ValueError(f"{path}: field 'schema' is {meta.get('schema')!r}, expected "
                         f"{FIXTURE_SCHEMA!r}")
    images = []
    for i, raw in enumerate(meta.pop("images")):
        try:
            images.append(EvalImage(
                gt_boxes=np.array(raw["gt_boxes"], np.float64).reshape(-1, 4),
                gt_hois=np.array(raw["gt_hois"], np.int64).reshape(-1, 4),
                pred_boxes=np.array(raw["pred_boxes"], np.float64).reshape(-1, 4),
                pred_hois=np.array(raw["pred_hois"], np.float64).reshape(-1, 4)))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: image {i} ({raw.get('filename')}): {e!r}") from None
    return images, meta


def result_to_json(result: dict, per_key: str = "per_class") -> dict:
    """An evaluation result with string class ids under `per_key` and NaN as None (strict
    JSON); `protocols.vcoco` uses it with `per_key='per_verb'`."""
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v
    out = {k: clean(v) for k, v in result.items() if k != per_key}
    out[per_key] = {str(c): {k: clean(v) for k, v in stats.items()}
                    for c, stats in result[per_key].items()}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hoiclip_jax.eval.protocols.hico_fixture",
        description="Evaluates a hico_eval_fixture/v1 file without and with triplet NMS and "
                    "prints one JSON object {\"no_nms\": ..., \"nms\": ...}.")
    parser.add_argument("--fixture", required=True, help="path of the fixture JSON")
    args = parser.parse_args(argv)
    images, meta = load_fixture(args.fixture)
    config = meta["evaluator_config"]
    num_hois, rare = len(meta["hoi_classes"]), meta["rare_hoi_ids"]
    no_nms = evaluate(images, rare, num_hois, config["overlap_iou"])
    nms_images = apply_triplet_nms(images, config["thres_nms"], config["nms_alpha"],
                                   config["nms_beta"])
    with_nms = evaluate(nms_images, rare, num_hois, config["overlap_iou"])
    json.dump({"no_nms": result_to_json(no_nms), "nms": result_to_json(with_nms)}, sys.stdout,
              allow_nan=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
