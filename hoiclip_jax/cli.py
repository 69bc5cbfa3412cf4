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


def define_multihost_flag() -> flags.FlagHolder:
    return flags.DEFINE_bool(
        "multihost", os.environ.get("HOICLIP_MULTIHOST", "") == "1",
        "Join a multi-process run with jax.distributed.initialize() before any other JAX call "
        "(coordinator, process count and id from the cluster environment: SLURM, Open MPI, or "
        "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID). Default from the "
        "environment variable HOICLIP_MULTIHOST=1.")


def initialize_distributed(multihost: bool) -> None:
    """Connects this process to the others of a multi-process run (no-op when not asked)."""
    if multihost:
        import jax
        jax.distributed.initialize()


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    # Orbax and absl are chatty at INFO; keep our own messages readable.
    for name in ("absl", "orbax", "jax._src"):
        logging.getLogger(name).setLevel(logging.WARNING)
