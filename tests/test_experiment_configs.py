"""Every experiment of the paper and of the reproduction report is one config away (issue 9).

Each config file and variant of README "Experiments" is built as `--config <file>:<arg>` gives
it, shrunk by overrides (the tiny model of `helpers.smoke_overrides`, one decoder layer, one
backbone stage) and pointed at a fake HICO-Det / V-COCO folder in the real layout; it trains
two steps and evaluates once on the test split. Most run in process (`EXPERIMENTS`), where
the fake folders and their tfds builds are shared, configs with equal parameters share one
initialisation, equal models share one compiled step and inference, and XLA compiles at
optimisation level 0. Two run as users run them, `python -m hoiclip_jax.train --config ...`
(`COMMAND_LINES`, among them the zero-shot command of the issue), on a background thread that
starts first, so that they compile on the second core meanwhile.

Zero-shot: the classifier widths are checked per setting on the HOI head (K_train = 480 / 480 /
500 / 516 seen columns in training, ascending; all 600 in evaluation, without the bias); the
training steps only run if the model's training logits have the K_train columns of the labels
the step cuts, and the evaluation predicts unseen classes.
"""
import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import class_tables, hoi_tfds, sources, splits
from tests import fake_layout
from hoiclip_jax.eval import evaluator as evaluation
from hoiclip_jax.train import matching, optim, state as state_io, main as train_lib, step as train_step
from hoiclip_jax.lib import sharding
from hoiclip_jax.models import hoiclip
from hoiclip_jax.lib.config_files import load_config
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# On top of `helpers.smoke_overrides`: compile time grows with the layers.
SHRINK = {"model.backbone.stage_sizes": (1,)}
SEEN = {"rare_first": 480, "non_rare_first": 480, "unseen_object": 500, "unseen_verb": 516}
PUBLISHED = {"hico.py": "34.69", "hico_frac.py": "22.64", "hico5p.py": "22.64",
             "hico_zs.py": "25.53", "vcoco.py": "63.50"}

# (config file, `:arg`) of README "Experiments" run in process. The report's two variants
# are combined in one zero-shot case (test_variants_combine shows that each changes only its
# field).
EXPERIMENTS = [
    ("hico.py", ""),
    *[("hico_frac.py", f"frac={p}") for p in (5, 15, 25, 50)],
    ("hico5p.py", ""),
    ("hico_zs.py", "setting=rare_first"),
    ("hico_zs.py", "setting=non_rare_first,q_inter=mix2x2,verb_features=seed"),
    ("hico_zs.py", "setting=unseen_object"),
]
# The others run through the training command line (`CommandLines`).
# {(config file, `:arg`): overrides on top of the shared ones}: V-COCO evaluates with TFE too.
COMMAND_LINES = {("hico_zs.py", "setting=unseen_verb"): {}, ("vcoco.py", ""): {"eval.tfe_k": (5,)}}


# ----------------------------------------------------------------------------- config files

def config_of(name: str, arg: str = ""):
    return load_config(os.path.join(REPO, "configs", name) + (f":{arg}" if arg else ""))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_config_documents_command_and_published_number(name):
    with open(os.path.join(REPO, "configs", name)) as f:
        doc = f.read().split('"""')[1]
    assert f"python -m hoiclip_jax.train --config configs/{name}" in doc
    assert "Published" in doc and PUBLISHED[name] in doc


def test_arguments_select_the_experiment():
    assert config_of("hico.py").dataset.train_file == "trainval_hico.json"
    for p in (5, 15, 25, 50):
        assert config_of("hico_frac.py", f"frac={p}").dataset.train_file == \
            f"trainval_hico_{p}%.json"
    assert config_of("hico5p.py").to_dict() == config_of("hico_frac.py", "frac=5").to_dict()
    for setting in SEEN:
        config = config_of("hico_zs.py", f"setting={setting}")
        assert config.dataset.zero_shot == config.model.zero_shot == setting
        assert config.dataset.train_file == "trainval_hico.json"
    vcoco = config_of("vcoco.py")
    assert (vcoco.dataset.name, vcoco.model.verb_weight) == ("vcoco", 0.1)
    assert config_of("hico.py").model.verb_weight == 0.5


