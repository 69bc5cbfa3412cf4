r"""Images/s of the training input pipeline on HICO-sized JPEGs, per worker count.

    python benchmarks/input_pipeline.py --workers 0,1,2
    python benchmarks/input_pipeline.py --workers 2 --threads 2 --batch 16 --steps 12 \
        --images /tmp/hico_bench

Writes (once; kept and reused when `--images` names a folder that has them) `--num-images` 640x480
JPEGs with random boxes and a HICO-schema `trainval_hico.json` over the packaged HICO class tables,
then runs `data_pipeline.loader.train_batches` with the HICO dataset config of
`hoiclip_jax/lib/config_base.py` (the 'reference' augmentation, 1333 canvas and its buckets) for
`--steps` batches per setting. It prints one row per (workers, threads): images/s over the batches
after `--warmup` (batch size / the slope of a least-squares line through their arrival times),
images/s from the median interval between those batches, the canvas shapes seen, and the 1-minute
load average before and after (other work on the machine slows the numbers).

Use the first rate. Several threads or workers finish batches in bursts (a few together, then a
wait), so the median interval measures the burst, not the throughput; it is printed to show that.
"""
import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from data_pipeline import class_tables, hico_reader, loader
from hoiclip_jax.lib import config_base as common

IMAGE_SIZE = (640, 480)  # (w, h): the most common HICO-Det size
ANNOTATIONS = "trainval_hico.json"


def main(argv=None) -> None:
    args = parse_args(argv)
    config = common.hoiclip_config("hico").dataset
    if args.no_buckets:
        config.buckets = ()
    tables = class_tables.load_class_tables(config)
    root = args.images or os.path.join(tempfile.gettempdir(), "hoiclip_input_bench")
    write_dataset(root, args.num_images, tables, seed=0)
    records = hico_reader.read_annotations(os.path.join(root, ANNOTATIONS), tables)
    print(f"# {machine()}; {len(records)} JPEGs {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} in {root}; "
          f"batch {args.batch}, {args.steps} steps after {args.warmup} warm-up; augmentation "
          f"'{config.augmentation}', canvas {tuple(config.canvas)}, buckets "
          f"{tuple(map(tuple, config.buckets)) or 'none'}")
    print("| workers | threads | images/s | images/s from the median interval | "
          "canvas shapes | load avg before -> after |")
    print("|---|---|---|---|---|---|")
    for workers in args.workers:
        for threads in args.threads:
            row = measure(records, tables, config, root, workers, threads, args)
            print(row, flush=True)


def parse_args(argv) -> argparse.Namespace:
    ints = lambda text: [int(v) for v in text.split(",")]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=ints, required=True,
                   help="grain worker processes, comma-separated for several runs (0: none)")
    p.add_argument("--threads", type=ints, default=[4],
                   help="grain prefetch threads per process, comma-separated (default 4)")
    p.add_argument("--images", default="",
                   help="folder for the generated JPEGs and annotations (default: a temp folder)")
    p.add_argument("--num-images", type=int, default=512)
    p.add_argument("--batch", type=int, default=16, help="global batch (default 16)")
    p.add_argument("--steps", type=int, default=24, help="measured batches (default 24)")
    p.add_argument("--warmup", type=int, default=3, help="batches not measured (default 3)")
    p.add_argument("--no-buckets", action="store_true",
                   help="pad every image to the 1333x1333 canvas")
    args = p.parse_args(argv)
    if (args.steps + args.warmup) * args.batch > args.num_images:
        p.error(f"(steps + warmup) x batch = {(args.steps + args.warmup) * args.batch} images "
                f"exceeds --num-images {args.num_images} (one epoch)")
    return args


# ----------------------------------------------------------------------------- data
def write_dataset(root: str, num_images: int, tables, seed: int) -> None:
    """`root/images/*.jpg` and `root/trainval_hico.json`, unless the file lists them all."""
    path = os.path.join(root, ANNOTATIONS)
    if os.path.exists(path):
        with open(path) as f:
            names = [e["file_name"] for e in json.load(f)]
        if len(names) >= num_images and all(
                os.path.exists(os.path.join(root, "images", n)) for n in names):
            return
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(num_images):
        name = f"HICO_train2015_{i + 1:08d}.jpg"
        image, entry = random_image(rng, tables, name, i)
        image.save(os.path.join(root, "images", name), quality=90)
        entries.append(entry)
    with open(path, "w") as f:
        json.dump(entries, f)


def random_image(rng: np.random.Generator, tables, name: str, index: int):
    """A 640x480 picture (smooth background, noise, filled boxes: JPEGs of photo-like size) and
    its HICO record: a person and 1-3 objects, one HOI per object."""
    w, h = IMAGE_SIZE
    gradient = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3)
    base = gradient + np.linspace(0, 1, h)[:, None, None] * rng.uniform(0, 255, 3)
    pixels = np.clip(base / 2 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    annotations, hois = [], []
    for j in range(int(rng.integers(2, 5))):
        x0, y0 = rng.uniform(0, w - 60), rng.uniform(0, h - 60)
        x1, y1 = rng.uniform(x0 + 40, min(w, x0 + 400)), rng.uniform(y0 + 40, min(h, y0 + 400))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        if j == 0:
            obj = 0  # the person
        else:
            k = int(rng.integers(tables.num_hois))
            verb, obj = tables.hois[k]
            hois.append({"subject_id": 0, "object_id": j,
                         "category_id": verb + tables.verb_id_base, "hoi_category_id": k + 1})
        annotations.append({"bbox": [round(float(v), 1) for v in (x0, y0, x1, y1)],
                            "category_id": tables.coco_ids[obj]})
    return image, {"file_name": name, "img_id": index + 1, "annotations": annotations,
                   "hoi_annotation": hois}


# ----------------------------------------------------------------------------- timing
def measure(records, tables, config, root: str, workers: int, threads: int, args) -> str:
    """One table row: the loader with `workers` processes and `threads` threads each."""
    config = config.copy_and_resolve_references()
    config.num_workers, config.num_threads = workers, threads
    load_before = os.getloadavg()[0]
    batches = loader.train_batches(records, tables, config, os.path.join(root, "images"),
                                   global_batch_size=args.batch, seed=0, epoch=0)
    arrivals, shapes = [time.perf_counter()], set()
    for _ in range(args.warmup + args.steps):
        batch = next(batches)
        arrivals.append(time.perf_counter())
        shapes.add(batch["image"].shape[1:3])
    batches.close()  # stops grain's threads and worker processes, frees their shared memory
    measured = np.array(arrivals[args.warmup + 1:])  # arrival of each measured batch
    seconds_per_batch = np.polyfit(np.arange(len(measured)), measured, 1)[0]
    rate = args.batch / float(seconds_per_batch)
    median_rate = args.batch / float(np.median(np.diff(arrivals)[args.warmup:]))
    shape_text = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
    return (f"| {workers} | {threads} | {rate:.1f} | {median_rate:.1f} | {shape_text} | "
            f"{load_before:.2f} -> {os.getloadavg()[0]:.2f} |")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
