"""The whole chain on a tiny synthetic set: train, checkpoint, resume, evaluate, and the trained
checkpoint loaded for analysis (`hoiclip_jax.load_checkpoint`, `analysis.Predictor`) predicts what
the evaluator predicted."""
import json
import os

import numpy as np
import pytest

import hoiclip_jax

from data_pipeline.synthetic import generate as synthetic
from hoiclip_jax import analysis
from hoiclip_jax.eval import main as evaluate, scorers
from hoiclip_jax.lib import checkpoints
from hoiclip_jax.train import main as train
from tests import helpers

NUM_TRAIN, NUM_TEST, BATCH = 24, 6, 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(root, seed=3, num_train=NUM_TRAIN, num_test=NUM_TEST)
    config = helpers.tiny_config(os.path.join(root, "annotations", "classes.json"))
    config.dataset.root = root
    config.dataset.canvas = (128, 128)
    config.dataset.max_side = 128
    config.dataset.train_short_sides = (96, 128)
    config.dataset.test_short_side = 128
    config.dataset.max_pairs = 8
    config.train.batch_size = BATCH
    config.train.num_epochs = 1
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.eval.batch_size = 4
    return config, str(tmp_path_factory.mktemp("workdir"))


def test_train_resume_and_evaluate(run):
    config, workdir = run
    metrics = train.train(config, workdir)
    assert metrics["loss"] > 0
    ckpt = checkpoints.Checkpointer(workdir, keep=10)
    first_steps = ckpt.all_steps()
    ckpt.close()
    steps_per_epoch = first_steps[-1]  # the epoch-end save
    # keep_checkpoints = 2: the last periodic save (every 2 steps) and the epoch-end one remain.
    assert steps_per_epoch >= 3 and len(first_steps) == 2 and first_steps[0] % 2 == 0

    # Rerunning with one more epoch resumes from the latest checkpoint and trains only epoch 2.
    config.train.num_epochs = 2
    train.train(config, workdir)
    ckpt = checkpoints.Checkpointer(workdir, keep=10)
    assert ckpt.latest_step() == 2 * steps_per_epoch
    ckpt.close()
    saved = checkpoints.read_config(workdir)
    assert saved.model.hidden_dim == config.model.hidden_dim

    result, predictions, evaluator, _ = evaluate.run(config, workdir, None, untrained=False)
    assert len(predictions) == len(evaluator.records) == NUM_TEST
    assert result["checkpoint"] == f"step {2 * steps_per_epoch}"
    assert 0.0 <= result["mAP"] <= 1.0 and 0.0 <= result["mean_max_recall"] <= 1.0
    for key in ("mAP_rare", "mAP_non_rare"):  # None when no class of that kind was predicted
        assert result[key] is None or 0.0 <= result[key] <= 1.0, (key, result[key])
    json.dumps(result, allow_nan=False)  # the metrics file is strict JSON

    assert_predictor_matches_evaluator(workdir, predictions, evaluator)


def assert_predictor_matches_evaluator(workdir, predictions, evaluator):
    """The trained checkpoint, loaded on one device outside the training code, gives each test
    image the evaluator's top-k and its post-processed pairs (same order, same boxes)."""
    config, params = hoiclip_jax.load_checkpoint(workdir)
    predictor = analysis.Predictor(config, params)
    evaluated = scorers.hico_eval_images(predictions, evaluator.records, config.eval)
    assert len(evaluated) == NUM_TEST
    for record, want, want_eval in zip(evaluator.records, predictions, evaluated):
        got = predictor(evaluator.images(record))
        for key in ("hoi_ids", "query_ids"):
            np.testing.assert_array_equal(got.topk[key], want[key], err_msg=key)
        for key in ("scores", "sub_xyxy", "obj_xyxy"):
            np.testing.assert_allclose(got.topk[key], want[key], rtol=1e-5, atol=1e-3,
                                       err_msg=f"{record.file_name} {key}")
        np.testing.assert_array_equal(got.pred_hois[:, :3], want_eval["pred_hois"][:, :3])
        np.testing.assert_allclose(got.pred_boxes, want_eval["pred_boxes"], atol=1e-3)
        assert [t.hoi for t in got.triplets][:1] == [
            int(want_eval["pred_hois"][np.argmax(want_eval["pred_hois"][:, 3]), 2])]
