"""Building the train state, and getting parameters back out of a workdir."""
import logging
from typing import Optional

import jax

from hoiclip_jax.lib import checkpoints
from hoiclip_jax.train import optim, step as train_step
from hoiclip_jax.weights import pretrained
from hoiclip_jax.weights import classifiers
from hoiclip_jax.models import hoiclip


def initial_params(config, tables):
    """(model, params) at initialisation: classifiers filled from the CLIP text tower, then the
    weights of config.model.pretrained (DETR or HOICLIP) when it is set."""
    model = hoiclip.build_model(config.model, tables)
    params = classifiers.init_params(model, jax.random.PRNGKey(config.seed), config, tables)
    if config.model.pretrained:
        params, report = pretrained.load_pretrained(config.model.pretrained, params, config, tables)
        logging.info("%s: %s", config.model.pretrained, report.summary())
    return model, params


def _split_and_optimizer(config, params, steps_per_epoch: int):
    """(trainable, frozen, tx, schedules) for a params tree (arrays or shapes)."""
    labels = optim.label_params(params, optim.parameter_groups(config))
    trainable, frozen = optim.split_frozen(params, labels)
    trainable_labels, _ = optim.split_frozen(labels, labels)
    tx, schedules = optim.make_optimizer(config.optim, trainable_labels, steps_per_epoch)
    return trainable, frozen, tx, schedules


def build_state(config, tables, steps_per_epoch: int):
    """Model, optimizer, lr schedules and the step-0 train state (on the host)."""
    model, params = initial_params(config, tables)
    trainable, frozen, tx, schedules = _split_and_optimizer(config, params, steps_per_epoch)
    return model, tx, schedules, train_step.init_state(trainable, frozen, tx, config.seed)


def build_abstract_state(config, tables, steps_per_epoch: int):
    """Like `build_state` but the state is only shapes and dtypes (nothing is initialised or
    computed): what a resumed run restores its checkpoint into."""
    model = hoiclip.build_model(config.model, tables)
    params = hoiclip.abstract_params(model, config.dataset)
    trainable, frozen, tx, schedules = _split_and_optimizer(config, params, steps_per_epoch)
    state = jax.eval_shape(lambda t, f: train_step.init_state(t, f, tx, config.seed),
                           trainable, frozen)
    return model, tx, schedules, state


def abstract_state(config, tables):
    """(model, train-state shapes) without initialising or computing anything."""
    # The step count per epoch only changes schedule constants, not the state's shapes.
    model, _, _, state = build_abstract_state(config, tables, steps_per_epoch=1)
    return model, state


def restore_params(workdir: str, config, tables, target_sharding, step: Optional[int] = None,
                   subdir: str = checkpoints.CHECKPOINT_DIR):
    """(model, params, step) from `step` (default: latest) of the workdir's checkpoints
    (`subdir=checkpoints.BEST_DIR`: the best one by validation mAP).

    The whole train state is read (the checkpoint's tree is checked against it) and its
    optimizer state dropped. Every array lands with `target_sharding`, whatever mesh wrote it:
    `sharding.replicated(mesh)` for evaluation, a `SingleDeviceSharding` for analysis.
    """
    ckpt = checkpoints.Checkpointer(workdir, keep=1, subdir=subdir, read_only=True)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
        model, state = abstract_state(config, tables)
        restored, meta = ckpt.restore(step, checkpoints.abstract_like(state, target_sharding))
    finally:
        ckpt.close()
    logging.info("Restored %s/%d (epoch %s)", ckpt.directory, step, meta.get("epoch"))
    return model, optim.merge_params(restored["trainable"], restored["frozen"]), step
