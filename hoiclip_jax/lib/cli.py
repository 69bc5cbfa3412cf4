"""Command-line plumbing shared by the entry points: the `--config` flag and logging."""
import difflib
import logging
import os
import re
import sys
from typing import Any, Optional

import ml_collections
from absl import flags
from ml_collections import config_flags



def define_config_flag(required: bool = True, help_text: str = "Config file (configs/*.py); "
                       "override fields with --config.key=value.") -> flags.FlagHolder:
    """`--config path/to/config.py[:arg]` plus `--config.key=value` overrides.

    `required`: a command line without `--config` stops with "--config is required" (absl's
    own message would be "The flag has not been parsed yet"); else the flag is None then.

    Checked while the flags are parsed, so that a bad command line stops before any work starts
    (nothing is written to the workdir), with absl's one-line "FATAL Flags parsing error: ...":
    - an unknown key (ml_collections would raise a bare AttributeError traceback) names the
      section's fields and the closest one;
    - a value of the wrong type: scalars are checked by ml_collections; tuple fields, which it
      accepts with any entries, must have entries of the default's types (and, where the
      default's entries are tuples of one length, e.g. buckets (H, W), of that length);
    - the dataset fields that fit together (`transforms.check_dataset_config`).
    """
    holder = config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)
    flag = flags.FLAGS[holder.name]
    parser = _CheckedConfigParser(flag.parser, holder.name)
    flag.parser = parser

    def validate(config) -> bool:
        if config is None:
            if required:
                raise flags.IllegalFlagValueError(
                    f"--{holder.name} is required: a config file such as configs/demo.py")
            return True
        return parser.validate(config, config_flags.get_override_values(flag))

    flags.register_validator(holder.name, validate)
    return holder


class _CheckedConfigParser(flags.ArgumentParser):
    """Wraps ml_collections' config-file parser: checks the override names on the command line
    against the loaded config, and keeps a copy of it for the type checks (`validate`)."""

    def __init__(self, inner: flags.ArgumentParser, name: str):
        self._inner = inner
        self._name = name
        self.defaults: Optional[ml_collections.ConfigDict] = None

    def parse(self, argument):
        config = self._inner.parse(argument)
        if isinstance(config, ml_collections.ConfigDict):  # else a load error, reported later
            argv = flags.FLAGS.read_flags_from_files(sys.argv, force_gnu=False)
            for path in override_paths(argv, self._name):
                check_override_path(config, path, self._name)
            self.defaults = config.copy_and_resolve_references()
        return config

    def flag_type(self) -> str:
        return self._inner.flag_type()

    def validate(self, config, overrides: dict) -> bool:
        """Runs once every flag is parsed. Raises IllegalFlagValueError rather than absl's
        ValidationError, whose message would start with the whole config dumped as YAML."""
        if self.defaults is None:
            return True
        for path, value in overrides.items():
            problem = override_type_error(_get(self.defaults, path), value)
            if problem:
                raise flags.IllegalFlagValueError(f"--{self._name}.{path}: {problem}")
        if "dataset" in config:
            from data_pipeline import transforms  # here: flag definition stays import-light
            try:
                transforms.check_dataset_config(config.dataset)
            except ValueError as e:
                raise flags.IllegalFlagValueError(f"--{self._name}: {e}") from None
        return True


def override_paths(argv: list[str], name: str = "config") -> list[str]:
    """The field paths of the `--<name>.a.b=value` (or `--no<name>.a.b`) arguments in `argv`."""
    pattern = re.compile(rf"^-{{1,2}}(?:no)?{re.escape(name)}\.([^=]+)")
    return [m.group(1) for m in map(pattern.match, argv) if m]


def check_override_path(config: ml_collections.ConfigDict, path: str,
                        name: str = "config") -> None:
    """Raises ValueError naming `--<name>.<path>` when `path` is not a field of `config`, with the
    fields of the deepest section that exists and the closest name."""
    node, done = config, []
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join([name] + done)
            if not isinstance(node, ml_collections.ConfigDict):
                raise ValueError(f"--{name}.{path}: {where} is a value, not a section")
            close = difflib.get_close_matches(part, list(node), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"--{name}.{path}: unknown config key '{part}'; {where} has "
                             f"{', '.join(sorted(node))}.{hint}")
        node, done = node[part], done + [part]


def override_type_error(default: Any, value: Any) -> Optional[str]:
    """Why `value` cannot replace `default` (same type; ints allowed for floats; tuple entries
    checked recursively), or None when it can. A None default accepts anything."""
    if default is None or isinstance(default, ml_collections.ConfigDict):
        return None
    if isinstance(default, tuple):
        return _tuple_type_error(default, value)
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        ok = isinstance(value, type(default))
    else:  # int or float: never a bool; an int where a float is expected is fine
        ok = not isinstance(value, bool) and isinstance(
            value, int if isinstance(default, int) else (int, float))
    if ok:
        return None
    return (f"expected {type(default).__name__} (like {default!r}), got {value!r} "
            f"({type(value).__name__})")


def _tuple_type_error(default: tuple, value: Any) -> Optional[str]:
    if not isinstance(value, tuple):
        return f"expected a tuple like {default!r}, got {value!r}"
    if not default:
        return None
    if len({_signature(d) for d in default}) == 1:  # entries alike: any number of them
        pairs = [(default[0], v) for v in value]
    elif len(value) != len(default):
        return f"expected {len(default)} entries like {default!r}, got {value!r}"
    else:
        pairs = list(zip(default, value))
    for d, v in pairs:
        if isinstance(d, tuple) and isinstance(v, tuple) and len(v) != len(d):
            return f"entry {v!r} should have {len(d)} values like {d!r}"
        problem = override_type_error(d, v)
        if problem:
            return problem
    return None


def _signature(x: Any):
    """Type structure of a default entry: tuples of one signature are alike."""
    if isinstance(x, tuple):
        return ("tuple", len(x), tuple(_signature(v) for v in x))
    return "number" if isinstance(x, (int, float)) and not isinstance(x, bool) else type(x)


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
    for part in path.split("."):
        config = config[part]
    return config


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
