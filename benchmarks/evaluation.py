r"""Seconds of post-processing and python-protocol evaluation on data-set-sized workloads.

    python benchmarks/evaluation.py                       # HICO-Det 9,546 + V-COCO 4,946 images
    python benchmarks/evaluation.py --hico-images 500 --vcoco-images 300 --no-cli   # quick look

Draws synthetic test sets shaped like the timing workloads of the reference fixture READMEs
(`tests/fixtures/{hico,vcoco}_eval/README.md`): HICO-Det 9,546 images with 1-8 GT pairs each
(humans reused with p 0.3, a second verb with p 0.2: ~51k GT HOIs); V-COCO 4,946 images with
1-6 pairs (humans reused with p 0.5; 29 of the 263 HOI classes have no object: ~17k GT HOIs). The
model outputs are 64 queries per image: a third sit on a GT pair (boxes jittered by 12% of their
size, the GT's HOI class or, with p 0.3, another verb of the same object, and the GT object's
logit raised), the rest are random; the background logits are N(-7, 1.5) (HOI) and N(-6, 1.5)
(object), as in the fixture generators' parameters.

Then, timed (the drawing of the data is not):
  * top-k: `scoring.hico_topk` / `vcoco_topk` jitted, batches of 16 images as the evaluation
    loop runs them, results fetched to the host (compilation timed apart, on a first batch);
  * evaluation: `protocols.hico_topk.predictions_from_topk` (with or without triplet NMS) then
    `protocols.hico.evaluate`; for V-COCO `protocols.vcoco.predictions_from_topk` then `evaluate`;
  * the fixture CLIs (`python -m hoiclip_jax.eval.protocols.{hico,vcoco} --fixture FILE`, a whole
    process: start-up, imports, JSON parsing, evaluation) on the same predictions written to a
    temporary file in the fixture schema.
It prints a Markdown table of seconds beside the reference's times from the fixture READMEs
(2-core machine: HICO 212-243 s with NMS, 169 s without, 1.5 s for scores and top-100; V-COCO
74 s), and the 1-minute load average before and after: other work on the machine slows the
numbers.
"""
import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from data_pipeline import class_tables
from hoiclip_jax.eval import scoring
from hoiclip_jax.eval.protocols import hico, hico_topk, vcoco
from tests import fixture_readers

TABLES_DIR = os.path.join(REPO, "data_pipeline", "tables")


@dataclasses.dataclass(frozen=True)
class Workload:
    """How a synthetic test set is drawn (the fixture generators' parameters)."""
    name: str                 # 'hico' | 'vcoco': selects the class tables
    n_images: int
    max_pairs: int            # GT pairs per image: uniform in 1..max_pairs
    p_reuse_human: float      # a pair reuses an earlier human of the image
    p_second_verb: float      # a pair gets a second HOI class (same object, other verb)
    num_queries: int = 64
    near_fraction: float = 1 / 3
    jitter: float = 0.12      # sd of the box-corner noise, relative to the box size
    p_wrong_verb: float = 0.3
    strong: tuple = (0.5, 1.5)       # (mean, sd) of the HOI logit of a near-GT query
    obj_match: tuple = (1.0, 1.5)    # its object logit
    rand: tuple = (-1.0, 1.5)        # one HOI logit of a random query
    obj_rand: tuple = (-0.5, 1.5)    # one object logit of a random query
    bg_hoi: tuple = (-7.0, 1.5)
    bg_obj: tuple = (-6.0, 1.5)


def random_box(rng, width: int, height: int) -> list[float]:
    """An integer xyxy box of 15-60% of the image side."""
    w, h = rng.uniform(0.15, 0.6) * width, rng.uniform(0.15, 0.6) * height
    x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return [float(round(v)) for v in (x1, y1, x1 + w, y1 + h)]


