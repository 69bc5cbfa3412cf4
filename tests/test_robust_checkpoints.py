"""Robustness of the checkpoints (README "What happens when…", cases 7, 8, 11): a save killed mid-write or
failing with a full disk leaves the earlier checkpoints intact and usable; a truncated checkpoint
or one of another model fails with an error naming it, and restores nothing.

SIGKILL at a random training step, then an exact resume, is tests/test_end_to_end.py; here the
kill is placed inside a checkpoint write.
"""
import errno
import gc
import glob
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from data_pipeline import class_tables
from hoiclip_jax.lib import checkpoints
from hoiclip_jax.train import state as state_io
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_state(value: float) -> dict:
    return {"step": jnp.int32(value), "trainable": {"w": jnp.full((3, 4), value)},
            "frozen": {"b": jnp.arange(5.0) + value}, "opt_state": {"mu": jnp.zeros((3, 4))},
            "rng": jnp.array([0, 7], jnp.uint32)}


def abstract(state: dict):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def assert_same(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def temporary_folders(directory: str) -> list[str]:
    return glob.glob(os.path.join(directory, "*tmp*"))


def steps_on_disk(workdir: str) -> list[int]:
    reader = checkpoints.Checkpointer(workdir, keep=3, read_only=True)
    steps = reader.all_steps()
    reader.close()  # an unclosed manager's threads outlive the test
    return steps


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- case 7

# Saves step 1, then starts step 2 with a meta writer that signals and hangs: the parent kills
# the process while step 2's files are being written.
KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    from orbax.checkpoint._src.handlers import json_checkpoint_handler
    from hoiclip_jax.lib import checkpoints
    from tests.test_robust_checkpoints import small_state
    workdir = sys.argv[1]
    ckpt = checkpoints.Checkpointer(workdir, keep=3)
    ckpt.save(1, small_state(1.0), {"step": 1})
    ckpt.wait()
    async def hang(self, item, directory):
        open(os.path.join(workdir, "writing"), "w").close()
        time.sleep(600)
    json_checkpoint_handler.JsonCheckpointHandler._save_fn = hang
    ckpt.save(2, small_state(2.0), {"step": 2})
    time.sleep(600)
""")


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    workdir = str(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, workdir], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists(os.path.join(workdir, "writing"))
                 or process.poll() is not None, timeout_s=120)
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    directory = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
    assert os.listdir(directory).count("1") == 1 and temporary_folders(directory)
    # The resumed run's writer: step 2 never existed, step 1 is intact, the partial folder goes.
    ckpt = checkpoints.Checkpointer(workdir, keep=3)
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    state, meta = ckpt.restore(1, abstract(small_state(0.0)))
    assert_same(state, small_state(1.0))
    assert meta == {"step": 1}
    wait_for(lambda: not temporary_folders(directory))
    ckpt.save(2, small_state(2.0), {"step": 2})  # and training goes on saving
    ckpt.close()
    assert steps_on_disk(workdir) == [1, 2]


# ----------------------------------------------------------------------------- case 11

def test_disk_full_while_saving_is_an_error_and_keeps_checkpoints_and_state(tmp_path,
                                                                            monkeypatch):
    workdir = str(tmp_path)
    ckpt = checkpoints.Checkpointer(workdir, keep=3)
    state = small_state(1.0)
    ckpt.save(1, state, {"step": 1})
    ckpt.wait()

    async def disk_full(self, item, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    # The write failure surfaces at the next wait (as at an epoch end) or the next save.
    for step, surfaces_in in ((2, "wait"), (3, "next save")):
        monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full)
        state = jax.tree.map(lambda x: x + 1, state)  # a training step
        ckpt.save(step, state, {"step": step})  # asynchronous: the failure comes later
        with pytest.raises(checkpoints.CheckpointError,
                           match=r"writing a checkpoint failed \(OSError: \[Errno 28\] No space "
                                 r"left on device.*the finished checkpoints \[1\] are intact"):
            if surfaces_in == "wait":
                ckpt.wait()
            else:
                wait_for(lambda: not ckpt._manager.is_saving_in_progress())
                monkeypatch.undo()
                ckpt.save(step + 1, state, {"step": step + 1})
        monkeypatch.undo()
    # The state in memory is whole and usable; step 1 is intact and restores.
    np.testing.assert_array_equal(np.asarray(state["trainable"]["w"] * 2), np.full((3, 4), 6.0))
    assert int(state["step"]) == 3
    assert ckpt.all_steps() == [1]
    ckpt.close()
    reopened = checkpoints.Checkpointer(workdir, keep=3)
    restored, _ = reopened.restore(1, abstract(state))
    assert_same(restored, small_state(1.0))
    wait_for(lambda: not temporary_folders(reopened.directory))  # partial folders removed
    reopened.save(5, state, {"step": 5})
    reopened.close()
    reader = checkpoints.Checkpointer(workdir, keep=3, read_only=True)
    restored, _ = reader.restore(5, abstract(state))
    reader.close()
    assert_same(restored, state)


# ----------------------------------------------------------------------------- case 8

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A workdir holding step 5 of the tiny model's (zero) train state, and that state's shapes."""
    workdir = str(tmp_path_factory.mktemp("saved"))
    config = helpers.tiny_config(helpers.write_tiny_table(workdir))
    tables = class_tables.load_class_tables(config.dataset)
    _, shapes = state_io.abstract_state(config, tables)
    ckpt = checkpoints.Checkpointer(workdir, keep=2)
    ckpt.save(5, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), {"step": 5})
    ckpt.close()
    return workdir, config, tables, shapes


