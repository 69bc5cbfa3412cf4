"""Robustness of the command line (README "What happens when…", case 10): an unknown config key or a value
of the wrong type stops the real entry point while it parses its flags, with a one-line message,
before anything is written to the workdir."""
import os
import subprocess
import sys

import ml_collections as mlc
import pytest

from configs import demo
from hoiclip_jax.lib import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args: list[str], module: str = "hoiclip_jax.train") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("override, message", [
    ("--config.train.bogus=1",
     "--config.train.bogus: unknown config key 'bogus'; config.train has batch_size, "),
    ("--config.dataset.canvas=(64,'a')",
     "--config.dataset.canvas: expected int (like 64), got 'a' (str)"),
])
def test_train_entry_point_fails_before_any_work(tmp_path, override, message):
    workdir = tmp_path / "run"
    out = run(["--config", "configs/demo.py", "--workdir", str(workdir), override])
    assert out.returncode == 1, out.stderr[-2000:]
    assert "FATAL Flags parsing error" in out.stderr and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not workdir.exists()  # nothing written


def test_a_missing_required_file_stops_naming_it_and_its_command(tmp_path):
    """The paper's E_v is the hico config's default: without its file the run stops before any
    work, naming the file and the command that makes it; the stand-in needs the flag."""
    workdir = tmp_path / "run"
    for module in ("hoiclip_jax.train", "hoiclip_jax.evaluate"):
        out = run(["--config", "configs/hico.py", "--workdir", str(workdir),
                   "--config.model.verb_features=" + str(tmp_path / "hico_original.npy")],
                  module)
        assert out.returncode == 1, out.stderr[-2000:]
        assert "Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"E_v file {tmp_path / 'hico_original.npy'}" in out.stderr
        assert "python -m hoiclip_jax.tools.verb_features" in out.stderr
        assert "--config.allow_stand_ins=True" in out.stderr
        assert not workdir.exists()


def test_a_missing_config_is_named_and_predict_checks_its_overrides(tmp_path):
    for module in ("hoiclip_jax.train", "hoiclip_jax.evaluate"):
        out = run(["--workdir", str(tmp_path / "run")], module)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert "FATAL Flags parsing error: --config is required" in out.stderr, out.stderr
    # predict takes --config optionally, with the same override checks.
    out = run(["--workdir", str(tmp_path / "run"), "--config", "configs/demo.py",
               "--config.eval.bogus=1", "--image", "a.jpg"], "hoiclip_jax.predict")
    assert out.returncode == 1 and "unknown config key 'bogus'" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


# A stand-in entry point with the same config flag that prints the config it got: valid
# overrides pass and are applied (run as a script, it costs no jax import).
PRINT_CONFIG = """
from absl import app
from hoiclip_jax.lib import cli
holder = cli.define_config_flag()
app.run(lambda argv: print(holder.value.dataset.canvas, holder.value.optim.lr,
                           holder.value.dataset.buckets, holder.value.train.num_epochs))
"""


def test_valid_overrides_pass_and_are_applied():
    out = subprocess.run(
        [sys.executable, "-c", PRINT_CONFIG, "--config", "configs/demo.py",
         "--config.dataset.canvas=(96,96)", "--config.optim.lr=1", "--config.train.num_epochs=3",
         "--config.dataset.buckets=((64,96),(96,64))"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "(96, 96) 1.0 ((64, 96), (96, 64)) 3"


def test_unknown_paths_name_the_section_and_the_closest_key():
    config = demo.get_config()
    cli.check_override_path(config, "model.clip.embed_dim")  # exists: no error
    with pytest.raises(ValueError, match=r"--config.trian.batch_size: unknown config key 'trian'"
                                         r"; config has allow_stand_ins, dataset, .*"
                                         r"Did you mean 'train'\?"):
        cli.check_override_path(config, "trian.batch_size")
    with pytest.raises(ValueError, match=r"unknown config key 'embed_dims'; config.model.clip "
                                         r"has .*Did you mean 'embed_dim'\?"):
        cli.check_override_path(config, "model.clip.embed_dims")
    with pytest.raises(ValueError, match="config.seed is a value, not a section"):
        cli.check_override_path(config, "seed.value")
    argv = ["prog", "--config", "c.py", "--config.a.b=1", "-config.c", "2", "--noconfig.d",
            "--workdir=x"]
    assert cli.override_paths(argv) == ["a.b", "c", "d"]


@pytest.mark.parametrize("default, value, problem", [
    (16, 16, None),
    (1e-3, 1, None),                                   # an int where a float goes
    (16, True, "expected int"),
    ("light", 3, "expected str"),
    (True, 1, "expected bool"),
    ((1333, 1333), (64, 64), None),
    ((1333, 1333), (64, "a"), "expected int (like 1333), got 'a'"),
    ((480, 512), (64,), None),                         # lengths of plain tuples vary
    (((800, 1088), (1088, 800)), ((64, 96),), None),
    (((800, 1088), (1088, 800)), ((64,),), "entry (64,) should have 2 values"),
    (((r"clip/.*", "frozen"),), ((r".*", 1),), "expected str"),
    ((), (1, "x"), None),                              # an empty default takes anything
    (None, "anything", None),
])
def test_override_type_errors(default, value, problem):
    got = cli.override_type_error(default, value)
    if problem is None:
        assert got is None
    else:
        assert problem in got


def test_section_overrides_are_accepted():
    assert cli.override_type_error(mlc.ConfigDict({"default": 1.0}), {"default": 2.0}) is None


def test_config_of_an_older_run_gets_the_added_fields(tmp_path):
    """A config.json written before the fields of `checkpoints.ADDED_FIELDS` existed reads back
    with the values that reproduce that run (and a log line)."""
    import json

    from configs import demo
    from hoiclip_jax.lib import checkpoints
    config = demo.get_config()
    old = json.loads(config.to_json_best_effort())
    for dotted in checkpoints.ADDED_FIELDS:
        *section, field = dotted.split(".")
        del (old[section[0]] if section else old)[field]
    (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps(old))
    read = checkpoints.read_config(str(tmp_path))
    for dotted, value in checkpoints.ADDED_FIELDS.items():
        *section, field = dotted.split(".")
        assert (read[section[0]] if section else read)[field] == value, dotted
    assert {"model.remat", "train.microbatches", "matcher.backend",
            "model.mask_padded_memory", "allow_stand_ins"} <= set(checkpoints.ADDED_FIELDS)