def test_variants_combine():
    base = config_of("hico_zs.py", "setting=unseen_object").to_dict()
    varied = config_of("hico_zs.py", "setting=unseen_object,q_inter=mix2x2,verb_features=seed")
    assert (varied.model.q_inter, varied.model.verb_features) == (
        "mix2x2", "params/verb_features/hico_unseen_object_seed.npy")
    varied.model.q_inter = "mean"
    varied.model.verb_features = "params/verb_features/hico_unseen_object_original.npy"
    assert varied.to_dict() == base  # nothing else changed
    assert config_of("hico_frac.py", "frac=15,verb_features=original").model.verb_features == \
        "params/verb_features/hico_original.npy"  # the full set's E_v, as the reference
    assert config_of("vcoco.py", "verb_features=seed").model.verb_features == \
        "params/verb_features/vcoco_seed.npy"
    assert config_of("hico.py", "verb_features=text").model.verb_features == ""


def test_zero_shot_fields_are_one_setting():
    config = config_of("hico.py")
    config.dataset.zero_shot = "rare_first"
    assert config.model.zero_shot == "rare_first"
    config.model.zero_shot = "unseen_verb"
    assert config.dataset.zero_shot == "unseen_verb"


@pytest.mark.parametrize("name,arg,message", [
    ("hico_zs.py", "", "needs the option(s) setting"),
    ("hico_frac.py", "", "needs the option(s) frac"),
    ("hico_zs.py", "setting=rare", "setting='rare' is not one of rare_first|"),
    ("hico_frac.py", "frac=1", "frac='1' is not one of 5|15|25|50"),
    ("hico.py", "qinter=mix2x2", "unknown option 'qinter' (q_inter=mean|mix2x2; "),
    ("hico.py", "mix2x2", "option 'mix2x2' is not key=value"),
    ("hico5p.py", "frac=15", "unknown option 'frac'"),
    ("vcoco.py", "q_inter=mix2x2,q_inter=mean", "option 'q_inter' given twice"),
    ("hico.py", "verb_features=ours", "verb_features='ours' is not one of original|text|seed"),
])
def test_bad_arguments_fail_with_the_choices(name, arg, message):
    with pytest.raises(ValueError) as e:
        config_of(name, arg)
    assert message in str(e.value) and f"configs/{name}" in str(e.value)


# ----------------------------------------------------------------------------- zero-shot heads

def tiny(config):
    """`config` with the tiny model (no data paths: for the model alone)."""
    return helpers.set_fields(config, {**helpers.smoke_overrides("", ""), **SHRINK})


def with_setting(config, setting: str):
    config = config.copy_and_resolve_references()
    config.dataset.zero_shot = setting
    config.model.zero_shot = setting  # a plain copy: the link is gone
    return config


@pytest.fixture(scope="module")
def hico_heads():
    """(tables, base model, zero-shot models by setting, head params, dataset config) over the
    600 HICO-Det classes. The HOI heads are all these tests run: their params alone are
    initialised (a plain random init; the text-derived kernel changes nothing here)."""
    config = tiny(config_of("hico.py"))
    tables = class_tables.load_class_tables(config.dataset)
    base = hoiclip.build_model(config.model, tables)
    zero_shot = {s: hoiclip.build_model(with_setting(config, s).model, tables) for s in SEEN}
    o_inter = jnp.zeros((1, 1, 1, config.model.clip.embed_dim))
    params = base.init(jax.random.PRNGKey(0), o_inter, method=hoiclip.HOICLIP.hoi_logits)
    return tables, base, zero_shot, params["params"], config.dataset


def heads(model, params, o_inter, train: bool):
    return model.apply({"params": params}, o_inter, train, method=hoiclip.HOICLIP.hoi_logits)


def test_zero_shot_columns_are_the_seen_classes_ascending(hico_heads):
    tables, base, zero_shot, _, _ = hico_heads
    assert base.train_hois == ()
    for setting, model in zero_shot.items():
        unseen = set(splits.unseen_hois(tables, setting).tolist())
        columns = np.asarray(model.train_hois)
        assert len(columns) == SEEN[setting] == 600 - len(unseen)
        assert np.all(np.diff(columns) > 0) and not unseen & set(columns.tolist())


