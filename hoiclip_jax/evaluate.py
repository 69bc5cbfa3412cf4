r"""Evaluates a trained run: `python -m hoiclip_jax.evaluate --config CFG --workdir DIR`.

Restores the latest checkpoint of the workdir (or `--checkpoint STEP`; `--untrained` evaluates
the freshly initialised model instead), runs the python-protocol HICO-Det evaluation on the test
split, prints the table (percent) and writes the metrics JSON (fractions).
"""
import json
import logging
import os

import jax
import numpy as np
from absl import app, flags
from PIL import Image

from data_pipeline import class_tables
from hoiclip_jax import cli, evaluation, sharding, state_io, visualize

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so the module imports cleanly)."""
    cli.define_config_flag()
    cli.define_multihost_flag()
    flags.DEFINE_string("workdir", None, "Run folder written by hoiclip_jax.train.", required=True)
    flags.DEFINE_integer("checkpoint", None, "Step to evaluate (default: latest).")
    flags.DEFINE_bool("untrained", False, "Evaluate the model at initialisation.")
    flags.DEFINE_string("out", None, "Metrics JSON (default: <workdir>/eval_metrics.json).")
    flags.DEFINE_string("compare", None, "Another metrics JSON to print as a second row.")
    flags.DEFINE_integer("pictures", 0, "Draw predictions on this many test images.")


METRIC_KEYS = ("mAP", "mAP_rare", "mAP_non_rare", "mean_max_recall")


def save_pictures(predictions, records, tables, config, path: str, count: int) -> str:
    """Draws the top-3 triplets of the first `count` test images into one PNG."""
    image_dir = os.path.join(config.dataset.root, "images", config.dataset.test_images)
    pictures = []
    for pred, record in list(zip(predictions, records))[:count]:
        triplets = []
        for j in range(3):
            q, hoi = int(pred["query_ids"][j]), int(pred["hoi_ids"][j])
            verb, obj = tables.hois[hoi]
            triplets.append({"sub_box": pred["sub_xyxy"][q], "obj_box": pred["obj_xyxy"][q],
                             "score": float(pred["scores"][j]),
                             "label": f"{tables.verbs[verb]} {tables.objects[obj]}"})
        with Image.open(os.path.join(image_dir, record.file_name)) as image:
            pictures.append(visualize.draw_triplets(image, triplets))
    return visualize.save_grid(pictures, path)


def run(config, workdir: str, step, untrained: bool) -> tuple[dict, list, list, object]:
    mesh = sharding.make_mesh()
    tables = class_tables.load_class_tables(config.dataset)
    if untrained:
        model, params = state_io.initial_params(config, tables)
        label = "untrained"
    else:
        model, params, step = state_io.restore_params(workdir, config, tables, mesh, step)
        label = f"step {step}"
    params = sharding.put_replicated(params, mesh)
    metrics, predictions, records = evaluation.evaluate_hico(model, params, config, tables, mesh)
    # A mean over no class (e.g. no rare class predicted) is NaN; JSON gets null for it.
    metrics = {k: None if np.isnan(metrics[k]) else float(metrics[k]) for k in METRIC_KEYS}
    metrics["checkpoint"] = label
    return metrics, predictions, records, tables


def main(argv):
    del argv
    cli.setup_logging()
    cli.initialize_distributed(FLAGS.multihost)
    config, workdir = FLAGS.config, FLAGS.workdir
    metrics, predictions, records, tables = run(config, workdir, FLAGS.checkpoint,
                                                FLAGS.untrained)
    out = FLAGS.out or os.path.join(workdir, "eval_metrics.json")
    rows = {metrics["checkpoint"]: metrics}
    if FLAGS.compare:
        with open(FLAGS.compare) as f:
            baseline = json.load(f)
        rows = {baseline["checkpoint"]: baseline} | rows
        if baseline["mAP"]:
            metrics["mAP_gain_over_" + baseline["checkpoint"]] = metrics["mAP"] / baseline["mAP"]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2, allow_nan=False)
    print(f"\nHICO-Det python protocol on {config.dataset.root} test "
          f"({len(records)} images), mAP in %:")
    print(evaluation.format_table(rows))
    print(f"metrics: {out}")
    if FLAGS.pictures:
        path = save_pictures(predictions, records, tables, config,
                             os.path.join(workdir, "predictions.png"), FLAGS.pictures)
        print(f"pictures of predictions: {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
