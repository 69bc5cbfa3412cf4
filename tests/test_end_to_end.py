"""The whole chain on a tiny synthetic set: train, checkpoint, get killed, resume, evaluate, and
load the trained checkpoint for analysis.

Exact resume (issue 4, "Done when"): training killed with SIGKILL at a random step and rerun
ends bit-identical to an uninterrupted run, with the same data order. Three processes run
`tests/resume_runner.py`: B is killed at a random step after its first checkpoint, then C reruns
B's command in B's workdir while A trains the same config uninterrupted in another workdir. A
shared persistent compilation cache lets A and C load the programs B compiled (same
executables, so this changes no number, only the time). The resumed run's last checkpoint is
then evaluated, and `hoiclip_jax.load_checkpoint` + `analysis.Predictor` predict what the
evaluator predicted.
"""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import hoiclip_jax
from data_pipeline import class_tables
from data_pipeline.synthetic import generate as synthetic
from hoiclip_jax import analysis
from hoiclip_jax.eval import main as evaluate, scorers
from hoiclip_jax.lib import checkpoints, run_log, sharding
from hoiclip_jax.train import state as state_io
from tests import resume_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_TEST = 12, 2  # every synthetic image has interactions: 3 steps of 4 per epoch
STEPS_PER_EPOCH = NUM_TRAIN // resume_runner.BATCH
TOTAL = STEPS_PER_EPOCH * resume_runner.NUM_EPOCHS
TIMEOUT_S = 300


def start(root: str, workdir: str, cache: str, name: str) -> subprocess.Popen:
    # Optimisation level 0: XLA compiles about a third faster; all three runs use it.
    xla_flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    out = open(os.path.join(os.path.dirname(workdir), f"{name}.log"), "w")
    return subprocess.Popen([sys.executable, "-m", "tests.resume_runner", root, workdir],
                            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, name: str) -> None:
    code = process.wait(timeout=TIMEOUT_S)
    if code != 0:
        with open(process.stdout.name) as f:
            tail = f.read()[-3000:]
        pytest.fail(f"run {name} exited with {code}:\n{tail}")


def committed_steps(workdir: str) -> list[int]:
    folder = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) \
        else []


