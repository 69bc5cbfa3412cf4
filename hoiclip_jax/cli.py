"""Command-line plumbing shared by the entry points: the `--config` flag and logging."""
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

# Config files import `from configs import common`; make the repository root importable when
# the package is used from an editable install and the command runs from elsewhere.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)


def define_config_flag() -> flags.FlagHolder:
    """`--config path/to/config.py[:arg]` plus `--config.key=value` overrides.

    The config is locked: an unknown key or a value of the wrong type on the command line is an
    error before any work starts.
    """
    return config_flags.DEFINE_config_file(
        "config", None, "Config file (configs/*.py); override fields with --config.key=value.",
        lock_config=True)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    # Orbax and absl are chatty at INFO; keep our own messages readable.
    for name in ("absl", "orbax", "jax._src"):
        logging.getLogger(name).setLevel(logging.WARNING)