def make_gt(rng, work: Workload, tables) -> list[dict]:
    """Per image: width, height, gt_boxes [n, 4], gt_box_labels [n], gt_hois [h, 4] (subject,
    object or -1, verb, HOI)."""
    by_obj = {o: np.flatnonzero(tables.hoi_to_obj == o) for o in range(tables.num_objects)}
    images = []
    for _ in range(work.n_images):
        width, height = int(rng.integers(400, 641)), int(rng.integers(300, 481))
        boxes, labels, humans, hois = [], [], [], []
        for _ in range(int(rng.integers(1, work.max_pairs + 1))):
            if humans and rng.random() < work.p_reuse_human:
                sub = humans[int(rng.integers(len(humans)))]
            else:
                sub = len(boxes)
                humans.append(sub)
                boxes.append(random_box(rng, width, height))
                labels.append(0)
            cls = int(rng.integers(tables.num_hois))
            o = int(tables.hoi_to_obj[cls])
            obj = -1
            if o != tables.no_object_index:
                obj = len(boxes)
                boxes.append(random_box(rng, width, height))
                labels.append(o)
            classes = [cls]
            if rng.random() < work.p_second_verb:
                classes.append(int(rng.choice(by_obj[o])))
            hois += [(sub, obj, int(tables.hoi_to_verb[c]), c) for c in dict.fromkeys(classes)]
        images.append({"width": width, "height": height,
                       "gt_boxes": np.array(boxes, np.float64).reshape(-1, 4),
                       "gt_box_labels": np.array(labels, np.int64),
                       "gt_hois": np.array(hois, np.int64).reshape(-1, 4)})
    return images


def normalised_cxcywh(xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    x1, y1, x2, y2 = np.moveaxis(xyxy, -1, 0)
    return np.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                     (x2 - x1) / width, (y2 - y1) / height], axis=-1)


def make_outputs(rng, images: list[dict], work: Workload, tables, by_obj) -> dict:
    """Final-layer model outputs for `images` (see the module docstring), float32 numpy."""
    b, n, k, o = len(images), work.num_queries, tables.num_hois, tables.num_objects + 1
    hoi = rng.normal(*work.bg_hoi, (b, n, k)).astype(np.float32)
    obj = rng.normal(*work.bg_obj, (b, n, o)).astype(np.float32)
    centres, sizes = rng.uniform(0.2, 0.8, (2, b, n, 2)), rng.uniform(0.1, 0.5, (2, b, n, 2))
    boxes = np.concatenate([centres, sizes], axis=-1).astype(np.float32)  # [2, b, n, 4]
    near = round(n * work.near_fraction)
    rest = np.arange(near, n)
    for i, image in enumerate(images):
        rows = image["gt_hois"][rng.integers(len(image["gt_hois"]), size=near)]
        gt = image["gt_boxes"]
        for side, col in ((0, 0), (1, 1)):
            has = rows[:, col] >= 0
            xyxy = gt[rows[has, col]]
            noisy = xyxy + rng.normal(0, work.jitter, xyxy.shape) * np.tile(
                xyxy[:, 2:] - xyxy[:, :2], 2)
            boxes[side, i, np.flatnonzero(has)] = normalised_cxcywh(
                noisy, image["width"], image["height"])
        cls = rows[:, 3].copy()
        for q in np.flatnonzero(rng.random(near) < work.p_wrong_verb):
            same_obj = by_obj[int(tables.hoi_to_obj[cls[q]])]
            cls[q] = same_obj[rng.integers(len(same_obj))]
        hoi[i, np.arange(near), cls] = rng.normal(*work.strong, near)
        obj[i, np.arange(near), tables.hoi_to_obj[cls]] = rng.normal(*work.obj_match, near)
        hoi[i, rest, rng.integers(k, size=len(rest))] = rng.normal(*work.rand, len(rest))
        obj[i, rest, rng.integers(o - 1, size=len(rest))] = rng.normal(*work.obj_rand,
                                                                       len(rest))
    size = np.array([[im["height"], im["width"]] for im in images], np.int32)
    return {"hoi_logits": hoi, "obj_logits": obj, "sub_boxes": boxes[0], "obj_boxes": boxes[1],
            "orig_size": size}


