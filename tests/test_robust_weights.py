"""Robustness of the pretrained-weights import (README "What happens when…", case 9): a weights file with
wrong shapes, or of a different model, is an error that lists every mismatched name (with both
shapes), not just the first one, and nothing is loaded."""
import types

import flax.serialization
import numpy as np
import pytest

from hoiclip_jax.weights import pretrained
from hoiclip_jax.weights import mapping

TARGET = {"encoder/layer0/linear1/kernel": ((4, 8), np.dtype(np.float32)),
          "encoder/layer0/linear1/bias": ((8,), np.dtype(np.float32)),
          "encoder/layer1/linear1/kernel": ((4, 8), np.dtype(np.float32)),
          "class_embed/kernel": ((4, 81), np.dtype(np.float32))}
RULES = [mapping.Rule(r"transformer\.encoder\.layers\.(\d+)\.linear1", "encoder/layer{0}/linear1",
                      "linear"),
         mapping.Rule(r"class_embed", "class_embed", "linear")]


def test_convert_lists_every_shape_mismatch():
    state = {"transformer.encoder.layers.0.linear1.weight": np.zeros((8, 4)),  # fits
             "transformer.encoder.layers.0.linear1.bias": np.zeros(16),        # wrong
             "transformer.encoder.layers.1.linear1.weight": np.zeros((8, 5)),  # wrong
             "class_embed.weight": np.zeros((82, 4))}                          # V-COCO-sized
    with pytest.raises(ValueError) as error:
        mapping.convert(state, RULES, [], TARGET)
    message = str(error.value)
    assert message.startswith("3 checkpoint tensors do not fit this model")
    for key, ours, theirs, needed in (
            ("transformer.encoder.layers.0.linear1.bias", "encoder/layer0/linear1/bias", "(16,)",
             "(8,)"),
            ("transformer.encoder.layers.1.linear1.weight", "encoder/layer1/linear1/kernel",
             "(8, 5)", "(4, 8)"),
            ("class_embed.weight", "class_embed/kernel", "(82, 4)", "(4, 81)")):
        assert (f"checkpoint key {key} has shape {theirs}" in message
                and f"our param {ours} has shape {needed}" in message), key
    # With the shapes right, the same state dict converts.
    state.update({"transformer.encoder.layers.0.linear1.bias": np.zeros(8),
                  "transformer.encoder.layers.1.linear1.weight": np.zeros((8, 4)),
                  "class_embed.weight": np.zeros((81, 4))})
    flat, report = mapping.convert(state, RULES, [], TARGET)
    assert sorted(flat) == sorted(TARGET) and report.left_at_init == []


def test_params_file_of_another_model_lists_names_and_loads_nothing(tmp_path):
    params = {"encoder": {"layer0": {"kernel": np.ones((4, 8), np.float32)}},
              "class_embed": {"kernel": np.ones((4, 81), np.float32)}}
    other = {"encoder": {"layer0": {"kernel": np.zeros((4, 8), np.float32)},
                         "layer5": {"kernel": np.zeros((4, 8), np.float32)}},
             "class_embed": {"kernel": np.zeros((4, 30), np.float32)},
             "verb_head": {"bias": np.zeros(117, np.float32)}}
    path = tmp_path / "other.msgpack"
    path.write_bytes(flax.serialization.msgpack_serialize(other))
    config = types.SimpleNamespace(model=types.SimpleNamespace(num_queries=4))
    with pytest.raises(ValueError) as error:
        pretrained.load_pretrained(str(path), params, config, tables=None)
    message = str(error.value)
    assert "imported params do not fit this model" in message
    assert "not in the model (2): encoder/layer5/kernel, verb_head/bias" in message
    assert "shapes differ (1): class_embed/kernel: imported (4, 30), model (4, 81)" in message
    assert (params["encoder"]["layer0"]["kernel"] == 1).all()  # nothing was loaded


def test_long_lists_are_cut_with_a_count():
    params = {f"p{i}": np.zeros(1) for i in range(3)}
    flat = {f"q{i:02d}": np.zeros(1) for i in range(25)}
    with pytest.raises(ValueError, match=r"not in the model \(25\): q00, .*q19, \.\.\. 5 more"):
        mapping.merge(params, flat)


def test_state_dict_of_an_unknown_model_names_its_keys():
    state = {"fc.weight": np.zeros((10, 4)), "conv1.weight": np.zeros((3, 3, 1, 1))}
    with pytest.raises(ValueError, match=r"neither a DETR .* nor a HOICLIP .* first keys: "
                                         r"\['fc.weight', 'conv1.weight'\]"):
        pretrained.checkpoint_kind(state)
