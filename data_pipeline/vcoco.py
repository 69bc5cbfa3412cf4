"""tensorflow-datasets builder of V-COCO in the layout of the HOICLIP README (reference §3.1).

    manual_dir = v-coco/
        images/train2014/COCO_train2014_XXXXXXXXXXXX.jpg   images/val2014/COCO_val2014_….jpg
        annotations/trainval_vcoco.json  test_vcoco.json

The annotation files are the HOIA conversion of the reference (§3.2): 29 verb-role classes with
0-based `category_id`, COCO object ids, and `object_id = -1` for a role without an object (object
index 80, "no_object"). The train split is trainval_vcoco.json (images/train2014), the test split
test_vcoco.json (images/val2014); file names are kept as they are and never parsed (the
reference's image-id parse crashes on `COCO_val2014_…`). See `hoi_tfds` for the stored features
and the bad-input rules.

    python -m data_pipeline.sources --config configs/vcoco.py   # prepares what a config reads
"""
import os

import tensorflow_datasets as tfds

from data_pipeline import hoi_tfds
from data_pipeline.class_tables import ClassTables


class Vcoco(hoi_tfds.HoiBuilder):
    """V-COCO (Gupta and Malik, 2015) in the HOIA format, one example per image."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Point manual_dir at v-coco/ as laid out by the HOICLIP README: images/train2014/,
    images/val2014/, annotations/trainval_vcoco.json and test_vcoco.json (HOIA format made by
    the reference's tools/convert_vcoco_annotations.py).
    """
    TABLES = "vcoco"
    HOMEPAGE = "https://github.com/s-gupta/v-coco"

    def _split_files(self, root: str, tables: ClassTables) -> dict[str, hoi_tfds.SplitFiles]:
        ann, images = os.path.join(root, "annotations"), os.path.join(root, "images")
        return {
            "train": hoi_tfds.SplitFiles(os.path.join(ann, "trainval_vcoco.json"),
                                         os.path.join(images, "train2014"), "reference",
                                         clamp=True),
            "test": hoi_tfds.SplitFiles(os.path.join(ann, "test_vcoco.json"),
                                        os.path.join(images, "val2014"), "reference",
                                        clamp=False),
        }
