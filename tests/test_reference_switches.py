"""Config switches for reference quirks (§1.4, §1.6) and for loading pretrained weights."""
import copy
import os

import flax.serialization
import flax.traverse_util as traverse_util
import jax
import numpy as np
import pytest

from configs import vcoco
from data_pipeline import class_tables
from hoiclip_jax.train import optim, state as state_io
from hoiclip_jax.models import hoiclip
from tests import helpers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, tables) of the tiny test model on a small synthetic class table."""
    table = helpers.write_tiny_table(str(tmp_path_factory.mktemp("table")))
    config = helpers.tiny_config(table)
    return config, class_tables.load_class_tables(config.dataset)


@pytest.fixture(scope="module")
def reference_params(tiny):
    config, tables = tiny
    return state_io.initial_params(config, tables)[1]


def test_vcoco_verb2hoi_bug_puts_verbs_on_object_columns():
    config = vcoco.get_config()
    tables = class_tables.load_class_tables(config.dataset)
    intended = hoiclip.verb2hoi_entries(tables, vcoco_bug=False)
    buggy = hoiclip.verb2hoi_entries(tables, vcoco_bug=True)
    # Intended: exactly one verb per HOI column, the HOI's own verb.
    assert sorted(c for _, c in intended) == list(range(tables.num_hois))
    assert all(tables.hoi_to_verb[c] == v for v, c in intended)
    # Bug: the column is the object index, so only the first O + 1 = 81 columns get any.
    columns = {c for _, c in buggy}
    assert max(columns) <= tables.num_objects - 1 < tables.num_hois - 1
    assert set(buggy) == {(int(v), int(o)) for v, o in zip(tables.hoi_to_verb, tables.hoi_to_obj)}
    config.model.vcoco_verb2hoi_bug = True
    assert hoiclip.build_model(config.model, tables).verb2hoi_entries == buggy


def test_vcoco_verb2hoi_bug_refused_for_other_tables(tiny):
    config, tables = tiny
    model_config = copy.deepcopy(config.model)
    model_config.vcoco_verb2hoi_bug = True
    with pytest.raises(ValueError, match="vcoco_verb2hoi_bug"):
        hoiclip.build_model(model_config, tables)


def test_verb2hoi_matrix_reaches_the_hoi_logits(tiny, reference_params):
    """Moving one verb's cell moves that verb's logit contribution to another HOI column."""
    config, tables = tiny
    model = hoiclip.build_model(config.model, tables)
    entries = list(model.verb2hoi_entries)
    v, k = entries[0]
    other = next(c for c in range(tables.num_hois) if (v, c) not in entries)
    moved = model.clone(verb2hoi_entries=tuple(sorted([(v, other)] + entries[1:])))
    o_inter = np.random.default_rng(0).normal(
            size=(1, 1, 2, config.model.clip.vision_width)).astype(np.float32)
    logits = lambda m: np.asarray(m.apply({"params": reference_params}, o_inter,
                                          method=hoiclip.HOICLIP.hoi_logits))
    diff = logits(moved) - logits(model)
    changed = np.flatnonzero(np.abs(diff).max(axis=(0, 1, 2)) > 1e-6)
    assert set(changed) == {k, other}
    np.testing.assert_allclose(diff[..., k], -diff[..., other], rtol=1e-5)


def test_classifier_random_bias_switch(tiny, reference_params):
    config, tables = tiny
    zero_config = copy.deepcopy(config)
    zero_config.model.classifier_random_bias = False
    _, params = state_io.initial_params(zero_config, tables)
    for name in ("hoi_visual_projection", "obj_visual_projection"):
        assert np.abs(reference_params[name]["bias"]).max() > 0  # PyTorch's random init
        assert not np.asarray(params[name]["bias"]).any()
        # The text-derived kernels are the same either way.
        np.testing.assert_array_equal(params[name]["kernel"], reference_params[name]["kernel"])


def test_train_verb_features_switch(tiny, reference_params):
    config, _ = tiny

    def group_of_e_v(train_verb_features):
        c = copy.deepcopy(config)
        c.model.train_verb_features = train_verb_features
        labels = optim.label_params(reference_params, optim.parameter_groups(c))
        return labels["verb_projection"]["kernel"]
    assert group_of_e_v(True) == "default"  # trainable, as in the reference code
    assert group_of_e_v(False) == optim.FROZEN


def test_pretrained_file_is_loaded_over_the_initial_params(tiny, reference_params, tmp_path):
    config, tables = tiny
    queries = np.asarray(reference_params["query_embed_h"]["embedding"])
    path = os.path.join(tmp_path, "params.msgpack")
    with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(
                {"query_embed_h": {"embedding": queries + 1.0}}))
    loaded_config = copy.deepcopy(config)
    loaded_config.model.pretrained = path
    _, params = state_io.initial_params(loaded_config, tables)
    np.testing.assert_allclose(params["query_embed_h"]["embedding"], queries + 1.0)
    flat = traverse_util.flatten_dict(params, sep="/")
    reference = traverse_util.flatten_dict(reference_params, sep="/")
    untouched = [k for k in reference if k != "query_embed_h/embedding"]
    jax.tree.map(np.testing.assert_array_equal, [flat[k] for k in untouched],
                 [reference[k] for k in untouched])
    loaded_config.model.pretrained = os.path.join(tmp_path, "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        state_io.initial_params(loaded_config, tables)
