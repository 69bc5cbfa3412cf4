"""What a training run writes for people and tools: `<workdir>/metrics.jsonl` and TensorBoard
event files in `<workdir>/tensorboard/` (tensorboardX, no TensorFlow).

`metrics.jsonl` has one JSON object per line, each with a `kind`:
- `start`: at every (re)start: `step` (where training starts), `resumed` (bool), `config` (the
  whole config), `mesh` (`describe_mesh`), `time`.
- `train`: every `train.log_every_steps` steps: `step` (steps done), `epoch`, `loss`, every loss
  term and metric of the step, `lr`, `img_s`, `time`, `image_ids` (the `image_id`s of this
  step's batch, as this process fed them) and `data_digest` (a running hash of the image ids of
  every step since step 0, so two runs with the same digest at a step saw the same data order).
- `eval`: after each evaluation: `step`, `epoch`, `mAP`, `mAP_rare`, `mAP_non_rare`,
  `mean_max_recall` (fractions, null for a mean over no class), `best` (bool), `time`.

On resume from the checkpoint at step S, `train` and `eval` lines of steps after S (written by
the killed run after its last checkpoint, and about to be written again) are dropped, so the
file reads as one uninterrupted run; `start` lines are kept as the restart history. TensorBoard
gets the same scalars, and `purge_step` makes it drop the killed run's events after S.

Only process 0 writes (`enabled=False` elsewhere makes every method a no-op).
"""
import hashlib
import json
import logging
import math
import os
import time
from typing import Optional

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def describe_mesh(mesh) -> dict:
    """The resolved device mesh as plain JSON values."""
    return {
        "axes": dict(mesh.shape),
        "devices": [{"id": d.id, "process": d.process_index, "kind": d.device_kind}
                    for d in mesh.devices.flat],
        "platform": mesh.devices.flat[0].platform,
        "process_count": jax.process_count(),
    }


def update_digest(digest: str, image_ids: np.ndarray) -> str:
    """The running data-order hash after one more batch of `image_ids [b]`."""
    ids = np.asarray(image_ids, np.int64).tobytes()
    return hashlib.sha256(digest.encode() + ids).hexdigest()[:16]


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _truncate(path: str, resume_step: int) -> None:
    """Drops `train`/`eval` lines with step > resume_step (and a line cut short by a kill)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                logging.warning("%s:%d: dropping an unreadable line (cut by a kill?)", path, number)
                continue
            if entry.get("kind") == "start" or entry["step"] <= resume_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)  # atomic: a kill here leaves the old or the new file, never half


class RunLog:
    """Writes `metrics.jsonl` and TensorBoard events for one (re)start of a run."""

    def __init__(self, workdir: str, resume_step: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # imported here: only process 0 needs it
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, METRICS_FILE)
        _truncate(self.path, resume_step)
        self._file = open(self.path, "a", buffering=1)  # line-buffered: whole lines reach the OS
        # TensorBoard hides the events of steps >= purge_step written before this restart.
        self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                 purge_step=resume_step + 1, flush_secs=30,
                                 # the name has the time in seconds only: a restart within
                                 # the same second must not write over the last file
                                 filename_suffix=f".{time.time_ns()}")

    def _write(self, entry: dict) -> None:
        entry["time"] = time.time()
        self._file.write(json.dumps(entry, allow_nan=False) + "\n")

    def start(self, step: int, config, mesh) -> None:
        """The config and mesh of this (re)start, to the file, TensorBoard and the console."""
        mesh_info = describe_mesh(mesh)
        logging.info("Mesh: %s", json.dumps(mesh_info))
        logging.info("Config:\n%s", config)
        if not self.enabled:
            return
        config_json = json.loads(config.to_json_best_effort())
        self._write({"kind": "start", "step": step, "resumed": step > 0, "config": config_json,
                     "mesh": mesh_info})
        self._tb.add_text("config", "```\n" + json.dumps(config_json, indent=2) + "\n```", step)
        self._tb.add_text("mesh", json.dumps(mesh_info), step)

    def train(self, step: int, epoch: int, metrics: dict, lr: float, img_s: float,
              image_ids: np.ndarray, data_digest: str) -> None:
        """One logged training step; `metrics` are the step's scalars (floats)."""
        if not self.enabled:
            return
        scalars = {k: _finite_or_none(v) for k, v in metrics.items()}
        scalars.update(lr=float(lr), img_s=float(img_s))
        self._write({"kind": "train", "step": step, "epoch": epoch, **scalars,
                     "image_ids": [int(i) for i in image_ids], "data_digest": data_digest})
        for name, value in scalars.items():
            if value is not None:
                self._tb.add_scalar(f"train/{name}", value, step)

    def evaluation(self, step: int, epoch: int, metrics: dict, best: bool) -> None:
        """One evaluation: `metrics` has the mAP table values (fractions or None)."""
        if not self.enabled:
            return
        self._write({"kind": "eval", "step": step, "epoch": epoch, **metrics, "best": best})
        for name, value in metrics.items():
            if value is not None:
                self._tb.add_scalar(f"eval/{name}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def read(workdir: str, kind: Optional[str] = None) -> list[dict]:
    """The entries of `<workdir>/metrics.jsonl` (only those of `kind` if given)."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        entries = [json.loads(line) for line in f]
    return [e for e in entries if kind is None or e["kind"] == kind]
