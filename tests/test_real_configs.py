"""The real configs start as users run them, on fake folders in the real layout.

`python -m hoiclip_jax.evaluate --config configs/hico.py` with only data paths, the tiny model and
small images overridden on the command line: the tfds data set is built on first use and the
official protocol, TFE and the .mat export run on the test split; and the fake folders
themselves. The training command lines run in tests/test_experiment_configs.py (zero-shot and
V-COCO, which also trains every other experiment's config in process, the 5 % subset file
included) and tests/test_multiprocess.py (the demo config on two processes).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import fake_layout
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_evaluate_cli_official_protocol_tfe_and_mat_export(tmp_path):
    root = fake_layout.write_hico(str(tmp_path / "hico_20160224_det"), num_train=8,
                                  num_test=4, official_mat=True)
    overrides = helpers.smoke_overrides(root, str(tmp_path / "tfds"))
    out, mats = tmp_path / "metrics.json", tmp_path / "mat"
    command = [sys.executable, "-m", "hoiclip_jax.evaluate", "--config",
               os.path.join(REPO, "configs/hico.py"), "--workdir", str(tmp_path / "run"),
               "--untrained", "--protocol", "official", "--tfe_k", "3,7", "--out", str(out),
               "--export_mat", str(mats), *helpers.override_flags(overrides)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(out) as f:
        metrics = json.load(f)
    assert metrics["protocol"] == "official" and metrics["checkpoint"] == "untrained"
    assert list(metrics["rows"]) == [
        f"untrained{tfe} {setting}" for tfe in ("", " TFE k=3", " TFE k=7")
        for setting in ("Default", "Known-Object")]
    assert metrics["mAP"] == metrics["rows"]["untrained Default"]["mAP"]
    assert "2 test images without a pair" in done.stderr  # the .mat's extra images
    predictions = np.load(tmp_path / "metrics_predictions.npz")
    assert len(predictions["file_names"]) == 6
    assert predictions["scores_tfe7"].shape == predictions["scores"].shape
    assert len(os.listdir(mats)) == 80


@pytest.mark.parametrize("write", [fake_layout.write_hico, fake_layout.write_vcoco])
def test_fake_layout_is_deterministic(tmp_path, write):
    a = write(str(tmp_path / "a"), num_train=3, num_test=2, seed=5)
    b = write(str(tmp_path / "b"), num_train=3, num_test=2, seed=5)
    for name in sorted(os.listdir(os.path.join(a, "annotations"))):
        with open(os.path.join(a, "annotations", name), "rb") as fa, \
                open(os.path.join(b, "annotations", name), "rb") as fb:
            assert fa.read() == fb.read(), name