def test_checkpoint_of_another_model_lists_every_difference(saved):
    workdir, config, tables, shapes = saved
    other = config.copy_and_resolve_references()
    other.model.num_queries = 5        # query embeddings of another shape
    extra_layer = config.model.dec_layers  # the index of one more decoder layer
    other.model.dec_layers = other.model.inter_dec_layers = extra_layer + 1
    _, other_shapes = state_io.abstract_state(other, tables)
    ckpt = checkpoints.Checkpointer(workdir, keep=2, read_only=True)
    with pytest.raises(checkpoints.CheckpointError) as error:
        ckpt.restore(5, other_shapes)
    message = str(error.value)
    assert f"{ckpt.directory}/5 does not fit this model" in message
    assert "nothing was restored" in message
    assert "query_embed_h/embedding: (4, 32) float32 vs (5, 32) float32" in message
    assert "missing from the checkpoint" in message and f"layer{extra_layer}" in message
    restored, _ = ckpt.restore(5, shapes)  # the right shapes still restore
    ckpt.close()
    assert jax.tree.structure(restored) == jax.tree.structure(shapes)


# A failed tensorstore read leaves a callback for orbax's closed event loop, reported whenever
# the garbage collector finds it ("Event loop is closed"); collected at the end of this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_or_foreign_checkpoint_folders_restore_nothing(saved, tmp_path):
    workdir, _, _, shapes = saved
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    directory = os.path.join(copy, checkpoints.CHECKPOINT_DIR)
    data = [p for p in glob.glob(os.path.join(directory, "5", "state", "**", "d", "*"),
                                 recursive=True)]
    assert data
    for path in data:  # every array file cut short
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    ckpt = checkpoints.Checkpointer(copy, keep=2, read_only=True)
    with pytest.raises(checkpoints.CheckpointError,
                       match=rf"{directory}/5: the checkpoint is incomplete or corrupt.*"
                             rf"nothing was restored"):
        ckpt.restore(5, shapes)
    os.remove(os.path.join(directory, "5", "state", "_METADATA"))
    with pytest.raises(checkpoints.CheckpointError, match=rf"{directory}/5: no readable 'state'"):
        ckpt.restore(5, shapes)
    ckpt.close()
    # A folder that is not a checkpoint at all, under a step's name: the latest "step".
    os.makedirs(os.path.join(directory, "7"))
    with open(os.path.join(directory, "7", "notes.txt"), "w") as f:
        f.write("not a checkpoint")
    ckpt = checkpoints.Checkpointer(copy, keep=2, read_only=True)
    assert ckpt.latest_step() == 7
    with pytest.raises(checkpoints.CheckpointError,
                       match=rf"{directory}/7: no readable meta: not a hoiclip-jax checkpoint"):
        ckpt.restore_meta(7)
    with pytest.raises(checkpoints.CheckpointError,
                       match=rf"{directory}/7: the checkpoint is incomplete or corrupt"):
        ckpt.restore(7, shapes)
    ckpt.close()
    gc.collect()
