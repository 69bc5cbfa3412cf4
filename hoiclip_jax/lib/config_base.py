"""Shared pieces of the configs: the full HOICLIP values of the reference (§1.1, §2, §4).

Every field the code reads is set here or in the config file that calls these helpers; the code
never falls back to a default. Config files override fields after calling `hoiclip_config()`.
"""
import ml_collections as mlc


def hoiclip_config(dataset: str) -> mlc.ConfigDict:
    """The published HOICLIP setting (ResNet-50 + DETR, CLIP ViT-B/32) for 'hico' or 'vcoco'."""
    config = mlc.ConfigDict()
    config.seed = 42  # reference: setup_seed(233) then 42 + rank; we use one seed per run
    config.dataset = dataset_config(dataset)
    config.model = model_config(dataset)
    config.matcher = matcher_config()
    config.loss = loss_config(dataset)
    config.optim = optim_config()
    config.train = train_config()
    config.eval = eval_config()
    # One setting for the data and the model: setting either field sets both.
    config.model.zero_shot = config.dataset.get_ref("zero_shot")
    if dataset == "hico":  # the published rows are with TFE k = 10 (§6, §9.1): a second row
        config.eval.tfe_k = (10,)
    if dataset in ("hico", "vcoco"):  # the reference validates every epoch and keeps the best
        config.train.eval_every_epochs = 1
    # A required file that is missing (E_v, the authors' fractional subset, corre_vcoco.npy)
    # stops the run, naming it; True uses the documented stand-in instead, with a warning
    # (data_pipeline/required_files.py).
    config.allow_stand_ins = False
    return config


def dataset_config(dataset: str) -> mlc.ConfigDict:
    d = mlc.ConfigDict()
    d.name = dataset  # 'synthetic' | 'hico' | 'vcoco': selects the class tables
    # Folder in the layout of the reference README: images/<split>/, annotations/<file>.
    roots = {"hico": "data/hico_20160224_det", "vcoco": "data/v-coco"}
    d.root = roots.get(dataset, "data/synthetic")
    d.train_file = {"vcoco": "trainval_vcoco.json"}.get(dataset, "trainval_hico.json")
    d.test_file = {"vcoco": "test_vcoco.json"}.get(dataset, "test_hico.json")
    d.train_images = {"vcoco": "train2014"}.get(dataset, "train2015")
    d.test_images = {"vcoco": "val2014"}.get(dataset, "test2015")
    # Where records and images come from (data_pipeline/sources.py): 'folder' reads the files
    # under `root`; 'tfds' reads the tensorflow-datasets array_record build of `root` (its
    # manual_dir) from `tfds_data_dir`, made once by `python -m data_pipeline.sources --config
    # <config>`. The tfds builders read the reference layout, so the file and folder names above
    # must be the reference ones; a HICO-Det `train_file` of 'trainval_hico_{5,15,25,50}%.json'
    # selects that fractional subset (a deterministic sample, logged as NOT the authors' subset,
    # when the file is missing).
    d.builder = "tfds" if dataset in ("hico", "vcoco") else "folder"
    d.tfds_data_dir = "data/tfds"
    # Zero-shot setting of reference §3.4 (HICO-Det): 'none' | 'rare_first' | 'non_rare_first' |
    # 'unseen_object' | 'unseen_verb'. The training pairs carrying an HOI of the setting's unseen
    # list are dropped, then the training images left without pairs; the test split is kept.
    d.zero_shot = "none"
    # Class tables: a JSON in the schema of data_pipeline/tables/hico_classes.json. An empty
    # string means the packaged table of `name`; the synthetic set ships its own next to its files.
    d.class_table = ""
    # Static shapes for XLA: every image is resized to fit in (and padded to) this canvas.
    d.canvas = (1333, 1333)
    d.max_side = 1333
    d.train_short_sides = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    d.test_short_side = 800
    d.max_pairs = 64  # GT pairs per image, padded with a mask (the reference keeps <= 64 boxes)
    d.clip_image_size = 224
    d.flip_prob = 0.5
    d.color_jitter = 0.4
    d.num_workers = 0  # grain worker processes (0 = in the main process)

    # transforms (issue 5 item 3)
    # Training augmentation (data_pipeline/transforms.py): 'reference' is §3.3 (flip, ColorJitter,
    # then multi-scale resize or resize -> random crop -> resize); 'light' is the synthetic
    # demo's flip, float jitter and one resize, which ignores the four fields below.
    d.augmentation = "reference"
    d.multiscale_prob = 0.5                  # RandomSelect: multi-scale resize vs. the crop branch
    d.crop_resize_sides = (400, 500, 600)    # short side before the crop
    d.crop_size = (384, 600)                 # RandomSizeCrop: crop width and height in [min, max]
    d.max_boxes = 64                         # the reference trains on the first num_queries boxes
    # (H, W) shapes inside `canvas`: each batch is padded to the smallest of them (or to the
    # canvas) that holds all its images, one compilation per shape used. Empty: always `canvas`.
    # These four cut the padded pixels of reference-augmented 640x480-class batches by 19 % at
    # batch 16 and 37 % at batch 4 (README "Input pipeline").
    real = dataset in ("hico", "vcoco")
    d.buckets = ((800, 1088), (1088, 800), (1088, 1088), (1216, 1216)) if real else ()
    d.num_threads = 4                        # grain prefetch threads (per worker process)
    return d