def run_topk(rng, gts: list[dict], work: Workload, tables, topk_fn, batch: int):
    """Runs `topk_fn(outputs)` over all images in batches of `batch` (the last one padded).

    Returns (stacked numpy top-k of all images, seconds of the calls after compilation,
    seconds of the first, compiling, call).
    """
    by_obj = {o: np.flatnonzero(tables.hoi_to_obj == o) for o in range(tables.num_objects)}
    first = make_outputs(rng, gts[:batch] + gts[:1] * (batch - len(gts[:batch])), work,
                         tables, by_obj)
    start = time.perf_counter()
    jax.block_until_ready(topk_fn(first))
    compile_s = time.perf_counter() - start
    parts, seconds = [], 0.0
    for lo in range(0, len(gts), batch):
        chunk = gts[lo:lo + batch]
        outputs = make_outputs(rng, chunk + chunk[:1] * (batch - len(chunk)), work, tables,
                               by_obj)
        start = time.perf_counter()
        out = jax.device_get(topk_fn(outputs))
        seconds += time.perf_counter() - start
        parts.append({key: value[:len(chunk)] for key, value in out.items()})
    stacked = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return stacked, seconds, compile_s


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def hico_rows(args, rng, tables, fixture_dir: str) -> list[tuple]:
    work = Workload("hico", args.hico_images, max_pairs=8, p_reuse_human=0.3, p_second_verb=0.2)
    gts = make_gt(rng, work, tables)
    n_gt = sum(len(g["gt_hois"]) for g in gts)
    hoi_to_obj = jax.numpy.asarray(tables.hoi_to_obj)

    def topk_fn(o):
        return scoring.hico_topk(o["hoi_logits"], o["obj_logits"], o["sub_boxes"],
                                     o["obj_boxes"], o["orig_size"], hoi_to_obj, k=100)

    topk, topk_s, compile_s = run_topk(rng, gts, work, tables, topk_fn, args.batch)
    label = f"HICO-Det ({len(gts)} images, {n_gt} GT HOIs)"
    rows = [(label, "top-k (hico_topk, jit)", topk_s, "1.5", f"compile {compile_s:.1f} s")]
    def evaluate(use_nms):
        images = hico_topk.predictions_from_topk(topk, use_nms, 0.7, 1.0, 0.5)
        for image, gt in zip(images, gts):
            image["gt_boxes"], image["gt_hois"] = gt["gt_boxes"], gt["gt_hois"]
        return hico.evaluate(images, tables.rare_hois, tables.num_hois)

    for use_nms, reference in ((False, "169"), (True, "212-243")):
        result, seconds = timed(evaluate, use_nms)
        rows.append((label, f"evaluation, {'with' if use_nms else 'no'} NMS", seconds,
                     reference, f"mAP {result['mAP']:.4f}, rare {result['mAP_rare']:.4f}"))
    rows.append((label, "top-k + evaluation, no NMS", topk_s + rows[-2][2], "170.5", ""))
    rows.append((label, "top-k + evaluation with NMS", topk_s + rows[-2][2], "213.5-244.5",
                 ""))
    if not args.no_cli:
        path = os.path.join(fixture_dir, "hico_sized.json")
        write_hico_fixture(path, topk, gts, tables)
        rows.append(cli_row(label, "hico", path, "no-NMS and NMS evaluation (2 runs)"))
    return rows


def vcoco_rows(args, rng, tables, fixture_dir: str) -> list[tuple]:
    work = Workload("vcoco", args.vcoco_images, max_pairs=6, p_reuse_human=0.5,
                    p_second_verb=0.0)
    thesis = read_json(os.path.join(TABLES_DIR, "vcoco_classes.json"))["thesis_verb_ids"]
    gts = make_gt(rng, work, tables)
    n_gt = sum(len(g["gt_hois"]) for g in gts)
    correct = scoring.vcoco_correct_mat(tables.hoi_to_verb, tables.hoi_to_obj,
                                            tables.num_verbs, tables.num_objects + 1)
    hoi_to_obj, hoi_to_verb = (jax.numpy.asarray(tables.hoi_to_obj),
                               jax.numpy.asarray(tables.hoi_to_verb))

    def topk_fn(o):
        return scoring.vcoco_topk(o["hoi_logits"], o["obj_logits"], o["sub_boxes"],
                                      o["obj_boxes"], o["orig_size"], hoi_to_obj, hoi_to_verb,
                                      correct, k=100)

    topk, topk_s, compile_s = run_topk(rng, gts, work, tables, topk_fn, args.batch)
    label = f"V-COCO ({len(gts)} images, {n_gt} GT HOIs)"

    def evaluate():
        images = vcoco.predictions_from_topk(topk)
        for image, gt in zip(images, gts):
            image.update(gt_boxes=gt["gt_boxes"], gt_box_labels=gt["gt_box_labels"],
                         gt_hois=gt["gt_hois"])
        return vcoco.evaluate(images, tables.num_verbs, thesis)

    result, seconds = timed(evaluate)
    rows = [(label, "top-k (vcoco_topk, jit)", topk_s, "", f"compile {compile_s:.1f} s"),
            (label, "evaluation (python proxy)", seconds, "74",
             f"mAP_all {result['mAP_all']:.4f}, thesis {result['mAP_thesis']:.4f}"),
            (label, "top-k + evaluation", topk_s + seconds, "", "")]
    if not args.no_cli:
        path = os.path.join(fixture_dir, "vcoco_sized.json")
        write_vcoco_fixture(path, topk, gts, tables, thesis)
        rows.append(cli_row(label, "vcoco", path, "proxy evaluation"))
    return rows


