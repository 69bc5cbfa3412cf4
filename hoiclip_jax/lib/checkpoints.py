"""Orbax checkpoints of the train state: the latest k in `<workdir>/checkpoints/<step>/`, the best
by validation mAP in `<workdir>/best/<step>/`.

Saves are asynchronous and atomic: orbax writes to a temporary folder and renames it once the
write has committed, so a run killed mid-save keeps its previous checkpoints; the temporary
folder such a kill leaves behind is deleted when the next run opens the folder
(`cleanup_tmp_directories`). The best checkpoint lives in its own folder with its own manager, so
the keep-last-k rule of `checkpoints/` can never delete it, and resuming always reads
`checkpoints/` (the latest state), never `best/`.

Each checkpoint holds the state (`state`) and a small JSON (`meta`) with what is needed to
continue the data stream exactly (see `data_meta`). The config of the run is written once as
`<workdir>/config.json` for people and tools.

Failures raise `CheckpointError` naming the folder:
- a write that fails (disk full, ...) surfaces at the next `save`, `wait` or `close`: the step
  being written stays a temporary folder, the finished checkpoints are untouched, and the train
  state in memory is not affected (orbax copied it to the host before writing);
- `restore` first compares the checkpoint's saved tree (names, shapes, dtypes: a small metadata
  file) with the state it is asked for, and lists every difference (a checkpoint of another model
  or config): orbax itself would silently restore an array of another shape. A checkpoint whose
  files are truncated or missing fails when read; either way nothing is restored.
"""
import contextlib
import json
import logging
import math
import os
from typing import Any, Iterator, Optional

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
CONFIG_FILE = "config.json"
# Fields of the checkpoint meta that must equal the current run's for the data stream to continue
# where it stopped: the order of epoch e is a permutation fixed by (seed, e) over the training
# records, cut into batches of batch_size (loader.train_batches).
DATA_FIELDS = ("seed", "batch_size", "num_train", "steps_per_epoch")
_LISTED = 10  # differences listed per kind in a CheckpointError


class CheckpointError(RuntimeError):
    """A checkpoint that could not be written or read; the message names the folder."""


def _manager(directory: str, keep: int, read_only: bool = False,
             **best) -> ocp.CheckpointManager:
    # A reader (e.g. evaluation during a run) must not delete the temporary folder of a save in
    # progress, so only a writer cleans up.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           read_only=read_only,
                                           cleanup_tmp_directories=not read_only, **best)
    # Named handlers let `item_metadata` read the saved tree (shapes, dtypes) before a restore.
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


@contextlib.contextmanager
def _write_errors(manager: ocp.CheckpointManager, directory: str) -> Iterator[None]:
    """Turns a failed (possibly earlier, asynchronous) write into a CheckpointError."""
    try:
        yield
    except Exception as e:
        raise CheckpointError(
            f"{directory}: writing a checkpoint failed ({type(e).__name__}: {e}); the finished "
            f"checkpoints {list(manager.all_steps())} are intact (the partial folder is deleted "
            f"when the folder is next opened for writing)") from e


def _save_args(state: Any, meta: dict) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))


class Checkpointer:
    """Saves and restores `{'step', 'trainable', 'frozen', 'opt_state', 'rng'}` train states."""

    def __init__(self, workdir: str, keep: int, subdir: str = CHECKPOINT_DIR,
                 read_only: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, subdir))
        self._manager = _manager(self.directory, keep, read_only)

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an asynchronous save; the caller may keep training (and donate `state`): the
        device-to-host copy is done when this returns, the file writes go on in a thread. An
        earlier save that failed raises CheckpointError here."""
        with _write_errors(self._manager, self.directory):
            self._manager.save(step, args=_save_args(state, meta), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores `step` into the shapes, dtypes and shardings of `abstract_state`.

        Raises CheckpointError, having restored nothing, when the checkpoint's tree differs from
        `abstract_state` (every difference listed) or its files cannot be read.
        """
        where = f"{self.directory}/{step}"
        check_saved_tree(self._saved_tree(step, where), abstract_state, where)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"{where}: the checkpoint is incomplete or corrupt, nothing "
                                  f"was restored ({type(e).__name__}: {str(e)[:500]})") from e
        return restored["state"], restored["meta"]

    def restore_meta(self, step: int) -> dict:
        """Only the JSON meta of `step` (no arrays are read)."""
        try:
            return self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise CheckpointError(
                f"{self.directory}/{step}: no readable meta: not a hoiclip-jax checkpoint, or an "
                f"incomplete one ({type(e).__name__}: {str(e)[:300]})") from e

    def _saved_tree(self, step: int, where: str) -> Any:
        """The saved state's tree of array metadata (`.shape`, `.dtype` leaves)."""
        try:
            metadata = self._manager.item_metadata(step)["state"]
        except Exception as e:
            raise CheckpointError(f"{where}: the checkpoint is incomplete or corrupt (its "
                                  f"metadata cannot be read), nothing was restored "
                                  f"({type(e).__name__}: {str(e)[:300]})") from e
        if metadata is None:
            raise CheckpointError(f"{where}: no readable 'state' metadata: not a hoiclip-jax "
                                  f"checkpoint, or an incomplete one; nothing was restored")
        return metadata.tree

    def wait(self) -> None:
        with _write_errors(self._manager, self.directory):
            self._manager.wait_until_finished()

    def close(self) -> None:
        with _write_errors(self._manager, self.directory):
            self._manager.wait_until_finished()
        self._manager.close()