def model_config(dataset: str) -> mlc.ConfigDict:
    real = dataset in ("hico", "vcoco")  # pretrained weights exist (README "Weights")
    m = mlc.ConfigDict()
    m.backbone = mlc.ConfigDict(dict(
            block="bottleneck",      # ResNet-50 bottleneck blocks
            stage_sizes=(3, 4, 6, 3),
            width=64,                # stem channels; stage i has width * 2**i (x4 out)
            frozen_bn_eps=1e-5,
        norm="frozen_bn",        # 'frozen_bn' (pretrained, reference) | 'group_norm' (from scratch)
    ))
    m.hidden_dim = 256
    m.nheads = 8
    m.enc_layers = 6
    m.dec_layers = 3
    m.inter_dec_layers = 3
    m.dim_feedforward = 2048
    m.dropout = 0.1
    m.num_queries = 64           # 64 human + 64 object queries
    m.clip = mlc.ConfigDict(dict(  # OpenAI CLIP ViT-B/32
            embed_dim=512,
            image_size=224, patch_size=32, vision_width=768, vision_layers=12, vision_heads=12,
            vision_mlp_dim=3072,
            context_length=77, vocab_size=49408, text_width=512, text_layers=12, text_heads=8,
            text_mlp_dim=2048,
            # Hugging Face CLIP folder (config.json, flax_model.msgpack or model.safetensors,
            # vocab.json, merges.txt); its sizes must equal the ones above (image_size may differ:
            # positions are resized). Empty: random init and the word tokenizer.
            weights="params/clip-vit-base-patch32" if real else "",
    ))
    # .npz of the L2-normalised HOI and object prompt embeddings written by `python -m
    # hoiclip_jax.tools.text_embeddings`; when set, the classifiers are built from it and the text
    # tower does not run. Empty: computed from the CLIP text tower at init.
    m.text_embeddings = ""
    m.inter_nheads = 8           # the 768-d CLIP interaction decoder: 8 heads (head dim 96)
    m.inter_dim_feedforward = 2048
    m.q_inter = "mean"           # 'mean' (paper) | 'mix2x2' (reproduction report)
    m.verb_weight = 0.1 if dataset == "vcoco" else 0.5
    # Zero-shot setting (§1.6, §3.4); `hoiclip_config` links it to dataset.zero_shot (a
    # reference: setting either sets both). Not 'none': in training the HOI classifier and
    # verb2hoi keep the seen classes' columns only (ascending) and the HOI labels likewise; in
    # evaluation all classes, without the classifier bias. The parameters hold all classes.
    m.zero_shot = "none"
    # E_v file [V, embed_dim]; empty: mean of each verb's HOI text embeddings
    m.verb_features = ""
    m.logit_scale_init = 2.6592600369644165  # ln(1 / 0.07)
    # Remove the mean text embedding of each prompt set before the classifiers are built. Only
    # for a random (untrained) CLIP, whose prompt embeddings are nearly parallel; not in the
    # reference.
    m.center_text_embeddings = False
    # Add the sine positions to the encoder input as well as to its queries and keys. Not in the
    # reference: a pretrained ResNet-50 encodes absolute position in its features (zero padding,
    # large receptive field), so DETR's values know where they are; a small backbone trained
    # from scratch does not, and its boxes then barely learn.
    m.encoder_input_pos = False
    # DETR-R50 `.pth` (official detr-r50-e632da11.pth; the 2-branch conversion of §4.3 runs on
    # load), a released HOICLIP `.pth`, or the params.msgpack of `python -m
    # hoiclip_jax.tools.import_weights`. Loaded over the initial params when training starts
    # fresh (a resumed run reads its own checkpoint). Empty: nothing loaded.
    m.pretrained = "params/detr-r50-e632da11.pth" if real else ""
    # Reference quirks (§1.4, §1.6), each on or off to reproduce or to fix:
    # the HOI and object text classifiers keep their random init biases (frozen with them);
    # False zeroes them.
    m.classifier_random_bias = True
    # E_v (verb_projection) trains at the default rate, as in the reference code; False freezes
    # it at the file / text value.
    m.train_verb_features = True
    # The V-COCO code path sets verb2hoi[verb, object index] instead of [verb, HOI index]; the
    # published V-COCO numbers come from that matrix. True reproduces it (V-COCO tables only).
    m.vcoco_verb2hoi_bug = False
    # The CLIP interaction decoder attends to every DETR memory position, padding included, in
    # the reference; True masks the padded ones, so that an image's scores do not depend on the
    # canvas it is padded to (not in the reference: off reproduces it).
    m.mask_padded_memory = False
    m.dtype = "float32"
    # Activation checkpointing of the backbone stages and transformer layers: 'none' or a
    # jax.checkpoint_policies name ('nothing_saveable', 'dots_saveable', ...; models/remat.py).
    # Same results, less device memory, more compute (benchmarks/README.md, "Memory").
    m.remat = "none"
    return m


