"""Building the train state, and getting parameters back out of a workdir."""
import logging
from typing import Optional

import jax

from hoiclip_jax import checkpoints, optim, sharding, train_step
from hoiclip_jax.models import hoiclip


def initial_params(config, tables):
    """(model, params) at initialisation, classifiers filled from the CLIP text tower."""
    model = hoiclip.build_model(config.model, tables)
    return model, hoiclip.init_params(model, jax.random.PRNGKey(config.seed), config, tables)


def build_state(config, tables, steps_per_epoch: int):
    """Model, optimizer, lr schedules and the step-0 train state (on the host)."""
    model, params = initial_params(config, tables)
    labels = optim.label_params(params, config.optim.groups)
    trainable, frozen = optim.split_frozen(params, labels)
    trainable_labels, _ = optim.split_frozen(labels, labels)
    tx, schedules = optim.make_optimizer(config.optim, trainable_labels, steps_per_epoch)
    return model, tx, schedules, train_step.init_state(trainable, frozen, tx, config.seed)


def restore_params(workdir: str, config, tables, mesh, step: Optional[int] = None):
    """(model, params, step) from `step` (default: latest) of the workdir's checkpoints."""
    ckpt = checkpoints.Checkpointer(workdir, keep=1_000_000)  # never deletes when reading
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    # The state's structure (optimizer state included) comes from building it; the step count
    # per epoch only changes schedule constants, not shapes.
    model, _, _, state = build_state(config, tables, steps_per_epoch=1)
    abstract = checkpoints.abstract_like(state, sharding.replicated(mesh))
    restored, meta = ckpt.restore(step, abstract)
    ckpt.close()
    logging.info("Restored %s/%d (epoch %s)", ckpt.directory, step, meta["epoch"])
    return model, optim.merge_params(restored["trainable"], restored["frozen"]), step
