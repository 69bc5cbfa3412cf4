"""Two `python -m hoiclip_jax.train` processes joined by `jax.distributed` over localhost, one
simulated CPU device each, train exactly like one process with two devices.

Both runs start at once (3 processes): the run with one process and the two processes of the
other each train the demo config, shrunk like tests/helpers.py:tiny_config, for one epoch of a
tiny synthetic set, and write their checkpoints; the test then restores both and compares.
"""
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from data_pipeline import class_tables
from data_pipeline.synthetic import generate as synthetic
from hoiclip_jax.lib import cli, run_log, sharding
from hoiclip_jax.train import state as state_io
from tests import helpers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, BATCH = 12, 4  # 11 images with interactions: 2 steps of 4
TIMEOUT_S = 480  # per run; a quiet 2-core machine needs ~1 minute for all three processes
# Compile time dominates these runs; the unoptimised CPU back end halves it. Both runs use it.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def overrides(data_root: str) -> dict:
    """`--config.<key>=<value>` overrides of configs/demo.py: the tiny model of
    tests/helpers.py:tiny_config with one decoder layer, the synthetic set at `data_root`, one
    epoch of 2 steps with a checkpoint after each."""
    tiny = helpers.tiny_config(os.path.join(data_root, "annotations", "classes.json"))
    m = tiny.model
    return {
        "dataset.root": data_root, "dataset.class_table": tiny.dataset.class_table,
        "dataset.clip_image_size": tiny.dataset.clip_image_size, "dataset.max_pairs": 8,
        "model.backbone.stage_sizes": m.backbone.stage_sizes,
        "model.backbone.width": m.backbone.width,
        **{f"model.{k}": m[k] for k in ("hidden_dim", "enc_layers", "dim_feedforward",
                                         "num_queries", "inter_dim_feedforward")},
        "model.dec_layers": m.dec_layers, "model.inter_dec_layers": m.inter_dec_layers,
        **{f"model.clip.{k}": m.clip[k] for k in ("embed_dim", "image_size", "vision_width",
                                                  "vision_layers", "vision_mlp_dim", "text_width",
                                                  "text_layers", "text_mlp_dim", "vocab_size")},
        "train.batch_size": BATCH, "train.num_epochs": 1, "train.log_every_steps": 1,
        "train.checkpoint_every_steps": 1, "train.keep_checkpoints": 2,
        "optim.warmup_steps": 0,  # 2 steps must visibly train
        # Evaluation at the end of the epoch, sharded over the processes too.
        "train.eval_every_epochs": 1, "eval.batch_size": BATCH,
    }


def flag_value(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ",)"
    return str(value)


def train_command(config_overrides: dict, workdir: str, multihost: bool) -> list[str]:
    return ([sys.executable, "-m", "hoiclip_jax.train", "--config", "configs/demo.py",
             f"--workdir={workdir}", f"--multihost={multihost}"]
            + [f"--config.{k}={flag_value(v)}" for k, v in config_overrides.items()])


def process_env(num_devices: int, **extra: str) -> dict:
    """The environment of a training process with `num_devices` simulated CPU devices."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "HOICLIP_", "XLA_"))}  # conftest sets 4 devices
    return dict(env, JAX_PLATFORMS="cpu", **extra, XLA_FLAGS=(
        f"--xla_force_host_platform_device_count={num_devices} {FAST_COMPILE}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(name: str, command: list[str], env: dict, log_dir: str) -> tuple:
    log_path = os.path.join(log_dir, f"{name}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    return name, proc, log, log_path


def wait_all(runs: list[tuple], timeout_s: float) -> dict:
    """Waits for every process; on a failure or timeout kills the others and fails with the
    tail of every log. Returns {name: log text}."""
    deadline, failed = time.monotonic() + timeout_s, None
    while failed is None and any(proc.poll() is None for _, proc, _, _ in runs):
        failed = next((name for name, proc, _, _ in runs if proc.poll() not in (None, 0)), None)
        if time.monotonic() > deadline:
            failed = f"timeout after {timeout_s:.0f} s"
        time.sleep(0.5)
    for _, proc, log, _ in runs:
        if proc.poll() is None:
            proc.kill()  # a peer of a dead process would wait for it until its heartbeat fails
        proc.wait()
        log.close()
    logs = {name: open(path).read() for name, _, _, path in runs}
    failed = failed or next((name for name, proc, _, _ in runs if proc.returncode), None)
    assert failed is None, f"{failed} failed:\n" + "\n".join(
        f"===== {name} (exit {proc.returncode}) =====\n{logs[name][-4000:]}"
        for name, proc, _, _ in runs)
    return logs


def test_two_processes_match_one_process_with_two_devices(tmp_path):
    data_root = str(tmp_path / "data")
    synthetic.generate(data_root, seed=3, num_train=NUM_TRAIN, num_test=2)
    config_overrides = overrides(data_root)
    one, two = str(tmp_path / "one_process"), str(tmp_path / "two_processes")
    coordinator = f"localhost:{free_port()}"
    runs = [start("one process, 2 devices", train_command(config_overrides, one, False),
                  process_env(2), str(tmp_path))]
    for i in range(2):
        env = process_env(1, JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2",
                          JAX_PROCESS_ID=str(i))
        runs.append(start(f"process {i}", train_command(config_overrides, two, True), env,
                          str(tmp_path)))
    logs = wait_all(runs, TIMEOUT_S)
    # The processes really formed one 2-device run (two independent 1-device runs of the same
    # global batch would train the same parameters).
    for i in range(2):
        assert f"process {i} of 2, 1 local / 2 global devices" in logs[f"process {i}"]

    config = helpers.tiny_config(config_overrides["dataset.class_table"])
    for key, value in config_overrides.items():
        *sections, field = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[field] = value
    tables = class_tables.load_class_tables(config.dataset)
    mesh = sharding.make_mesh(jax.devices()[:1])
    restore = lambda workdir, step: state_io.restore_params(
        workdir, config, tables, sharding.replicated(mesh), step)[1]
    for step in (1, 2):  # a checkpoint after every step
        params_one, params_two = restore(one, step), restore(two, step)
        assert jax.tree.structure(params_one) == jax.tree.structure(params_two)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params_one),
                                jax.tree.leaves(params_two)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0,
                                       err_msg=f"step {step} {jax.tree_util.keystr(path)}")
    # Both runs evaluated the same test images to the same numbers.
    evals = [run_log.read(workdir, "eval") for workdir in (one, two)]
    assert len(evals[0]) == 1 and evals[0][0]["mAP"] is not None
    assert evals[0][0]["mAP"] == pytest.approx(evals[1][0]["mAP"], abs=1e-6)
    # The runs trained: the second step changed the parameters.
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(restore(one, 1)), jax.tree.leaves(params_one)))
    assert moved > 1e-4, "the runs did not train"


def test_distributed_args_from_environment(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    # Nothing set: all None, so that jax's cluster detection (SLURM, Open MPI, ...) fills them.
    assert cli.distributed_args() == {"coordinator_address": None, "num_processes": None,
                                      "process_id": None}
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node0:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert cli.distributed_args() == {"coordinator_address": "node0:1234", "num_processes": 4,
                                      "process_id": 3}
    monkeypatch.setenv("JAX_PROCESS_ID", "three")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='three' is not an integer"):
        cli.distributed_args()
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(ValueError, match="both JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        cli.distributed_args()
