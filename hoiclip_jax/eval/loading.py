"""Loading a trained model for analysis: `load_checkpoint(path) -> (config, params)`.

`load_checkpoint` restores onto ONE device (default: the first local one; pass
`jax.devices("cpu")[0]` for the CPU) whatever mesh saved the checkpoint: orbax reads the arrays
into abstract ones with a single-device sharding, so a state saved on 8 GPUs restores on a
laptop. It reads
- a workdir of `hoiclip_jax.train` (its `config.json`, the latest step of `checkpoints/`),
- a checkpoint folder: `<workdir>/checkpoints` or `<workdir>/best` (latest step there), or one
  step `<workdir>/checkpoints/<step>`,
- a released HOICLIP `.pth` or the `.msgpack` of `hoiclip_jax.tools.import_weights`, which carry
  no config: give the config of the model they hold.
"""
import logging
import os
import re
from typing import Any, Optional

import flax.traverse_util as traverse_util
import jax
import numpy as np

from data_pipeline import class_tables
from hoiclip_jax.weights import pretrained
from hoiclip_jax.lib import checkpoints
from hoiclip_jax.lib import config_base
from hoiclip_jax.models import hoiclip
from hoiclip_jax.train import state as state_io

WEIGHT_FILES = (".pth", ".msgpack")
# Config sections whose keys each config chooses (the optimizer's group names).
FREE_FORM_FIELDS = ("optim.group_lr_mult.",)


def load_checkpoint(path: str, config=None, *, step: Optional[int] = None,
                    device: Optional[jax.Device] = None) -> tuple[Any, dict]:
    """(config, params) of a workdir, a checkpoint folder, or a `.pth` / `.msgpack` file.

    Args:
      path: see the module docstring.
      config: the ConfigDict of the model; default: `<workdir>/config.json`. Required for a
        `.pth` / `.msgpack` (e.g. `configs.hico.get_config()`).
      step: the step to restore (default: the latest of the folder). Not for weight files.
      device: where the params are put (default: `jax.local_devices()[0]`).

    Returns:
      (config, params): params is the nested 'params' dict of `hoiclip.build_model(config.model,
      tables)`, float32, on `device`.

    Raises:
      FileNotFoundError: `path` is none of the above, or holds no checkpoint.
      ValueError: a weight file without `config`, or a step that contradicts the path.
      checkpoints.CheckpointError: the checkpoint does not fit the config (every difference
        listed) or cannot be read.
    """
    device = jax.local_devices()[0] if device is None else device
    if os.path.isfile(path):
        if not path.endswith(WEIGHT_FILES):
            raise ValueError(f"{path}: not a weight file ({'/'.join(WEIGHT_FILES)}); give one, "
                             f"a workdir or a checkpoint folder")
        if config is None or step is not None:
            raise ValueError(f"{path}: a weight file needs `config` (the config of the model "
                             f"it holds; --config on the command line) and takes no step")
        tables = class_tables.load_class_tables(config.dataset)
        return config, jax.device_put(params_from_weights(path, config, tables), device)
    workdir, subdir, step = locate_checkpoint(path, step)
    if config is None:
        config = checkpoints.read_config(workdir)
        check_config_fields(config, os.path.join(workdir, checkpoints.CONFIG_FILE))
    tables = class_tables.load_class_tables(config.dataset)
    _, params, _ = state_io.restore_params(workdir, config, tables,
                                           jax.sharding.SingleDeviceSharding(device), step, subdir)
    return config, params


def locate_checkpoint(path: str, step: Optional[int]) -> tuple[str, str, Optional[int]]:
    """(workdir, subdir, step or None for the latest) of a workdir or checkpoint folder."""
    path = os.path.normpath(os.path.abspath(path))
    parent, name = os.path.split(path)
    folders = (checkpoints.CHECKPOINT_DIR, checkpoints.BEST_DIR)
    if re.fullmatch(r"\d+", name) and os.path.basename(parent) in folders:
        if step is not None and step != int(name):
            raise ValueError(f"{path} is step {name}, but step={step} was asked for")
        workdir, subdir = os.path.split(parent)
        return workdir, subdir, int(name)
    if name in folders and not os.path.isfile(os.path.join(path, checkpoints.CONFIG_FILE)):
        return parent, name, step
    if os.path.isfile(os.path.join(path, checkpoints.CONFIG_FILE)):
        return path, checkpoints.CHECKPOINT_DIR, step
    raise FileNotFoundError(
        f"{path}: not a workdir (no {checkpoints.CONFIG_FILE}), a checkpoint folder "
        f"(<workdir>/{{{','.join(folders)}}}[/<step>]) or a weight file "
        f"({'/'.join(WEIGHT_FILES)})")


class ConfigFieldsError(ValueError):
    """A saved config that lacks fields of this version's configs."""


def check_config_fields(config, where: str) -> None:
    """Raises ConfigFieldsError listing the fields of this version's configs
    (`hoiclip_jax.lib.config_base`) that the saved `config` lacks: a workdir written by an older
    version, whose model this version might build differently. Pass the run's config file
    instead."""
    flat = lambda c: {k for k in traverse_util.flatten_dict(c.to_dict(), sep=".")
                      if not k.startswith(FREE_FORM_FIELDS)}
    missing = sorted(flat(config_base.hoiclip_config(config.dataset.name)) - flat(config))
    if missing:
        raise ConfigFieldsError(
            f"{where} lacks the config fields {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''} (written by an older version of "
            f"hoiclip-jax?): pass the run's config (--config / config=) instead")


def params_from_weights(path: str, config, tables) -> dict:
    """Params from a HOICLIP `.pth` / import `.msgpack` (`pretrained.load_pretrained`).

    A complete file (a released HOICLIP checkpoint fills every param) is loaded into abstract
    params, so nothing is initialised. A partial one (a DETR `.pth`, a partial `.msgpack`) is
    loaded over the initial params of `config`, as training would start from it; a warning lists
    what stays at init.
    """
    model = hoiclip.build_model(config.model, tables)
    abstract = hoiclip.abstract_params(model, config.dataset)
    params, report = pretrained.load_pretrained(path, abstract, config, tables)
    if not report.left_at_init:
        return jax.tree.map(np.asarray, params)
    logging.warning("%s does not hold the whole model; the rest is initialised from the config "
                    "(random or CLIP text, as at the start of training):\n%s", path,
                    report.summary())
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.pretrained = path
    return state_io.initial_params(config, tables)[1]
