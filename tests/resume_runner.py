"""Trains the tiny test config in its own process, for tests/test_end_to_end.py (which kills
it).

    python -m tests.resume_runner DATA_ROOT WORKDIR

Run from the repository root, with the environment of the test (simulated devices, compilation
cache). Rerunning the same command resumes from the workdir's latest checkpoint.
"""
import os
import sys

from tests import helpers

NUM_EPOCHS = 2
BATCH = 4


def make_config(root: str):
    """The tiny config of tests/helpers.py on the synthetic set at `root`, with a checkpoint
    every 2 steps, every step logged and an evaluation at every epoch end."""
    config = helpers.tiny_config(os.path.join(root, "annotations", "classes.json"))
    config.dataset.root = root
    t = config.train
    t.batch_size = BATCH
    t.num_epochs = NUM_EPOCHS
    t.log_every_steps = 1
    t.checkpoint_every_steps = 2
    t.keep_checkpoints = 2
    t.eval_every_epochs = 1
    config.eval.batch_size = BATCH
    return config


def main(root: str, workdir: str) -> None:
    import logging
    from hoiclip_jax.train import main as train  # after the environment is set for jax
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        force=True)  # timestamps in the run's log, for a failing test
    logging.getLogger("absl").setLevel(logging.WARNING)
    train.train(make_config(root), workdir)


if __name__ == "__main__":
    main(*sys.argv[1:])
