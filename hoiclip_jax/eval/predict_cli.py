r"""Interactions in your own images, printed and drawn.

    python -m hoiclip_jax.predict --workdir runs/demo --image a.jpg b.jpg [--top 10] [--out DIR]
    python -m hoiclip_jax.predict --checkpoint hoiclip_hico.pth --config configs/hico.py \
        --image a.jpg

`--workdir DIR` reads the run's config.json and its latest checkpoint (`--step N` for another);
`--checkpoint PATH` takes a checkpoint folder (`<workdir>/best`, `<workdir>/checkpoints/<step>`)
or a released HOICLIP `.pth` / imported `.msgpack`, which needs `--config` (a `--config` also
overrides a workdir's config.json). Images are given after `--image` (or with `--image` each).

For each image it prints the `--top` triplets (after the evaluator's triplet NMS, best first) as
`person <verb> <object> score` with both boxes (xyxy pixels of the image), and writes
`<out>/<image name>.png` with the best `--draw` triplets: human box, object box, a line between
them, the labels. The triplets are the evaluator's (`hoiclip_jax.analysis.Predictor`); a V-COCO
model's are (verb-role, predicted object) pairs ranked as the V-COCO evaluator ranks them.
"""
import logging
import os
import sys

from absl import app, flags

from hoiclip_jax.lib import cli

FLAGS = flags.FLAGS
DEFAULT_OUT = "predictions"  # under the workdir, or in the current folder for --checkpoint


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so the module imports cleanly)."""
    cli.define_config_flag(required=False, help_text=(
        "Config file (configs/*.py) of the model; required for a .pth / .msgpack, else it "
        "replaces the workdir's config.json."))
    flags.DEFINE_string("workdir", None, "Run folder written by hoiclip_jax.train.")
    flags.DEFINE_string("checkpoint", None, "A checkpoint folder, or a HOICLIP .pth / .msgpack "
                        "(with --config).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_multi_string("image", [], "Image file(s); more may follow as plain arguments.")
    flags.DEFINE_integer("top", 10, "Triplets printed per image.", lower_bound=1)
    flags.DEFINE_integer("draw", 3, "Triplets drawn per image.", lower_bound=0)
    flags.DEFINE_string("out", None, f"Folder of the PNGs (default: <workdir>/{DEFAULT_OUT}, or "
                        f"./{DEFAULT_OUT} with --checkpoint).")
    flags.DEFINE_bool("cpu", False, "Run on the CPU even where an accelerator is present.")
    flags.register_multi_flags_validator(
        ["workdir", "checkpoint"], lambda f: (f["workdir"] is None) != (f["checkpoint"] is None),
        message="give exactly one of --workdir and --checkpoint")


def picture_paths(images: list[str], out_dir: str) -> list[str]:
    """`<out_dir>/<image name>.png` per image; a name seen before gets `_<i>` (its position)."""
    paths, seen = [], set()
    for i, image in enumerate(images):
        stem = os.path.splitext(os.path.basename(image))[0]
        name = stem if stem not in seen else f"{stem}_{i}"
        seen.add(name)
        paths.append(os.path.join(out_dir, name + ".png"))
    return paths


def draw_prediction(image, prediction, count: int):
    """The picture of the best `count` triplets of an `analysis.Prediction`."""
    from hoiclip_jax.eval import visualize
    triplets = [{"sub_box": t.sub_box, "obj_box": t.obj_box, "score": t.score,
                 "label": f"{t.verb} {t.object}"} for t in prediction.triplets[:count]]
    return visualize.draw_triplets(image, triplets, visualize.display_scale(image.size))


def format_prediction(name: str, prediction, top: int) -> str:
    """The printed block of one image: a header and the best `top` triplets."""
    w, h = prediction.size
    lines = [f"{name} ({w}x{h}): best {min(top, len(prediction.triplets))} of "
             f"{len(prediction.triplets)} triplets"]
    lines += [f"  {rank:>3}. {t}" for rank, t in enumerate(prediction.triplets[:top], 1)]
    return "\n".join(lines)


def run(path: str, config, images: list[str], out_dir: str, top: int = 10, draw: int = 3,
        step=None, device=None) -> list[tuple[str, object, str]]:
    """Loads the model at `path` (see `loading.load_checkpoint`), predicts, prints, draws.

    Returns:
      (image path, predictor.Prediction, PNG path) per image.
    """
    from hoiclip_jax.eval import loading, predictor as predictor_lib, visualize
    config, params = loading.load_checkpoint(path, config, step=step, device=device)
    predictor = predictor_lib.Predictor(config, params)
    results = []
    for image_path, png in zip(images, picture_paths(images, out_dir)):
        image = predictor_lib.load_image(image_path)
        prediction = predictor(image)
        visualize.save_picture(draw_prediction(image, prediction, draw), png)
        print(format_prediction(image_path, prediction, top))
        print(f"  picture: {png}")
        results.append((image_path, prediction, png))
    return results


def main(argv):
    cli.setup_logging()
    images = list(FLAGS.image) + list(argv[1:])
    if not images:
        raise app.UsageError("no image: give --image a.jpg [b.jpg ...]")
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise app.UsageError(f"no such image file: {', '.join(missing)}")
    path = FLAGS.workdir or FLAGS.checkpoint
    out_dir = FLAGS.out or (os.path.join(FLAGS.workdir, DEFAULT_OUT) if FLAGS.workdir
                            else DEFAULT_OUT)
    if os.path.isfile(path) and FLAGS.config is None:
        raise app.UsageError(f"--checkpoint {path} is a weight file: give --config, the config "
                             f"of the model it holds (e.g. configs/hico.py)")
    device = None
    if FLAGS.cpu:
        import jax
        device = jax.devices("cpu")[0]
    from hoiclip_jax.eval import loading
    from hoiclip_jax.lib import checkpoints
    try:
        run(path, FLAGS.config, images, out_dir, FLAGS.top, FLAGS.draw, FLAGS.step, device)
    except (FileNotFoundError, checkpoints.CheckpointError, loading.ConfigFieldsError) as e:
        logging.error("%s", e)
        sys.exit(1)

