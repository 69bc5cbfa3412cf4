"""benchmarks/train_step.py: its measurement runs the trainer's step and reports sane numbers.

The step is the trainer's (matcher, set losses, AdamW, the non-finite guard) around a linear
stand-in for HOICLIP, which compiles in about a second (the tiny HOICLIP step took 16 s alone,
about 60 s beside the other test worker): what is tested here is the measuring, not the model.
"""
import jax
import numpy as np
import optax

from benchmarks import train_step as bench
from data_pipeline import class_tables
from hoiclip_jax.train import matching
from tests import helpers


def stand_in_state(config, tables):
    """(model, tx, step-0 state) of `helpers.LinearStandIn`, with a frozen part as HOICLIP's."""
    model = helpers.LinearStandIn(2, 4, tables.num_hois, tables.num_objects)
    tx = optax.adamw(1e-3)
    return model, tx, model.initial_state(tx, {"frozen_scale": np.ones(3, np.float32)},
                                          config.seed)


def test_measure_reports_sane_fields(tmp_path):
    config = helpers.tiny_config(helpers.write_tiny_table(str(tmp_path)))
    config.model.clip.weights = "params/missing-clip"  # cleared, with a note
    notes = bench.clear_weight_files(config)
    assert config.model.clip.weights == "" and len(notes) == 1 and "random init" in notes[0]
    bench.set_image_size(config, (48, 64))
    tables = class_tables.load_class_tables(config.dataset)
    batch = bench.random_batch(config, tables, batch_size=2)
    assert batch["image"].shape == (2, 48, 64, 3) and batch["pair_mask"].any(axis=1).all()

    result = bench.measure(config, batch_size=2, steps=2, warmup=1, devices=jax.devices()[:2],
                           build=stand_in_state,
                           compiler_options={"xla_backend_optimization_level": 0})
    assert matching._host_timer is None  # the hook is removed after measuring
    assert (result.backend, result.num_devices, result.batch_size) == ("cpu", 2, 2)
    assert result.image_size == (48, 64) and result.dtype == "float32"
    assert len(result.step_times_s) == len(result.matcher_times_s) == 2
    assert result.compile_s > 0 and result.init_s > 0 and min(result.step_times_s) > 0
    assert result.step_p10_s <= result.step_median_s <= result.step_p90_s
    np.testing.assert_allclose(result.images_per_s, 2 / result.step_median_s)
    # One host callback per device and step; the matcher is a real but small part of the step.
    assert result.callbacks_per_step == 2
    assert all(0 < m < s for m, s in zip(result.matcher_times_s, result.step_times_s))
    assert 0 < result.matcher_share < 1
    assert result.peak_memory_bytes > 2 ** 20 and result.memory_source == "host peak RSS"
    assert 0 < result.trainable_params < result.total_params
    row = bench.table_row("tiny", result)
    assert len(row) == len(bench.COLUMNS) and row[5] == "48x64"
    assert bench.format_table([row]).count("\n") == 2


def test_union_of_callback_intervals():
    # Two devices' callbacks overlapping, one outside the step window.
    assert bench._union_seconds([(1.0, 3.0), (2.0, 4.0), (9.0, 10.0)], 0.0, 5.0) == 3.0
    assert bench._union_seconds([], 0.0, 1.0) == 0.0