def test_zero_shot_parameters_do_not_depend_on_the_setting(hico_heads):
    _, base, zero_shot, _, dataset = hico_heads
    shapes = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype),
                                    hoiclip.abstract_params(m, dataset))
    expected = shapes(base)
    assert expected["hoi_visual_projection"]["kernel"][0] == (32, 600)
    for model in zero_shot.values():
        assert shapes(model) == expected


def test_zero_shot_logits_train_on_seen_columns_and_evaluate_all_without_bias(hico_heads):
    _, base, zero_shot, params, _ = hico_heads
    o_inter = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 3, 32))  # [L, B, N, E]
    full = heads(base, params, o_inter, train=False)  # all classes, with the bias
    assert full.shape == (1, 2, 3, 600)
    np.testing.assert_array_equal(heads(base, params, o_inter, train=True), full)
    bias = params["hoi_visual_projection"]["bias"]
    assert np.abs(bias).max() > 0.01  # the reference's random frozen bias: removing it shows
    scale = jnp.exp(params["logit_scale"])
    for setting, model in zero_shot.items():
        columns = np.asarray(model.train_hois)
        train = heads(model, params, o_inter, train=True)
        assert train.shape == (1, 2, 3, SEEN[setting])
        # The seen kernel, bias and verb2hoi columns, in ascending order.
        np.testing.assert_allclose(train, full[..., columns], rtol=1e-6, atol=1e-5)
        evaluate = heads(model, params, o_inter, train=False)
        assert evaluate.shape == (1, 2, 3, 600)
        np.testing.assert_allclose(evaluate, full - scale * bias, rtol=1e-6, atol=1e-5)


def test_seen_labels_restrict_the_last_axis():
    labels = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)
    batch = {"hoi_labels": labels, "pair_mask": np.ones((2, 3), bool)}
    assert train_step.seen_labels(batch, ()) is batch
    cut = train_step.seen_labels(batch, (0, 2, 5))
    np.testing.assert_array_equal(cut["hoi_labels"], labels[..., [0, 2, 5]])
    assert cut["pair_mask"] is batch["pair_mask"]


# ----------------------------------------------------------------------------- every experiment