class BestCheckpointer:
    """Keeps the one train state with the highest validation mAP in `<workdir>/best/<step>/`.

    `save_if_better` writes only when the mAP beats the kept one (strictly); orbax then deletes
    the older folder (`best_fn` on the saved metrics, one kept). A run killed after saving its
    best state and before its next checkpoint evaluates that step again when it resumes; the
    rerun gives the same mAP, which counts as the best (as it did before the kill, so the run
    log matches an uninterrupted run's) without writing the state again.
    """

    def __init__(self, workdir: str):
        self.directory = os.path.abspath(os.path.join(workdir, BEST_DIR))
        self._manager = _manager(self.directory, 1, best_fn=lambda m: m["mAP"], best_mode="max",
                                 keep_checkpoints_without_metrics=False)
        self._best = None  # (step, mAP), read from the folder on first use

    def best(self) -> tuple[Optional[int], float]:
        """(step, mAP) of the kept checkpoint; (None, -inf) when there is none."""
        if self._best is None:
            step = self._manager.best_step()
            self._best = (None, -math.inf) if step is None else (
                step, float(self._manager.metrics(step)["mAP"]))
        return self._best

    def save_if_better(self, step: int, state: Any, meta: dict, mAP: float) -> bool:
        """Saves `state` when `mAP` (a fraction; NaN never wins) beats the kept one; True when
        it did, or when the kept one is this step's with this mAP (the rerun after a kill)."""
        kept_step, kept = self.best()
        if kept_step == step and mAP == kept:
            return True
        if not mAP > kept:
            return False
        with _write_errors(self._manager, self.directory):
            self._manager.save(step, args=_save_args(state, meta), metrics={"mAP": float(mAP)},
                               force=True)
            # Finish before any other manager saves: in a multi-process run two managers with
            # saves in flight at once left the processes waiting on each other's commit barrier.
            self._manager.wait_until_finished()
        self._best = (step, float(mAP))
        return True

    def close(self) -> None:
        with _write_errors(self._manager, self.directory):
            self._manager.wait_until_finished()
        self._manager.close()


def check_saved_tree(saved: Any, abstract_state: Any, where: str) -> None:
    """Raises CheckpointError listing the leaves missing from, extra in, or of another shape or
    dtype in the saved tree `saved` (orbax array metadata) than in `abstract_state`."""
    flat = lambda tree: ocp.tree.to_flat_dict(tree, sep="/")
    have = flat(saved)
    want = flat(ocp.tree.serialize_tree(abstract_state, keep_empty_nodes=True))
    describe = lambda x: f"{tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', type(x))}"
    problems = {
        "missing from the checkpoint": sorted(set(want) - set(have)),
        "in the checkpoint only": sorted(set(have) - set(want)),
        "shape or dtype differs (checkpoint vs this run)": [
            f"{k}: {describe(have[k])} vs {describe(want[k])}"
            for k in sorted(set(have) & set(want)) if describe(have[k]) != describe(want[k])],
    }
    if not any(problems.values()):
        return
    lines = [f"{title} ({len(names)}): " + ", ".join(names[:_LISTED])
             + (f", ... {len(names) - _LISTED} more" if len(names) > _LISTED else "")
             for title, names in problems.items() if names]
    raise CheckpointError(f"{where} does not fit this model and config (a checkpoint of another "
                          f"model, config or version?); nothing was restored.\n  "
                          + "\n  ".join(lines))


def data_meta(seed: int, batch_size: int, num_train: int, steps_per_epoch: int) -> dict:
    """The part of the checkpoint meta that fixes the data stream (`DATA_FIELDS`)."""
    return {"seed": int(seed), "batch_size": int(batch_size), "num_train": int(num_train),
            "steps_per_epoch": int(steps_per_epoch)}


def check_data_meta(saved: dict, expected: dict, where: str) -> None:
    """Raises a ValueError naming every `DATA_FIELDS` entry that differs between the checkpoint
    at `where` and the current run: resuming would then not continue the same data order."""
    missing = [k for k in DATA_FIELDS if k not in saved]
    if missing:
        raise ValueError(f"{where}: the checkpoint meta has no {missing} (written by an older "
                         f"version?); cannot prove the data order continues. Use a new workdir.")
    diff = [f"{k}: checkpoint {saved[k]} vs config {expected[k]}" for k in DATA_FIELDS
            if saved[k] != expected[k]]
    if diff:
        raise ValueError(f"{where}: cannot resume, the data stream would change ("
                         + "; ".join(diff) + "). Restore the config's values or use a new "
                         "workdir.")


def abstract_like(tree: Any, sharding) -> Any:
    """ShapeDtypeStructs of `tree` with one sharding for every leaf."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def write_config(workdir: str, config) -> None:
    """Writes the run's config as JSON (only from process 0)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))


# Config fields added after runs were already written, with the value that gives the behaviour
# those runs had; `read_config` fills them into an older config.json and logs that it did.
ADDED_FIELDS = {
        "model.remat": "none",
        "train.microbatches": 1,
        "matcher.backend": "scipy",
        "model.mask_padded_memory": False,
        "optim.warmup_steps": 0,
        "allow_stand_ins": True,  # older runs fell back to the stand-ins with a log line
}


def read_config(workdir: str):
    """The ConfigDict written by `write_config` (fields of `ADDED_FIELDS` that an older run's
    file lacks are filled in, with a log line naming them)."""
    import ml_collections
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a hoiclip-jax workdir?")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    filled = []
    for dotted, value in ADDED_FIELDS.items():
        *section, field = dotted.split(".")
        node = config[section[0]] if section and section[0] in config else config
        if (not section or section[0] in config) and field not in node:
            node[field] = value
            filled.append(f"{dotted}={value!r}")
    if filled:
        logging.info("%s predates %s: set to the behaviour it was written with", path,
                     ", ".join(filled))
    return config
