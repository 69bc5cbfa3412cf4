"""tensorflow-datasets builder of HICO-Det in the layout of the HOICLIP README (reference §3.1).

    manual_dir = hico_20160224_det/
        images/train2015/HICO_train2015_XXXXXXXX.jpg   images/test2015/HICO_test2015_XXXXXXXX.jpg
        annotations/trainval_hico.json  test_hico.json  [trainval_hico_{5,15,25,50}%.json]

Configs: 'full' (train = trainval_hico.json) and 'frac_5', 'frac_15', 'frac_25', 'frac_50'
(train = the authors' trainval_hico_{p}%.json when present; otherwise a deterministic sample of
trainval_hico.json by `splits.sample_fraction` with seed `SAMPLE_SEED`, written into the prepared
data set's folder under a name that says it is not the authors' subset). The test split is
test_hico.json in every config. See `hoi_tfds` for the stored features and the bad-input rules.

    python -m data_pipeline.sources --config configs/hico5p.py   # prepares what a config reads
"""
import logging
import os

import tensorflow_datasets as tfds

from data_pipeline import hoi_tfds, splits
from data_pipeline.class_tables import ClassTables, load_json
from data_pipeline.hico_reader import AnnotationError, parse_annotations

SAMPLE_SEED = 0  # seed of the fractional sampler; part of the sampled file's name


def config_name(percent: int) -> str:
    """Builder config of a percentage of the training images: 'full' or 'frac_{p}'."""
    if percent == 100:
        return "full"
    if percent not in splits.FRACTIONS:
        raise ValueError(f"no HICO-Det subset of {percent} %; expected 100 or {splits.FRACTIONS}")
    return f"frac_{percent}"


def _percent(name: str) -> int:
    return 100 if name == "full" else int(name.split("_")[1])


class HicoDet(hoi_tfds.HoiBuilder):
    """HICO-Det (Chao et al., WACV 2018), PPDM annotation format, one example per image."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="full", description="all training images")] + [
        tfds.core.BuilderConfig(name=config_name(p), description=f"{p} % of the training images")
        for p in splits.FRACTIONS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Point manual_dir at hico_20160224_det/ as laid out by the HOICLIP README: images/train2015/,
    images/test2015/, annotations/trainval_hico.json and test_hico.json (PPDM format), plus the
    authors' annotations/trainval_hico_{5,15,25,50}%.json for the fractional configs.
    """
    TABLES = "hico"
    HOMEPAGE = "http://www-personal.umich.edu/~ywchao/hico/"

    def _split_files(self, root: str, tables: ClassTables) -> dict[str, hoi_tfds.SplitFiles]:
        ann, images = os.path.join(root, "annotations"), os.path.join(root, "images")
        train_file, source = self._train_file(ann, tables)
        return {
            "train": hoi_tfds.SplitFiles(train_file, os.path.join(images, "train2015"), source,
                                         clamp=True),
            "test": hoi_tfds.SplitFiles(os.path.join(ann, "test_hico.json"),
                                        os.path.join(images, "test2015"), "reference",
                                        clamp=False),
        }

    def _train_file(self, ann_dir: str, tables: ClassTables) -> tuple[str, str]:
        """(training annotation file, its source) of this config."""
        percent = _percent(self.builder_config.name)
        full = os.path.join(ann_dir, splits.FULL_TRAIN_FILE)
        if percent == 100:
            return full, "reference"
        authors = os.path.join(ann_dir, splits.fraction_file_name(percent))
        if os.path.exists(authors):
            logging.info("Using the authors' %d %% subset %s", percent, authors)
            return authors, "authors"
        raw = load_json(full, AnnotationError)
        parse_annotations(raw, full, tables)  # a malformed record stops the build, named
        # self.data_path is the data set's folder being written: the sample is kept with it.
        return splits.write_sampled_fraction(raw, percent, SAMPLE_SEED,
                                             os.fspath(self.data_path)), "sampled"
