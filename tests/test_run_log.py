"""metrics.jsonl and TensorBoard events of a run (hoiclip_jax/lib/run_log.py), read back."""
import glob
import json
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from hoiclip_jax.lib import run_log, sharding
from tests import helpers

EVAL = {"mAP": 0.25, "mAP_rare": None, "mAP_non_rare": 0.5, "mean_max_recall": 0.75}


def read_events(path: str) -> list:
    """Parses a TensorBoard event file: TFRecord framing (length, masked CRC32C of the length,
    data, masked CRC32C of the data) around serialised `Event` protos."""
    with open(path, "rb") as f:
        data = f.read()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack(
            "<I", data[pos + 8:pos + 12])
        assert header_crc == masked_crc32c(header), f"{path}: bad length CRC at {pos}"
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert body_crc == masked_crc32c(body), f"{path}: bad data CRC at {pos}"
        events.append(event_pb2.Event.FromString(body))
        pos += 16 + length
    return events


def scalars(workdir: str) -> dict:
    """{(tag, step): value} over every event file of the run, in file order."""
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, run_log.TENSORBOARD_DIR, "events.*"))):
        for event in read_events(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out[(value.tag, event.step)] = value.simple_value
    return out


def log_steps(log: run_log.RunLog, steps, digest: str = "") -> str:
    for step in steps:
        ids = np.array([step, step + 10])
        digest = run_log.update_digest(digest, ids)
        log.train(step, epoch=0, metrics={"loss": 1.0 / step, "loss_obj_ce": float("nan")},
                  lr=1e-3, img_s=5.0, image_ids=ids, data_digest=digest)
    return digest


@pytest.fixture()
def config(tmp_path):
    return helpers.tiny_config(helpers.write_tiny_table(str(tmp_path)))


def test_jsonl_lines_and_tensorboard_events(tmp_path, config):
    workdir = str(tmp_path / "run")
    log = run_log.RunLog(workdir, resume_step=0, enabled=True)
    log.start(0, config, sharding.make_mesh())
    digest = log_steps(log, [1, 2])
    log.evaluation(2, 0, EVAL, best=True)
    log.close()

    start, first, second, evaluation = run_log.read(workdir)
    assert start["kind"] == "start" and start["resumed"] is False
    assert start["config"]["model"]["hidden_dim"] == config.model.hidden_dim
    assert start["mesh"]["axes"] == {"data": 4} and len(start["mesh"]["devices"]) == 4
    assert start["mesh"]["platform"] == "cpu" and start["mesh"]["process_count"] == 1
    assert (first["kind"], first["step"], first["epoch"]) == ("train", 1, 0)
    assert first["loss"] == 1.0 and first["loss_obj_ce"] is None  # NaN: null, strict JSON
    assert first["lr"] == 1e-3 and first["img_s"] == 5.0 and first["image_ids"] == [1, 11]
    assert second["data_digest"] == digest != first["data_digest"]
    assert {k: evaluation[k] for k in EVAL} == EVAL and evaluation["best"] is True
    assert all(isinstance(e["time"], float) for e in (start, first, evaluation))

    values = scalars(workdir)
    assert values[("train/loss", 1)] == 1.0 and values[("train/loss", 2)] == 0.5
    assert values[("train/lr", 2)] == pytest.approx(1e-3)
    assert values[("eval/mAP", 2)] == 0.25 and ("eval/mAP_rare", 2) not in values
    assert not any(tag == "train/loss_obj_ce" for tag, _ in values)


def test_resume_drops_what_the_killed_run_wrote_after_its_checkpoint(tmp_path, config):
    workdir = str(tmp_path / "run")
    log = run_log.RunLog(workdir, resume_step=0, enabled=True)
    log.start(0, config, sharding.make_mesh())
    log_steps(log, [1, 2, 3, 4, 5])
    log.evaluation(3, 0, EVAL, best=True)
    log.evaluation(5, 1, EVAL, best=False)
    log.close()
    with open(os.path.join(workdir, run_log.METRICS_FILE), "a") as f:
        f.write('{"kind": "train", "step": 6, "los')  # cut short by SIGKILL

    log = run_log.RunLog(workdir, resume_step=3, enabled=True)  # the checkpoint was at step 3
    log.start(3, config, sharding.make_mesh())
    log_steps(log, [4, 5])
    log.close()
    entries = run_log.read(workdir)
    assert [(e["kind"], e["step"]) for e in entries] == [
        ("start", 0), ("train", 1), ("train", 2), ("train", 3), ("eval", 3), ("start", 3),
        ("train", 4), ("train", 5)]
    assert entries[5]["resumed"] is True
    # The resumed writer purges the TensorBoard events of steps after 3 (SessionLog START).
    purges = [e.step for path in glob.glob(os.path.join(workdir, "tensorboard", "events.*"))
              for e in read_events(path) if e.HasField("session_log")]
    assert sorted(purges) == [1, 4]


def test_other_processes_write_nothing(tmp_path, config):
    workdir = str(tmp_path / "run")
    log = run_log.RunLog(workdir, resume_step=0, enabled=False)
    log.start(0, config, sharding.make_mesh())
    log_steps(log, [1])
    log.evaluation(1, 0, EVAL, best=True)
    log.close()
    assert not os.path.exists(workdir)


def test_data_digest_depends_on_order_and_content():
    a = run_log.update_digest(run_log.update_digest("", np.array([1, 2])), np.array([3, 4]))
    b = run_log.update_digest(run_log.update_digest("", np.array([3, 4])), np.array([1, 2]))
    c = run_log.update_digest(run_log.update_digest("", np.array([1, 2])), np.array([3, 4]))
    assert a == c and a != b and len(a) == 16
    assert run_log.update_digest("", np.array([1, 2], np.int32)) == run_log.update_digest(
        "", np.array([1, 2], np.int64))


def test_jsonl_is_strict_json(tmp_path, config):
    workdir = str(tmp_path / "run")
    log = run_log.RunLog(workdir, resume_step=0, enabled=True)
    log_steps(log, [1])
    log.close()
    with open(os.path.join(workdir, run_log.METRICS_FILE)) as f:
        for line in f:
            json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
