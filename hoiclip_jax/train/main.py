r"""Trains HOICLIP: `python -m hoiclip_jax.train --config configs/demo.py --workdir runs/demo`.

Reads top to bottom: mesh -> data -> model, optimizer and state (fresh, or restored from the
workdir's latest checkpoint) -> jitted step -> loop over epochs -> evaluation and checkpoints at
epoch ends. Rerunning the same command after a stop (even SIGKILL) resumes from the latest
checkpoint and continues exactly as an uninterrupted run would:
- the checkpoint holds the whole state (params, optimizer state, step, dropout key);
- the data order of epoch e is fixed by (seed, e) and each example's augmentation by (seed, e,
  record), so the data iterator's state is just the step: the resumed run rebuilds the epoch's
  stream from the first batch not trained on yet. The checkpoint meta keeps what fixes that
  stream (seed, batch size, number of training images, steps per epoch) and a running hash of
  the image ids trained on; resuming with a config that changes the stream is an error.
- the epoch-end checkpoint is written after that epoch's evaluation, so a kill during the
  evaluation repeats it instead of losing it.
Outputs in the workdir: config.json, checkpoints/ (last `keep_checkpoints`), best/ (best test
mAP, when `eval_every_epochs > 0`), metrics.jsonl and tensorboard/ (see run_log.py).
"""
import dataclasses
import logging
import math
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
import tqdm
from absl import flags

