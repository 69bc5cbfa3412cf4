"""Robustness case 6 in the training loop: steps flagged non-finite by the step are logged with
their numbers and skipped, or stop the run (`train.nonfinite`). The step itself keeping the old
parameters is tested in test_train_step.py::test_nonfinite_loss_skips_the_update."""
import logging
import types

import jax.numpy as jnp
import ml_collections as mlc
import pytest

from hoiclip_jax.train import main as train


def fake_run(mode: str, flags: list[float]):
    config = mlc.ConfigDict({"train": {"nonfinite": mode}})
    return types.SimpleNamespace(config=config, skipped_steps=0, pending_flags=[
        (step, jnp.asarray(flag)) for step, flag in enumerate(flags, start=11)])


def test_skip_logs_the_step_numbers_and_counts(caplog):
    run = fake_run("skip", [0.0, 1.0, 0.0, 1.0])
    with caplog.at_level(logging.WARNING):
        train.check_nonfinite(run)
    assert run.skipped_steps == 2 and run.pending_flags == []
    assert "steps [12, 14]: non-finite" in caplog.text
    train.check_nonfinite(fake_run("skip", [0.0]))  # nothing flagged: nothing happens


def test_stop_raises_naming_the_steps():
    with pytest.raises(FloatingPointError, match=r"steps \[13\].*last checkpoint is intact"):
        train.check_nonfinite(fake_run("stop", [0.0, 0.0, 1.0]))