def matcher_config() -> mlc.ConfigDict:
    return mlc.ConfigDict(dict(
            name="hungarian_host",
            # Where the assignment runs: 'scipy' (host callback, per device shard) or 'device'
            # (optax's Hungarian algorithm inside the compiled step; no host round trip).
            backend="scipy",
            cost_hoi=1.0, cost_obj=1.0, cost_bbox=2.5, cost_giou=1.0,
    ))


def loss_config(dataset: str) -> mlc.ConfigDict:
    return mlc.ConfigDict(dict(
            hoi_coef=2.0, obj_coef=1.0, bbox_coef=2.5, giou_coef=1.0,
            eos_coef=0.1,            # weight of the no-object class in the object CE
            focal_alpha=0.5,
            # Scope of the loss normalisers (number of positive HOI labels, object-CE weights,
            # pairs, existing object boxes). 'global': counts over the whole global batch, so the
            # loss does not depend on the number of devices (our default). 'per_device': the
            # reference's per-GPU normalisers (§2.2, §11 item 6): each device's shard of the
            # batch is normalised by its own counts (subject boxes by the global pair count /
            # devices) and the device losses are averaged, as DDP averages gradients; for parity
            # runs with the reference, whose results then depend on the device count.
            normalizer="global",
    ))


def optim_config() -> mlc.ConfigDict:
    o = mlc.ConfigDict()
    o.lr = 1e-4
    o.weight_decay = 1e-4
    o.b1 = 0.9
    o.b2 = 0.999
    o.eps = 1e-8
    o.grad_clip_norm = 0.1
    o.lr_drop_epochs = (60,)     # lr x lr_drop_factor at each of these epochs
    o.lr_drop_factor = 0.1
    o.warmup_steps = 0           # linear lr ramp over the first k steps (0: none, as the reference)
    # (regex on the '/'-joined parameter path, group). First match wins; every parameter must
    # match a rule. Groups: 'frozen' (never updated), or a key of `group_lr_mult`.
    o.groups = (
            (r"clip/.*", "frozen"),
            (r"hoi_visual_projection/.*", "frozen"),
            (r"obj_visual_projection/.*", "frozen"),
            (r"backbone/.*bn.*", "frozen"),          # FrozenBatchNorm statistics and affine
            (r"backbone/(stem|layer1)/.*", "frozen"),
            (r"backbone/.*", "backbone"),
            (r".*", "default"),
    )
    o.group_lr_mult = mlc.ConfigDict(dict(default=1.0, backbone=0.1))  # lr_backbone = 1e-5
    return o


def train_config() -> mlc.ConfigDict:
    t = mlc.ConfigDict()
    t.batch_size = 16            # global batch (reference: 2 GPUs x 8)
    # Gradient accumulation: the step sums the gradients of this many microbatches of the batch
    # (whole-batch loss normalisers, so the update is the full batch's) and keeps only one
    # microbatch's activations alive: the paper's batch on a small GPU. Each device's share of
    # the batch must divide by it.
    t.microbatches = 1
    t.num_epochs = 90
    t.log_every_steps = 50       # progress bar, <workdir>/metrics.jsonl and tensorboard/
    t.checkpoint_every_steps = 1000  # and at every epoch end (after that epoch's evaluation)
    t.keep_checkpoints = 2       # the last k in <workdir>/checkpoints/ (training resumes there)
    # Test-split mAP after every k-th epoch and after the last one, as the reference does every
    # epoch (§4.1); the state with the best mAP is kept in <workdir>/best/, apart from the last
    # k. 0: no evaluation during training.
    t.eval_every_epochs = 0
    # A step whose loss or gradients are NaN / inf never updates the parameters (train_step.py);
    # 'skip' logs its step number and goes on, 'stop' ends the run at the next log or checkpoint
    # point (no checkpoint is written after it) with the step numbers named.
    t.nonfinite = "skip"
    return t