@dataclasses.dataclass
class World:
    """The fake data sets and what the experiments share (see the module docstring)."""
    roots: dict               # dataset name -> fake folder in the real layout
    tfds_dir: str
    files: str                # where the E_v files of the configs are written
    mesh: object
    states: dict = dataclasses.field(default_factory=dict)    # -> (model, host state, tx)
    steps: dict = dataclasses.field(default_factory=dict)     # model -> compiled step
    predicts: dict = dataclasses.field(default_factory=dict)  # -> compiled inference

    def config(self, name: str, arg: str):
        """The config as `--config configs/<name>:<arg>` gives it, shrunk and on the fake
        folder; an E_v file it names is written (random rows) under `files`."""
        config = config_of(name, arg)
        d = config.dataset
        helpers.set_fields(config, {**helpers.smoke_overrides(self.roots[d.name],
                                                              self.tfds_dir), **SHRINK})
        if config.model.verb_features:
            path = os.path.join(self.files, config.model.verb_features)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shape = ({"hico": 117, "vcoco": 29}[d.name], config.model.clip.embed_dim)
            rows = np.random.default_rng(0).normal(size=shape).astype(np.float32)
            np.save(path, rows)
            config.model.verb_features = path
        return config

    @staticmethod
    def state_key(config) -> tuple:
        return config.dataset.name, config.model.q_inter, config.model.verb_features

    def state(self, config, data):
        """(model, train state on the mesh, compiled step). The initial state is built once
        per data set and parameter-changing option (a zero-shot setting or another training
        file changes no parameter), and so is the optimizer, whose schedule then counts the
        first config's steps per epoch (which matters only from epoch 60 on)."""
        model = hoiclip.build_model(config.model, data.tables)
        key = self.state_key(config)
        if key not in self.states:
            built, tx, _, state = state_io.build_state(config, data.tables,
                                                       data.steps_per_epoch)
            self.states[key] = (built, jax.device_get(state), tx)
        built, host_state, tx = self.states[key]
        assert model.clone(train_hois=()) == built.clone(train_hois=())
        state = sharding.put_replicated(host_state, self.mesh)
        if model not in self.steps:
            fn = train_step.make_train_step(model, tx, matching.build_matcher(config.matcher,
                                                                              self.mesh),
                                            config.loss, self.mesh)
            batch = next(iter(data.batches(config, 0, 0)))
            self.steps[model] = fn.lower(state, sharding.put_batch(batch, self.mesh)).compile(
                FAST_COMPILE)
        return model, state, self.steps[model]

    def evaluator(self, model, config, data) -> evaluation.Evaluator:
        """The run's evaluator; its inference is compiled once per inference program."""
        evaluator = evaluation.Evaluator(model, config, data.tables, self.mesh,
                                         train_hoi_counts=data.split.hoi_counts)
        jitted = evaluator.predict

        # Inference does not depend on which columns a zero-shot model trains on.
        key = (model.clone(train_hois=()), bool(model.train_hois))

        def predict(params, batch):
            if key not in self.predicts:
                self.predicts[key] = jitted.lower(params, batch).compile(FAST_COMPILE)
            return self.predicts[key](params, batch)

        evaluator.predict = predict
        return evaluator


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiments")
    # 16 training images: 8 in each fractional file, 14 to 16 after each zero-shot filter.
    roots = {"hico": fake_layout.write_hico(str(tmp / "hico_20160224_det"), num_train=16,
                                            num_test=4),
             "vcoco": fake_layout.write_vcoco(str(tmp / "v-coco"), num_train=8, num_test=4)}
    return World(roots, str(tmp / "tfds"), str(tmp / "files"), sharding.make_mesh())


class CommandLines:
    """Runs `python -m hoiclip_jax.train` for each (config file, `:arg`), one after the other
    on a background thread, so that they compile on the second core while the in-process
    experiments run. `result(name, arg)` waits for one: (exit code, output, workdir)."""

    def __init__(self, world: World, folder, runs: dict[tuple[str, str], dict]):
        self.processes = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.futures = {run: self.pool.submit(self._run, world, folder, *run, extra)
                        for run, extra in runs.items()}

    def _run(self, world: World, folder, name: str, arg: str, extra: dict):
        config = world.config(name, arg)
        workdir = folder / f"{name}-{arg}" / "run"
        overrides = {**helpers.smoke_overrides(world.roots[config.dataset.name],
                                               world.tfds_dir), **SHRINK,
                     "train.eval_every_epochs": 1, **extra}
        command = [sys.executable, "-m", "hoiclip_jax.train",
                   "--config", f"configs/{name}" + (f":{arg}" if arg else ""),
                   "--workdir", str(workdir), *helpers.override_flags(overrides)]
        # Optimisation level 0: XLA compiles several times faster; the numbers do not matter.
        env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") +
                   " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        self.processes[(name, arg)] = process
        output, _ = process.communicate(timeout=600)
        return process.returncode, output, workdir

    def result(self, name: str, arg: str):
        return self.futures[(name, arg)].result(timeout=900)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()


@pytest.fixture(scope="module")
def command_lines(world, tmp_path_factory):
    # Built here, before the runs start: the in-process experiments read the same builds.
    for name in ("hico.py", "vcoco.py"):
        sources.prepare(world.config(name, "").dataset)
    runs = CommandLines(world, tmp_path_factory.mktemp("command_lines"), COMMAND_LINES)
    yield runs
    runs.close()


def train_two_steps(world: World, config, data) -> tuple[object, dict, list[float]]:
    model, state, step = world.state(config, data)
    losses = []
    for batch in data.batches(config, 0, 0):
        state, metrics = step(state, sharding.put_batch(batch, world.mesh))
        losses.append(float(metrics["loss"]))
        if len(losses) == 2:
            break
    return model, state, losses


