"""Config files (`configs/*.py`) loaded by their file path, as `--config` does.

Config files import their shared pieces from the package (`hoiclip_jax.lib.config_base`), never
from a `configs` package, so one works from any folder and with a non-editable install.
"""
import importlib.util
import os


def load_config(path: str):
    """Runs `get_config()` of the config file at `path`, or `get_config(arg)` for `path:arg`
    (the syntax of the training CLI's `--config`)."""
    path, sep, arg = path.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path}: no such file")
    name = "_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if sep else module.get_config()