def last_logged_step(workdir: str) -> int:
    """The last `train` step in the workdir's metrics.jsonl (0 if none yet)."""
    path = os.path.join(workdir, run_log.METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        entries = [json.loads(line) for line in f if line.endswith("\n")]  # whole lines only
    return max((e["step"] for e in entries if e["kind"] == "train"), default=0)


def kill_at_random_step(process: subprocess.Popen, workdir: str, kill_step: int) -> int:
    """SIGKILLs `process` once it has logged `kill_step` and committed a checkpoint."""
    deadline = time.time() + TIMEOUT_S
    while not (last_logged_step(workdir) >= kill_step and committed_steps(workdir)):
        assert process.poll() is None, f"run B ended (code {process.returncode}) before step " \
                                       f"{kill_step}; see {process.stdout.name}"
        assert time.time() < deadline, "run B too slow"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    return last_logged_step(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    root, cache = str(base / "data"), str(base / "jax_cache")
    summary = synthetic.generate(root, seed=5, num_train=NUM_TRAIN, num_test=NUM_TEST)
    assert summary["train"]["images_without_hoi"] == 0  # all trained on: STEPS_PER_EPOCH holds
    killed, clean = str(base / "killed"), str(base / "clean")
    # Any step from the first checkpoint (step 2) to the one before the last.
    kill_step = random.Random().randint(2, TOTAL - 1)
    b = start(root, killed, cache, "B")
    killed_at = kill_at_random_step(b, killed, kill_step)
    a, c = start(root, clean, cache, "A"), start(root, killed, cache, "C")
    finish(a, "A")
    finish(c, "C")
    info = f"killed at step {killed_at} (target {kill_step}); logs in {base}"
    return resume_runner.make_config(root), clean, killed, info


def restore_final(config, workdir: str) -> dict:
    tables = class_tables.load_class_tables(config.dataset)
    _, abstract = state_io.abstract_state(config, tables)
    mesh = sharding.make_mesh()
    ckpt = checkpoints.Checkpointer(workdir, keep=1, read_only=True)
    assert ckpt.latest_step() == TOTAL
    state, meta = ckpt.restore(TOTAL, checkpoints.abstract_like(abstract,
                                                                sharding.replicated(mesh)))
    ckpt.close()
    return jax.device_get(state), meta


def test_killed_and_resumed_run_is_bit_identical(runs):
    config, clean, killed, info = runs
    (state_a, meta_a), (state_c, meta_c) = restore_final(config, clean), \
        restore_final(config, killed)
    assert jax.tree.structure(state_a) == jax.tree.structure(state_c)
    leaves = jax.tree_util.tree_leaves_with_path(state_a)
    assert len(leaves) > 100  # params, both Adam moments, counts, step, rng
    for (path, a), c in zip(leaves, jax.tree.leaves(state_c)):
        assert np.array_equal(a, c), f"{jax.tree_util.keystr(path)} differs; {info}"
    assert int(state_c["step"]) == TOTAL
    assert meta_a == meta_c, info  # includes the digest of every step's image ids


def test_resume_happened_mid_run_and_logs_match(runs):
    _, clean, killed, info = runs
    starts = run_log.read(killed, "start")
    assert [s["resumed"] for s in starts] == [False, True], info
    assert 2 <= starts[1]["step"] < TOTAL, info
    train_a, train_c = run_log.read(clean, "train"), run_log.read(killed, "train")
    # The killed run's lines after its checkpoint were dropped and written again: one per step.
    assert [e["step"] for e in train_c] == list(range(1, TOTAL + 1)), info
    for a, c in zip(train_a, train_c):
        assert a["image_ids"] == c["image_ids"] and len(set(a["image_ids"])) == 4, info
        assert a["data_digest"] == c["data_digest"], info
        assert a["loss"] == c["loss"], f"step {a['step']}: {a['loss']} vs {c['loss']}; {info}"
    orders = [[e["image_ids"] for e in train_a[k:k + STEPS_PER_EPOCH]]
              for k in range(0, TOTAL, STEPS_PER_EPOCH)]
    assert orders[0] != orders[1], "each epoch has its own order"
    drop = lambda e: {k: v for k, v in e.items() if k != "time"}
    evals_a, evals_c = run_log.read(clean, "eval"), run_log.read(killed, "eval")
    assert [e["step"] for e in evals_a] == list(range(STEPS_PER_EPOCH, TOTAL + 1,
                                                       STEPS_PER_EPOCH)), info
    assert list(map(drop, evals_a)) == list(map(drop, evals_c)), info


def test_checkpoint_folders_after_the_kill(runs):
    _, clean, killed, info = runs
    for workdir in (clean, killed):
        # The last two of the saves at 2, 3 (epoch end), 4, 6 (epoch end): keep_checkpoints = 2.
        assert committed_steps(workdir) == [4, TOTAL], info
        leftovers = glob.glob(os.path.join(workdir, "*", "*tmp*"))
        assert not leftovers, f"temporary folders left: {leftovers}; {info}"
    best_a = checkpoints.BestCheckpointer(clean).best()
    best_c = checkpoints.BestCheckpointer(killed).best()
    assert best_a == best_c and best_a[0] in (3, 6), (best_a, best_c, info)


def test_the_resumed_run_evaluates_and_loads_for_analysis(runs):
    config, _, killed, _ = runs
    result, predictions, evaluator, _ = evaluate.run(config, killed, None, untrained=False)
    assert len(predictions) == len(evaluator.records) == NUM_TEST
    assert result["checkpoint"] == f"step {TOTAL}"
    assert 0.0 <= result["mAP"] <= 1.0 and 0.0 <= result["mean_max_recall"] <= 1.0
    for key in ("mAP_rare", "mAP_non_rare"):  # None when no class of that kind was predicted
        assert result[key] is None or 0.0 <= result[key] <= 1.0, (key, result[key])
    json.dumps(result, allow_nan=False)  # the metrics file is strict JSON
    assert_predictor_matches_evaluator(killed, predictions, evaluator)


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


def test_resume_refuses_a_config_that_changes_the_data_stream(runs):
    from hoiclip_jax.train import main as train
    config, _, killed, _ = runs
    for field, value in (("seed", config.seed + 1), ("batch_size", 8)):
        changed = config.copy_and_resolve_references()
        if field == "seed":
            changed.seed = value
        else:
            changed.train.batch_size = value
        with pytest.raises(ValueError, match=f"{field}: checkpoint"):
            train.train(changed, killed)
    assert checkpoints.read_config(killed).seed == config.seed  # config.json left untouched


def test_check_data_meta_names_each_field():
    saved = checkpoints.data_meta(seed=1, batch_size=4, num_train=15, steps_per_epoch=3)
    checkpoints.check_data_meta(saved, dict(saved), "ckpt/3")  # equal: no error
    for field in checkpoints.DATA_FIELDS:
        with pytest.raises(ValueError, match=f"ckpt/3: .*{field}: checkpoint"):
            checkpoints.check_data_meta(saved, dict(saved, **{field: 99}), "ckpt/3")
    with pytest.raises(ValueError, match="older version"):
        checkpoints.check_data_meta({"epoch": 1, "step": 3}, saved, "ckpt/3")


def test_best_checkpoint_is_kept_apart_from_the_last_k(tmp_path):
    workdir = str(tmp_path)
    state = lambda v: {"w": np.full((3,), v, np.float32), "step": np.int32(v)}
    latest, best = checkpoints.Checkpointer(workdir, keep=1), checkpoints.BestCheckpointer(workdir)
    assert best.best() == (None, -np.inf)
    for step, mAP in ((1, 0.2), (2, 0.1), (3, 0.4), (4, float("nan")), (5, 0.4), (6, 0.3)):
        latest.save(step, state(step), {"step": step})
        saved = best.save_if_better(step, state(step), {"step": step}, mAP)
        assert saved == (step in (1, 3)), (step, mAP)
    latest.close()
    best.close()
    assert checkpoints.Checkpointer(workdir, keep=1, read_only=True).all_steps() == [6]
    reopened = checkpoints.BestCheckpointer(workdir)
    assert reopened.best() == (3, 0.4)
    assert sorted(os.listdir(reopened.directory)) == ["3"]  # the older best was deleted
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state(0))
    restored, meta = checkpoints.Checkpointer(workdir, keep=1, subdir=checkpoints.BEST_DIR,
                                              read_only=True).restore(3, abstract)
    assert meta == {"step": 3} and np.array_equal(restored["w"], state(3)["w"])
    # A run killed after saving its best state at step 3 and resumed from an earlier checkpoint
    # evaluates step 3 again: the same mAP is still the best (the log says so, as before the
    # kill) and the kept folder is not rewritten; another step with that mAP is not better.
    mtime = os.path.getmtime(os.path.join(reopened.directory, "3"))
    assert reopened.save_if_better(3, state(30), {"step": 3}, 0.4)
    assert not reopened.save_if_better(4, state(4), {"step": 4}, 0.4)
    reopened.close()
    assert os.path.getmtime(os.path.join(reopened.directory, "3")) == mtime
    assert sorted(os.listdir(reopened.directory)) == ["3"]
