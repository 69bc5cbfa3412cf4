r"""Trains HOICLIP: `python -m hoiclip_jax.train --config configs/demo.py --workdir runs/demo`.

Reads top to bottom: mesh -> data -> model and optimizer -> state (fresh or restored from the
workdir's latest checkpoint) -> jitted step -> loop. Rerunning the same command after a stop
resumes from the latest checkpoint.
"""
import logging
import os
import time

import jax
import numpy as np
import tqdm
from absl import app, flags

from data_pipeline import class_tables, hico_reader, loader
from hoiclip_jax import checkpoints, cli, matching, sharding, state_io, train_step

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so the module imports cleanly)."""
    cli.define_config_flag()
    cli.define_multihost_flag()
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints, config, metrics.",
                        required=True)


def restore_or_keep(ckpt: checkpoints.Checkpointer, state, mesh):
    """Replaces `state` by the latest checkpoint of the workdir, if there is one."""
    step = ckpt.latest_step()
    if step is None:
        return sharding.put_replicated(state, mesh)
    abstract = checkpoints.abstract_like(state, sharding.replicated(mesh))
    restored, meta = ckpt.restore(step, abstract)
    logging.info("Resumed from %s/%d (epoch %d)", ckpt.directory, step, meta["epoch"])
    return restored


def log_parameter_counts(state) -> None:
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    logging.info("Parameters: %s trainable, %s frozen",
                 f"{count(state['trainable']):,}", f"{count(state['frozen']):,}")


def train(config, workdir: str) -> dict:
    """Runs (or resumes) training; returns the last logged metrics."""
    # ---------------------------------------------------------------- mesh
    mesh = sharding.make_mesh()
    sharding.check_batch_size(config.train.batch_size, mesh)
    logging.info("Mesh: %s over %d devices (%s), %d process(es)", dict(mesh.shape), mesh.size,
                 jax.devices()[0].platform, jax.process_count())
    checkpoints.write_config(workdir, config)

    # ---------------------------------------------------------------- data
    tables = class_tables.load_class_tables(config.dataset)
    ann_dir = os.path.join(config.dataset.root, "annotations")
    records = hico_reader.read_annotations(os.path.join(ann_dir, config.dataset.train_file), tables)
    image_dir = os.path.join(config.dataset.root, "images", config.dataset.train_images)
    num_train = len(loader.training_records(records))
    steps_per_epoch = loader.steps_per_epoch(num_train, config.train.batch_size)
    total_steps = steps_per_epoch * config.train.num_epochs
    logging.info("Train: %d images with interactions, %d steps/epoch, %d epochs",
                 num_train, steps_per_epoch, config.train.num_epochs)

    # ---------------------------------------------------------------- model, state
    model, tx, schedules, state = state_io.build_state(config, tables, steps_per_epoch)
    log_parameter_counts(state)
    ckpt = checkpoints.Checkpointer(workdir, config.train.keep_checkpoints)
    state = restore_or_keep(ckpt, state, mesh)
    matcher = matching.build_matcher(config.matcher, mesh)
    step_fn = train_step.make_train_step(model, tx, matcher, config.loss, mesh)

    # ---------------------------------------------------------------- loop
    step = int(jax.device_get(state["step"]))
    metrics = {}
    bar = tqdm.tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                    disable=jax.process_index() != 0)
    lr_fn = schedules[sorted(schedules)[0]]
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        batches = loader.train_batches(
            records, tables, config.dataset, image_dir, global_batch_size=config.train.batch_size,
            seed=config.seed, epoch=epoch, process_index=jax.process_index(),
            process_count=jax.process_count())
        tic, done_in_epoch = time.perf_counter(), 0
        for i, batch in enumerate(batches):
            if i < skip:  # resuming mid-epoch: same order, so skip what was already trained on
                continue
            state, step_metrics = step_fn(state, sharding.put_batch(batch, mesh))
            step, done_in_epoch = step + 1, done_in_epoch + 1
            bar.update(1)
            if step % config.train.log_every_steps == 0 or step == total_steps:
                metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                check_finite(metrics, step)
                ips = done_in_epoch * config.train.batch_size / (time.perf_counter() - tic)
                bar.set_postfix(epoch=epoch, loss=f"{metrics['loss']:.3f}",
                                lr=f"{float(lr_fn(step)):.1e}", img_s=f"{ips:.1f}")
            if step % config.train.checkpoint_every_steps == 0:
                ckpt.save(step, state, {"epoch": epoch, "step": step})
        if ckpt.latest_step() != step:  # epoch end, unless the periodic save just took it
            ckpt.save(step, state, {"epoch": epoch + 1, "step": step})
    bar.close()
    ckpt.close()
    logging.info("Done at step %d; last loss %.4f", step, metrics.get("loss", float("nan")))
    return metrics


def check_finite(metrics: dict, step: int) -> None:
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:
        raise FloatingPointError(f"step {step}: non-finite {bad}; the last checkpoint is intact")


def main(argv):
    del argv
    cli.setup_logging()
    cli.initialize_distributed(FLAGS.multihost)
    train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
