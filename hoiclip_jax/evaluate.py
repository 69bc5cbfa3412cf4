r"""Evaluates a trained run: `python -m hoiclip_jax.evaluate --config CFG --workdir DIR`.

Restores the latest checkpoint of the workdir (or `--checkpoint STEP`; `--untrained` evaluates
the freshly initialised model instead), runs the python-protocol HICO-Det evaluation on the test
split, prints the table (percent) and writes the metrics JSON (fractions).
"""
import json
import os

from absl import app, flags

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


def save_pictures(predictions, split, tables, path: str, count: int) -> str:
    """Draws the top-3 triplets of the first `count` images of `split` into one PNG."""
    pictures = []
    for pred, record in list(zip(predictions, split.records))[:count]:
        triplets = []
        for j in range(3):
            q, hoi = int(pred["query_ids"][j]), int(pred["hoi_ids"][j])
            verb, obj = tables.hois[hoi]
            triplets.append({"sub_box": pred["sub_xyxy"][q], "obj_box": pred["obj_xyxy"][q],
                             "score": float(pred["scores"][j]),
                             "label": f"{tables.verbs[verb]} {tables.objects[obj]}"})
        pictures.append(visualize.draw_triplets(split.images(record), triplets))
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
    metrics, predictions, test = evaluation.evaluate_hico(model, params, config, tables, mesh)
    summary = evaluation.summarise(metrics, test.groups)
    summary["checkpoint"] = label
    return summary, predictions, test, tables


def main(argv):
    del argv
    cli.setup_logging()
    cli.initialize_distributed(FLAGS.multihost)
    config, workdir = FLAGS.config, FLAGS.workdir
    metrics, predictions, test, tables = run(config, workdir, FLAGS.checkpoint, FLAGS.untrained)
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
          f"({len(test.split)} images), mAP in %:")
    print(evaluation.format_table(rows, test.groups))
    print(f"metrics: {out}")
    if FLAGS.pictures:
        path = save_pictures(predictions, test.split, tables,
                             os.path.join(workdir, "predictions.png"), FLAGS.pictures)
        print(f"pictures of predictions: {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