@pytest.mark.usefixtures("command_lines")  # started first, to run alongside
@pytest.mark.parametrize("name,arg", EXPERIMENTS,
                         ids=[f"{n}:{a}" if a else n for n, a in EXPERIMENTS])
def test_experiment_trains_and_evaluates(world, name, arg):
    config = world.config(name, arg)
    data = train_lib.load_train_data(config)
    model, state, losses = train_two_steps(world, config, data)
    assert len(losses) == 2 and all(np.isfinite(losses)) and min(losses) > 0, losses
    report, predictions = world.evaluator(model, config, data)(
        optim.merge_params(state["trainable"], state["frozen"]), "after 2 steps")
    assert len(predictions) == 4
    main = report.main
    assert main[report.main_key] is not None and 0.0 <= main[report.main_key] <= 1.0
    check_experiment(config, data, model, report, predictions)
    if config.model.verb_features:  # the option's E_v file is what training starts from
        _, initial, _ = world.states[world.state_key(config)]
        np.testing.assert_array_equal(initial["trainable"]["verb_projection"]["kernel"],
                                      np.load(config.model.verb_features).T)


def check_experiment(config, data, model, report, predictions) -> None:
    """What distinguishes the experiment of `config`."""
    d = config.dataset
    assert report.protocol == "python"
    index = hoi_tfds.read_split_index(sources.tfds_builder(d), "train")
    assert index.annotation_file == d.train_file and index.source != "sampled"
    if d.zero_shot == "none":
        assert model.train_hois == () and set(report.main) >= {"mAP_rare", "mAP_non_rare"}
        return
    # Zero-shot: the seen columns in training, every class in the evaluation.
    assert len(model.train_hois) == SEEN[d.zero_shot] and data.split.zero_shot.pairs_removed
    assert set(report.main) >= {"mAP", "mAP_unseen", "mAP_seen"}
    unseen = splits.unseen_hois(data.tables, d.zero_shot)
    predicted = np.concatenate([p["hoi_ids"] for p in predictions])
    assert np.isin(predicted, unseen).any()  # unseen classes are scored


def read_run(workdir) -> tuple[list[dict], list[dict], dict]:
    """(train records, eval records, config) of a training workdir."""
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    with open(workdir / "config.json") as f:
        config = json.load(f)
    steps = [r for r in records if r["kind"] == "train"]
    assert len(steps) >= 2 and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    return steps, [r for r in records if r["kind"] == "eval"], config


def test_zero_shot_command_line(command_lines):
    """`python -m hoiclip_jax.train --config configs/hico_zs.py:setting=unseen_verb` starts as
    written on the fake folder (sizes and paths overridden by `helpers.smoke_overrides`), trains
    on the seen classes and evaluates Unseen / Seen / Full."""
    code, output, workdir = command_lines.result("hico_zs.py", "setting=unseen_verb")
    assert code == 0, output[-4000:]
    assert "Zero-shot 'unseen_verb' (84 unseen HOIs)" in output
    _, evals, config = read_run(workdir)
    assert len(evals) == 1 and {"mAP", "mAP_unseen", "mAP_seen"} <= set(evals[0])
    assert config["dataset"]["zero_shot"] == config["model"]["zero_shot"] == "unseen_verb"


def test_vcoco_command_line(command_lines):
    """`python -m hoiclip_jax.train --config configs/vcoco.py` trains and evaluates in the
    V-COCO protocol (the proxy's mAP_all, the reference's model selection
    key), with TFE, and finds the fake folder's corre_vcoco.npy (no stand-in warning)."""
    code, output, workdir = command_lines.result("vcoco.py", "")
    assert code == 0, output[-4000:]
    steps, evals, config = read_run(workdir)
    assert [r["step"] for r in steps] == [1, 2]  # 8 images, batches of 4
    assert len(evals) == 1 and 0.0 <= evals[0]["mAP_all"] <= 1.0
    assert 0.0 <= evals[0]["TFE_k5/mAP_thesis"] <= 1.0
    assert "corre_vcoco.npy" not in output
    assert (config["dataset"]["name"], config["model"]["verb_weight"]) == ("vcoco", 0.1)