def fixture_images(topk: dict, gts: list[dict], prediction_fn) -> list[dict]:
    """The fixture schema's per-image fields (predictions as float32-valued doubles)."""
    images = []
    for i, (pred, gt) in enumerate(zip(prediction_fn(topk), gts)):
        image = {"image_id": i, "filename": f"img_{i:05d}.jpg", "width": gt["width"],
                 "height": gt["height"], "gt_boxes": gt["gt_boxes"].tolist(),
                 "gt_box_labels": gt["gt_box_labels"].tolist()}
        image.update({k: v.astype(np.float32).astype(np.float64).tolist()
                      if v.dtype.kind == "f" else v.tolist() for k, v in pred.items()})
        images.append(image)
    return images


def write_hico_fixture(path: str, topk: dict, gts: list[dict], tables) -> None:
    images = fixture_images(topk, gts, lambda t: hico_topk.predictions_from_topk(t, False, 0, 1, 1))
    for image, gt, keep in zip(images, gts, hico.triplet_nms_keep(
            hico_topk.predictions_from_topk(topk, False, 0, 1, 1), 0.7, 1.0, 0.5)):
        image["gt_hois"] = gt["gt_hois"].tolist()
        image["nms_keep"] = keep.tolist()
    config = {"overlap_iou": 0.5, "max_hois": 100, "zero_shot_type": "default",
              "thres_nms": 0.7, "nms_alpha": 1.0, "nms_beta": 0.5}
    write_json(path, {"schema": fixture_readers.HICO_SCHEMA, "name": "hico_sized_benchmark",
                      "produced_by": "benchmarks/evaluation.py (synthetic; no reference output)",
                      "evaluator_config": config, "hoi_classes": [list(h) for h in tables.hois],
                      "rare_hoi_ids": list(tables.rare_hois), "images": images, "expected": {}})


def write_vcoco_fixture(path: str, topk: dict, gts: list[dict], tables, thesis) -> None:
    images = fixture_images(topk, gts, vcoco.predictions_from_topk)
    for image, gt in zip(images, gts):
        image["gt_hois"] = gt["gt_hois"][:, :3].tolist()
    config = {"overlap_iou": 0.5, "max_hois": 100, "score_mode": 1,
              "correct_mat": "scoring.vcoco_correct_mat stand-in"}
    write_json(path, {"schema": fixture_readers.VCOCO_SCHEMA, "name": "vcoco_sized_benchmark",
                      "produced_by": "benchmarks/evaluation.py (synthetic; no reference output)",
                      "evaluator_config": config, "verb_classes": list(tables.verbs),
                      "thesis_map_indices": thesis, "images": images, "expected": {}})


def cli_row(label: str, protocol: str, path: str, what: str) -> tuple:
    """Times `python -m tests.fixture_readers <protocol> --fixture path` as a whole process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tests.fixture_readers", protocol, "--fixture", path],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    size_mb = os.path.getsize(path) / 2**20
    return (label, f"fixture CLI `-m tests.fixture_readers {protocol}`", seconds, "",
            f"{what}; {size_mb:.0f} MB JSON")


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"jax {jax.__version__} ({jax.default_backend()})")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hico-images", type=int, default=9546)
    parser.add_argument("--vcoco-images", type=int, default=4946)
    parser.add_argument("--batch", type=int, default=16, help="images per top-k call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cli", action="store_true", help="skip the fixture-CLI rows")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()[0]
    print(f"# {machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as fixture_dir:
        if args.hico_images:
            tables = class_tables.read_class_tables(
                os.path.join(TABLES_DIR, "hico_classes.json"), "hico")
            rows += hico_rows(args, rng, tables, fixture_dir)
        if args.vcoco_images:
            tables = class_tables.read_class_tables(
                os.path.join(TABLES_DIR, "vcoco_classes.json"), "vcoco")
            rows += vcoco_rows(args, rng, tables, fixture_dir)
    print("| workload | step | seconds | reference s | notes |")
    print("|---|---|---|---|---|")
    for label, step, seconds, reference, notes in rows:
        print(f"| {label} | {step} | {seconds:.2f} | {reference} | {notes} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak_cli = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"# 1-min load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}; peak RSS "
          f"{peak:.2f} GB (this process, incl. the synthetic data), {peak_cli:.2f} GB (CLIs)")


if __name__ == "__main__":
    main()