def eval_config() -> mlc.ConfigDict:
    e = mlc.ConfigDict()
    e.batch_size = 16
    e.max_hois = 100             # top-k triplets per image
    e.use_nms = True
    e.nms_threshold = 0.7
    e.nms_alpha = 1.0
    e.nms_beta = 0.5
    e.overlap_iou = 0.5
    e.rare_threshold = 10        # HOI classes with < 10 training instances are rare
    # Training-free enhancement (reference §6, hoiclip_jax/eval/tfe.py): every k here adds a
    # row with CLIP's top-k image-level HOI scores added to the query scores (the published HICO-Det
    # numbers use k = 10); () is off. `tfe_weight` is the reference's `co`.
    e.tfe_k = ()
    e.tfe_weight = 1.0
    return e


# ----------------------------------------------------------------------------- `:arg` options

# The reproduction report's variants (§1.5, §5.2, §9.3), options of every HICO-Det and V-COCO
# config file (`--config configs/hico5p.py:q_inter=mix2x2,verb_features=seed`); the first
# value is the default.
#   q_inter        'mean' (paper) | 'mix2x2' (report variant 2): config.model.q_inter.
#   verb_features  E_v: 'original' (§5.1, the paper's, as the released verb.pth) | 'text' (the
#                  text stand-in, config.model.verb_features = '') | 'seed' (§5.2, report
#                  variant 1). 'original' and 'seed' read the .npy
#                  `verb_features_path(<config's E_v name>, method)`, written by
#                  `python -m hoiclip_jax.tools.verb_features --config <config> --method <method>
#                  --out <that path>`.
VARIANTS = {
    "q_inter": ("mean", "mix2x2"),
    "verb_features": ("original", "text", "seed"),
}
VERB_FEATURES_DIR = "params/verb_features"


def parse_arg(arg, config_file: str, choices: dict, required: tuple = ()) -> dict:
    """The options `key=value,key=value` after ':' in `--config <config_file>:<arg>`.

    Args:
      arg: the text after ':' (None when the command gives none).
      config_file: the config's path, for the messages.
      choices: option -> its allowed values (strings); the first is the default unless the
        option is `required`.
      required: options without a default.

    Returns:
      option -> value, for every option of `choices` (the default where not given).

    Raises:
      ValueError naming the file and the allowed options / values: an unknown option or value,
      an item without '=', an option given twice, a required option missing.
    """
    usage = "; ".join(f"{k}={'|'.join(v)}" for k, v in choices.items())
    given = {}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise ValueError(f"{config_file}:{arg}: option {item!r} is not key=value ({usage})")
        if key not in choices:
            raise ValueError(f"{config_file}:{arg}: unknown option {key!r} ({usage})")
        if key in given:
            raise ValueError(f"{config_file}:{arg}: option {key!r} given twice")
        if value not in choices[key]:
            raise ValueError(f"{config_file}:{arg}: {key}={value!r} is not one of "
                             f"{'|'.join(choices[key])}")
        given[key] = value
    missing = [k for k in required if k not in given]
    if missing:
        raise ValueError(f"{config_file} needs the option(s) {', '.join(missing)}: "
                         f"--config {config_file}:" + ",".join(
                             f"{k}={'|'.join(choices[k])}" for k in missing))
    return {k: given[k] if k in given else v[0] for k, v in choices.items()}


def verb_features_path(name: str, method: str) -> str:
    """Where the E_v of config `name` made by `--method method` is read from (and written to)."""
    return f"{VERB_FEATURES_DIR}/{name}_{method}.npy"


def apply_variants(config: mlc.ConfigDict, args: dict, verb_features_name: str) -> None:
    """Sets the `VARIANTS` options of `args` (from `parse_arg`) on `config`; E_v files are
    looked up under `verb_features_name`."""
    config.model.q_inter = args["q_inter"]
    if args["verb_features"] != "text":
        config.model.verb_features = verb_features_path(verb_features_name,
                                                        args["verb_features"])


FRACTIONS = ("5", "15", "25", "50")  # percent; data_pipeline.splits.FRACTIONS


def fractional_config(frac: str, args: dict) -> mlc.ConfigDict:
    """HICO-Det trained on the `frac` percent subset (`trainval_hico_<frac>%.json`), with the
    variant options `args` (configs/hico_frac.py, configs/hico5p.py)."""
    config = hoiclip_config("hico")
    config.dataset.train_file = f"trainval_hico_{frac}%.json"
    apply_variants(config, args, "hico")
    return config
