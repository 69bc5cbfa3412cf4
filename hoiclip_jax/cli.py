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


def _env_int(name: str):
    """The integer in environment variable `name`, or None when it is unset or empty."""
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def distributed_args() -> dict:
    """Arguments for `jax.distributed.initialize` from JAX_COORDINATOR_ADDRESS (host:port of
    process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID.

    jax reads JAX_COORDINATOR_ADDRESS itself but not the other two: without them it only finds
    the process count and id in a cluster it recognises (SLURM, Open MPI, Kubernetes, Cloud TPU).
    Unset variables stay None so that this detection fills them.
    """
    args = {"coordinator_address": os.environ.get("JAX_COORDINATOR_ADDRESS") or None,
            "num_processes": _env_int("JAX_NUM_PROCESSES"),
            "process_id": _env_int("JAX_PROCESS_ID")}
    if (args["num_processes"] is None) != (args["process_id"] is None):
        raise ValueError("set both JAX_NUM_PROCESSES and JAX_PROCESS_ID, or neither (got "
                         f"{args['num_processes']} and {args['process_id']})")
    return args


def initialize_distributed(multihost: bool) -> None:
    """Connects this process to the others of a multi-process run (no-op when not asked).

    Must run before any other JAX call: the backend is created with the distributed client.
    On CPU the cross-process collectives are gloo over TCP, jax's default
    (`jax_cpu_collectives_implementation`); without a distributed client they would not exist.
    """
    if not multihost:
        return
    import jax
    jax.distributed.initialize(**distributed_args())
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    # Orbax and absl are chatty at INFO; keep our own messages readable.
    for name in ("absl", "orbax", "jax._src"):
        logging.getLogger(name).setLevel(logging.WARNING)