from data_pipeline import class_tables, loader, required_files, sources
from data_pipeline.class_tables import ClassTables
from hoiclip_jax.lib import checkpoints, cli, run_log, sharding
from data_pipeline import datasets
from hoiclip_jax.eval import evaluator as evaluation
from hoiclip_jax.train import matching, optim, state as state_io, step as train_step

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so the module imports cleanly)."""
    cli.define_config_flag()
    cli.define_multihost_flag()
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints, config, metrics.",
                        required=True)


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass(frozen=True)
class TrainData:
    """The training split and the layout of its batches."""
    tables: ClassTables
    split: sources.HoiSplit   # records after the zero-shot filter, and their images
    num_train: int            # records with at least one interaction (the ones trained on)
    steps_per_epoch: int

    def batches(self, config, epoch: int, start_step: int):
        """This process's numpy batches `start_step`.. of `epoch` (order fixed by (seed, epoch);
        the skipped batches are not read)."""
        return loader.train_batches(
            self.split.records, self.tables, config.dataset, self.split.images,
            global_batch_size=config.train.batch_size, seed=config.seed, epoch=epoch,
            process_index=jax.process_index(), process_count=jax.process_count(),
            start_step=start_step)

    def meta(self, config, step: int, data_digest: str) -> dict:
        """Checkpoint meta at `step`: where the data stream is and what fixes it."""
        return {"step": step, "epoch": step // self.steps_per_epoch, "data_digest": data_digest,
                **checkpoints.data_meta(config.seed, config.train.batch_size, self.num_train,
                                        self.steps_per_epoch)}


def load_train_data(config) -> TrainData:
    tables = class_tables.load_class_tables(config.dataset)
    split = datasets.load_split(config, tables, "train")
    num_train = len(loader.training_records(split.records))
    return TrainData(tables, split, num_train,
                     loader.steps_per_epoch(num_train, config.train.batch_size))


# ----------------------------------------------------------------------------- state

def initial_state(config, data: TrainData, ckpt: checkpoints.Checkpointer, mesh):
    """(model, tx, schedules, state on the mesh, data digest) from the latest checkpoint of the
    workdir, or fresh when there is none."""
    step = ckpt.latest_step()
    if step is None:
        model, tx, schedules, state = state_io.build_state(config, data.tables,
                                                           data.steps_per_epoch)
        log_parameter_counts(state)
        return model, tx, schedules, sharding.put_replicated(state, mesh), ""
    where = f"{ckpt.directory}/{step}"
    expected = data.meta(config, step, "")
    checkpoints.check_data_meta(ckpt.restore_meta(step), expected, where)
    model, tx, schedules, abstract = state_io.build_abstract_state(config, data.tables,
                                                                   data.steps_per_epoch)
    state, meta = ckpt.restore(step, checkpoints.abstract_like(abstract,
                                                               sharding.replicated(mesh)))
    if int(jax.device_get(state["step"])) != step or meta["step"] != step:
        raise ValueError(f"{where}: holds step {int(jax.device_get(state['step']))} "
                         f"(meta {meta['step']}), not {step}")
    logging.info("Resumed from %s (epoch %d)", where, meta["epoch"])
    return model, tx, schedules, state, meta["data_digest"]


def log_parameter_counts(state) -> None:
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    logging.info("Parameters: %s trainable, %s frozen",
                 f"{count(state['trainable']):,}", f"{count(state['frozen']):,}")


# ----------------------------------------------------------------------------- evaluation

def make_evaluator(model, config, data: TrainData, mesh) -> Callable[[dict, int], object]:
    """`evaluate(state, step) -> evaluation.Report` on the test split in the data set's default
    protocol (python for HICO-Det, the proxy for V-COCO; TFE rows as `eval.tfe_k`), compiled
    once for the whole run. The reference evaluates on the test split every epoch and selects
    its best checkpoint there (§4.1); so does this run, by `report.main_key` of the first row."""
    evaluator = evaluation.Evaluator(model, config, data.tables, mesh,
                                     train_hoi_counts=data.split.hoi_counts)

    def evaluate_state(state: dict, step: int):
        params = optim.merge_params(state["trainable"], state["frozen"])
        report, _ = evaluator(params, f"step {step}")
        return report

    return evaluate_state


def evaluation_due(config, epoch: int) -> bool:
    """After every `eval_every_epochs`-th epoch and after the last one (0: never)."""
    every = config.train.eval_every_epochs
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == config.train.num_epochs)


# ----------------------------------------------------------------------------- loop

@dataclasses.dataclass
class Run:
    """What the loop needs besides the state (which it passes along, being donated)."""
    config: object
    mesh: object
    data: TrainData
    step_fn: Callable
    ckpt: checkpoints.Checkpointer
    log: run_log.RunLog
    bar: tqdm.tqdm
    schedules: dict
    evaluator: Optional[Callable] = None
    best: Optional[checkpoints.BestCheckpointer] = None
    data_digest: str = ""
    last_metrics: dict = dataclasses.field(default_factory=dict)
    pending_flags: list = dataclasses.field(default_factory=list)  # (step, nonfinite on device)
    skipped_steps: int = 0
    window: tuple = (0.0, 0)  # (time, step) of the last logged step, for img/s

    @property
    def total_steps(self) -> int:
        return self.data.steps_per_epoch * self.config.train.num_epochs

    def close(self) -> None:
        """Closes the bar and log, and waits for the checkpoint writes to finish."""
        self.bar.close()
        for closable in (self.ckpt, self.best, self.log):
            if closable is not None:
                closable.close()


def start_run(config, workdir: str) -> tuple[Run, dict]:
    """Mesh, data, state (fresh or resumed), step function, logs: (run, state)."""
    if config.train.nonfinite not in ("skip", "stop"):
        raise ValueError(f"train.nonfinite is {config.train.nonfinite!r}, expected 'skip' or "
                         f"'stop'")
    mesh = sharding.make_mesh()
    sharding.check_batch_size(config.train.batch_size, mesh)
    train_step.check_microbatching(config.train.microbatches, config.train.batch_size, mesh.size,
                                   config.dataset.max_pairs, config.model.num_queries)
    if config.train.eval_every_epochs > 0:  # fail now rather than after the first epoch
        sharding.check_batch_size(config.eval.batch_size, mesh)
    data = load_train_data(config)
    ckpt = checkpoints.Checkpointer(workdir, config.train.keep_checkpoints)
    try:
        model, tx, schedules, state, digest = initial_state(config, data, ckpt, mesh)
    except Exception:
        ckpt.close()
        raise
    # After the resume checks, so that a refused config is not written over the run's own.
    checkpoints.write_config(workdir, config)
    step = int(jax.device_get(state["step"]))
    main_process = jax.process_index() == 0
    log = run_log.RunLog(workdir, step, enabled=main_process)
    log.start(step, config, mesh)
    logging.info("Train: %d images with interactions, %d steps/epoch, %d epochs, from step %d",
                 data.num_train, data.steps_per_epoch, config.train.num_epochs, step)
    step_fn = train_step.make_train_step(model, tx, matching.build_matcher(config.matcher, mesh),
                                         config.loss, mesh, config.train.microbatches)
    bar = tqdm.tqdm(total=data.steps_per_epoch * config.train.num_epochs, initial=step,
                    unit="step", dynamic_ncols=True, disable=not main_process)
    run = Run(config, mesh, data, step_fn, ckpt, log, bar, schedules, data_digest=digest,
              window=(time.perf_counter(), step))
    if config.train.eval_every_epochs > 0:
        run.evaluator = make_evaluator(model, config, data, mesh)
        run.best = checkpoints.BestCheckpointer(workdir)
    return run, state


def train(config, workdir: str) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    config = required_files.resolve(config)
    run, state = start_run(config, workdir)
    step = int(jax.device_get(state["step"]))
    try:
        while step < run.total_steps:
            epoch, skip = divmod(step, run.data.steps_per_epoch)
            state = train_epoch(run, state, epoch, skip)
            step = (epoch + 1) * run.data.steps_per_epoch
            end_epoch(run, state, epoch)
    finally:  # also on errors: lets the checkpoint writes in flight finish
        run.close()
    logging.info("Done at step %d; last loss %.4f", step,
                 run.last_metrics.get("loss", float("nan")))
    return run.last_metrics


def train_epoch(run: Run, state: dict, epoch: int, skip: int) -> dict:
    """Trains the steps of `epoch` after the first `skip` (already in the restored state)."""
    spe, train_config = run.data.steps_per_epoch, run.config.train
    run.bar.set_description(f"epoch {epoch + 1}/{train_config.num_epochs}")
    # Resuming mid-epoch: the same order, from the first batch not yet trained on.
    for i, batch in enumerate(run.data.batches(run.config, epoch, skip), start=skip):
        image_ids = np.asarray(batch["image_id"])
        run.data_digest = run_log.update_digest(run.data_digest, image_ids)
        state, step_metrics = run.step_fn(state, sharding.put_batch(batch, run.mesh))
        step = epoch * spe + i + 1
        # Read lazily (at log and checkpoint points) so that steps stay asynchronous.
        run.pending_flags.append((step, step_metrics["nonfinite"]))
        run.bar.update(1)
        if step % train_config.log_every_steps == 0 or step == run.total_steps:
            check_nonfinite(run)
            log_step(run, step, epoch, step_metrics, image_ids)
        # The epoch's last step is saved by end_epoch, after the evaluation.
        if step % train_config.checkpoint_every_steps == 0 and i + 1 < spe:
            check_nonfinite(run)
            run.ckpt.save(step, state, run.data.meta(run.config, step, run.data_digest))
    return state


def log_step(run: Run, step: int, epoch: int, step_metrics: dict, image_ids) -> None:
    """Progress bar, metrics.jsonl and TensorBoard for one step (this waits for the step)."""
    metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    metrics["skipped_steps"] = float(run.skipped_steps)
    now = time.perf_counter()
    img_s = (step - run.window[1]) * run.config.train.batch_size / max(now - run.window[0], 1e-9)
    run.window = (now, step)
    # The update of step s (1-based) used the schedule at count s - 1.
    lrs = {g: float(fn(step - 1)) for g, fn in run.schedules.items()}
    lr = lrs.get("default", lrs[sorted(lrs)[0]])
    extra_lrs = {f"lr_{g}": v for g, v in lrs.items() if g != "default"}
    run.log.train(step, epoch, {**metrics, **extra_lrs}, lr, img_s, image_ids, run.data_digest)
    run.bar.set_postfix(
        loss=f"{metrics['loss']:.3f}", hoi=f"{metrics['loss_hoi_labels']:.3f}",
        obj=f"{metrics['loss_obj_ce']:.3f}",
        box=f"{metrics['loss_sub_bbox'] + metrics['loss_obj_bbox']:.3f}",
        giou=f"{metrics['loss_sub_giou'] + metrics['loss_obj_giou']:.3f}",
        lr=f"{lr:.1e}", img_s=f"{img_s:.1f}", refresh=False)
    run.last_metrics = metrics


def end_epoch(run: Run, state: dict, epoch: int) -> None:
    """Evaluation (when due; keeps the best state), then the epoch-end checkpoint."""
    step = (epoch + 1) * run.data.steps_per_epoch
    check_nonfinite(run)
    meta = run.data.meta(run.config, step, run.data_digest)
    if run.evaluator is not None and evaluation_due(run.config, epoch):
        report = run.evaluator(state, step)
        value = report.main[report.main_key]
        run.ckpt.wait()  # one manager writing at a time (see BestCheckpointer.save_if_better)
        better = run.best.save_if_better(step, state, meta,
                                         math.nan if value is None else value)
        run.log.evaluation(step, epoch, flat_metrics(report), better)
        logging.info("Epoch %d test %s (%%), best at step %s:\n%s", epoch + 1, report.protocol,
                     run.best.best()[0], report.table())
    run.ckpt.save(step, state, meta)


def flat_metrics(report) -> dict:
    """The report's rows as one flat dict for the run log: the first row's keys as they are,
    the other rows' (TFE, Known-Object) prefixed by what their names add."""
    first, *others = report.rows
    flat = dict(report.rows[first])
    for name in others:
        prefix = name.removeprefix(first).strip().replace(" ", "_").replace("=", "")
        flat.update({f"{prefix}/{k}": v for k, v in report.rows[name].items()})
    return flat


def check_nonfinite(run: Run) -> None:
    """Logs the steps since the last check whose loss or gradients were not finite (their
    updates were skipped); with `train.nonfinite == 'stop'` raises FloatingPointError naming
    them, before anything else is saved."""
    flags = jax.device_get([flag for _, flag in run.pending_flags])
    bad = [step for (step, _), flag in zip(run.pending_flags, flags) if flag]
    run.pending_flags = []
    if not bad:
        return
    run.skipped_steps += len(bad)
    logging.warning("steps %s: non-finite loss or gradients, update skipped (%d so far)", bad,
                    run.skipped_steps)
    if run.config.train.nonfinite == "stop":
        raise FloatingPointError(f"steps {bad}: non-finite loss or gradients (train.nonfinite="
                                 f"'stop'); the parameters were not updated by them and the "
                                 f"last checkpoint is intact")


def main(argv):
    del argv
    cli.setup_logging()
    cli.initialize_distributed(FLAGS.multihost)
    try:
        train(FLAGS.config, FLAGS.workdir)
    except required_files.MissingFileError as e:
        logging.error("%s", e)
        sys.exit(1)

