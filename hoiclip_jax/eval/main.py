r"""Evaluates a trained run on the test split, sharded over all devices.

    python -m hoiclip_jax.evaluate --config CFG --workdir DIR [--checkpoint STEP|best]
        [--protocol python|official|vcoco] [--tfe_k 10,20,30] [--export_mat DIR]

Restores the latest checkpoint of the workdir (`--checkpoint STEP`, or `best`: the state with
the best test mAP kept by training; `--untrained` evaluates the freshly initialised model),
predicts every test image (the last batch padded and masked), scores the predictions in the
protocol (default: 'python' for HICO-Det, 'vcoco' for V-COCO; see hoiclip_jax/eval/registry.py),
one row per TFE k, prints the table (percent), and writes the metrics JSON (fractions; the first
row's values at the top level, every row under "rows") and the predictions (.npz).
"""
import json
import logging
import os
import sys
from typing import Optional

import numpy as np
from absl import flags

from data_pipeline import class_tables, required_files
from hoiclip_jax.lib import checkpoints, cli, sharding
from hoiclip_jax.eval import evaluator as evaluation, inference, registry, scorers, visualize
from hoiclip_jax.train import state as state_io
from hoiclip_jax.eval.protocols import hico_export

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so the module imports cleanly)."""
    cli.define_config_flag()
    cli.define_multihost_flag()
    flags.DEFINE_string("workdir", None, "Run folder written by hoiclip_jax.train.", required=True)
    flags.DEFINE_string("checkpoint", None, "Step to evaluate, or 'best' (default: latest).")
    flags.DEFINE_bool("untrained", False, "Evaluate the model at initialisation.")
    flags.DEFINE_enum("protocol", None, list(registry.PROTOCOLS),
                      "Evaluation protocol (default: python for HICO-Det, vcoco for V-COCO).")
    flags.DEFINE_list("tfe_k", None, "TFE top-k values, e.g. 10,20,30 (default: eval.tfe_k; "
                      "0 alone: no TFE).")
    flags.DEFINE_string("out", None, "Metrics JSON (default: <workdir>/eval_metrics.json).")
    flags.DEFINE_string("compare", None, "Another metrics JSON to print as a first row.")
    flags.DEFINE_integer("pictures", 0, "Draw predictions on this many test images.")
    flags.DEFINE_string("export_mat", None, "HICO-Det: also write the detections_XX.mat files "
                        "of ho-rcnn's MATLAB evaluation into this folder.")


def parse_tfe_k(values: Optional[list]) -> Optional[tuple[int, ...]]:
    """`--tfe_k` as a tuple of k > 0 (None: keep the config's; '0': no TFE)."""
    if values is None:
        return None
    try:
        ks = tuple(int(v) for v in values)
    except ValueError:
        raise ValueError(f"--tfe_k {','.join(values)}: expected integers") from None
    if ks == (0,):
        return ()
    if any(k <= 0 for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"--tfe_k {ks}: expected distinct positive integers, or 0 alone")
    return ks


def restore(config, workdir: str, checkpoint: Optional[str], untrained: bool, tables, mesh):
    """(model, params on the mesh, row label) of the requested state."""
    if untrained:
        model, params = state_io.initial_params(config, tables)
        label = "untrained"
    elif checkpoint == "best":
        model, params, step = state_io.restore_params(workdir, config, tables,
                                                      sharding.replicated(mesh),
                                                      subdir=checkpoints.BEST_DIR)
        label = f"best (step {step})"
    else:
        step = None if checkpoint is None else _step(checkpoint)
        model, params, step = state_io.restore_params(workdir, config, tables,
                                                      sharding.replicated(mesh), step)
        label = f"step {step}"
    return model, sharding.put_replicated(params, mesh), label


def _step(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--checkpoint {text!r}: expected a step number or 'best'") from None


def run(config, workdir: str, checkpoint: Optional[str], untrained: bool,
        protocol: Optional[str] = None):
    """Evaluates; returns (metrics dict, predictions, evaluator, report)."""
    config = required_files.resolve(config)
    mesh = sharding.make_mesh()
    tables = class_tables.load_class_tables(config.dataset)
    model, params, label = restore(config, workdir, checkpoint, untrained, tables, mesh)
    evaluator = evaluation.Evaluator(model, config, tables, mesh, protocol)
    report, predictions = evaluator(params, label)
    metrics = {**report.main, "checkpoint": label, "protocol": report.protocol,
               "main_key": report.main_key, "rows": report.rows}
    return metrics, predictions, evaluator, report


def save_predictions(predictions: list[dict], records, path: str) -> str:
    """The per-image top-k of every TFE variant, stacked, with the file names (.npz)."""
    stacked = {k.replace("@", "_"): v
               for k, v in scorers.stack_predictions(predictions).items()}
    np.savez_compressed(path, file_names=np.array([r.file_name for r in records]), **stacked)
    return path


def save_pictures(predictions, evaluator, path: str, count: int) -> str:
    """Draws the top-3 triplets of the first `count` test images into one PNG."""
    tables, split = evaluator.tables, evaluator.test.split
    pictures = []
    for pred, record in list(zip(predictions, split.records))[:count]:
        triplets = []
        for j in range(3):
            q = int(pred["query_ids"][j])
            if "hoi_ids" in pred:
                verb, obj = tables.hois[int(pred["hoi_ids"][j])]
                label = f"{tables.verbs[verb]} {tables.objects[obj]}"
            else:  # V-COCO: a verb-role on the query's predicted object
                label = (f"{tables.verbs[int(pred['verb_ids'][j])]} "
                         f"{tables.objects[int(pred['obj_labels'][q])]}")
            triplets.append({"sub_box": pred["sub_xyxy"][q], "obj_box": pred["obj_xyxy"][q],
                             "score": float(pred["scores"][j]), "label": label})
        pictures.append(visualize.draw_triplets(split.images(record), triplets))
    return visualize.save_grid(pictures, path)


def export_mat(predictions, evaluator, folder: str) -> list[str]:
    """ho-rcnn's detections_XX.mat files of the first (no-TFE) predictions."""
    if evaluator.config.dataset.name != "hico":
        raise ValueError("--export_mat is for HICO-Det")
    images = scorers.hico_eval_images(inference.select_variant(predictions, 0),
                                      evaluator.records, evaluator.config.eval)
    by_name = {r.file_name: image for r, image in zip(evaluator.records, images)}
    names = [r.file_name for r in evaluator.records]
    return hico_export.export_predictions(by_name, names, folder,
                                          np.asarray(evaluator.tables.hoi_to_obj))


def main(argv):
    del argv
    cli.setup_logging()
    cli.initialize_distributed(FLAGS.multihost)
    config, workdir = FLAGS.config, FLAGS.workdir
    tfe_k = parse_tfe_k(FLAGS.tfe_k)
    if tfe_k is not None:
        config.eval.tfe_k = tfe_k
    try:
        metrics, predictions, evaluator, report = run(config, workdir, FLAGS.checkpoint,
                                                      FLAGS.untrained, FLAGS.protocol)
    except required_files.MissingFileError as e:
        logging.error("%s", e)
        sys.exit(1)
    out = FLAGS.out or os.path.join(workdir, "eval_metrics.json")
    rows = dict(report.rows)
    if FLAGS.compare:
        with open(FLAGS.compare) as f:
            baseline = json.load(f)
        rows = {**baseline["rows"], **rows}
        base, key = baseline.get(report.main_key), report.main_key
        if base:
            metrics[f"{key}_gain_over_{baseline['checkpoint']}"] = metrics[key] / base
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2, allow_nan=False)
    npz = save_predictions(predictions, evaluator.records,
                           os.path.splitext(out)[0] + "_predictions.npz")
    print(f"\n{config.dataset.name} test ({len(evaluator.records)} images) on "
          f"{config.dataset.root}, protocol {report.protocol}, in %:")
    print(evaluation.Report(report.protocol, report.columns, rows, report.main_key).table())
    print(f"metrics: {out}\npredictions: {npz}")
    if FLAGS.pictures:
        path = save_pictures(predictions, evaluator, os.path.join(workdir, "predictions.png"),
                             FLAGS.pictures)
        print(f"pictures of predictions: {path}")
    if FLAGS.export_mat:
        files = export_mat(predictions, evaluator, FLAGS.export_mat)
        print(f"{len(files)} detections_XX.mat files in {FLAGS.export_mat}")

