"""The MATLAB input files of the official HICO-Det evaluation (ho-rcnn `eval_one.m`).

`eval_one.m` (format 'obj') reads one file per object category, `detections_XX.mat`, holding
`all_boxes`: a cell array {HOI classes of that object, test images}; cell {h, i} is an [N, 9]
double matrix of rows [h_x1 h_y1 h_x2 h_y2 o_x1 o_y1 o_x2 o_y2 score], boxes 0-based (eval_one
adds 1). We write what PPDM's `Generate_detection.m` writes: boxes rounded, scores x 1000, at most
19,999 detections per class (`hico_official.prepare_detections`), rows of a cell in descending
score.

Numbering. eval_one.m looks an HOI class's object up in the COCO object list
(`get_list_coco_obj`: person, bicycle, car, ..., toothbrush) and opens
`detections_<its 1-based position, two digits>.mat`; row h of `all_boxes` is the h-th HOI class
of that object in the official HOI order. Our object indices follow the same COCO order
(`ClassTables.objects`, person = 0), so XX = object index + 1: detections_01 is person (HOIs
161-170, 1-based), detections_05 airplane (HOIs 1-10), as in PPDM's tables. HICO's 600 classes
are contiguous per object (sorted by object in the official order); `object_hoi_ranges` checks it.
Empty cells are written as 0 x 9 matrices (`isempty` is true for them, as for MATLAB's []).
"""
import os
from typing import Mapping, Sequence

import numpy as np
import scipy.io

from hoiclip_jax.eval.protocols import anno_mat
from hoiclip_jax.eval.protocols import hico_official as official


def detection_file_name(obj: int) -> str:
    """File of object index `obj` (0-based, COCO order): detections_<obj + 1, 2 digits>.mat."""
    return f"detections_{obj + 1:02d}.mat"


def object_hoi_ranges(hoi_to_obj: np.ndarray) -> list[tuple[int, int, int]]:
    """(object index, first HOI class, end HOI class) per object, in object order.

    Raises ValueError when an object has no HOI class or its classes are not contiguous.
    """
    hoi_to_obj = np.asarray(hoi_to_obj, np.int64)
    ranges = []
    for obj in range(int(hoi_to_obj.max()) + 1):
        classes = np.flatnonzero(hoi_to_obj == obj)
        if len(classes) == 0 or classes[-1] - classes[0] + 1 != len(classes):
            raise ValueError(f"HOI classes of object {obj} are not one contiguous non-empty "
                             f"range ({classes.tolist()}): the MATLAB file layout needs that")
        ranges.append((obj, int(classes[0]), int(classes[-1]) + 1))
    return ranges


def write_detection_files(dets: official.Detections, out_dir: str, num_images: int,
                          hoi_to_obj: np.ndarray) -> list[str]:
    """Writes the 80 `detections_XX.mat` files of official-form detections.

    Args:
      dets: `hico_official.prepare_detections` output (rounded, scaled, capped, 0-based).
      out_dir: folder, created if needed; existing detection files are overwritten.
      num_images: number of test images (columns of `all_boxes`; 9,658 for anno_bbox.mat).
      hoi_to_obj: [K] object index of each HOI class.

    Returns:
      The paths written, in object order.

    scipy writes cell arrays one cell at a time: the 600 x 9,658 cells of the HICO test set take
    about 2 minutes on 2 CPU cores (30 MB, zlib-compressed).
    """
    os.makedirs(out_dir, exist_ok=True)
    order = np.lexsort((dets.image, dets.cls))  # stable: a cell keeps the rows' order
    dets = official.subset(dets, order)
    rows = np.concatenate([dets.sub, dets.obj, dets.score[:, None]], axis=1)
    key = dets.cls * num_images + dets.image
    starts = np.flatnonzero(np.diff(key, prepend=-1))
    ends = np.append(starts[1:], len(key))[:len(starts)]
    paths = []
    for obj, first, end in object_hoi_ranges(hoi_to_obj):
        cells = np.empty((end - first, num_images), object)
        cells.fill(np.zeros((0, 9)))
        lo, hi = np.searchsorted(key[starts], [first * num_images, end * num_images])
        for s, e in zip(starts[lo:hi], ends[lo:hi]):
            cells[dets.cls[s] - first, dets.image[s]] = rows[s:e]
        path = os.path.join(out_dir, detection_file_name(obj))
        scipy.io.savemat(path, {"all_boxes": cells}, do_compression=True)
        paths.append(path)
    return paths


def read_detection_files(folder: str, hoi_to_obj: np.ndarray,
                         num_images: int) -> official.Detections:
    """Reads `detections_XX.mat` files (ours or another method's) as official-form detections.

    Returns:
      `Detections` in file order (class, image, cell row), ready for
      `hico_official.evaluate_official`.
    """
    parts = []
    for obj, first, end in object_hoi_ranges(hoi_to_obj):
        path = os.path.join(folder, detection_file_name(obj))
        cells = np.asarray(anno_mat.load_mat(path, "all_boxes")["all_boxes"], object)
        if cells.shape != (end - first, num_images):
            raise ValueError(f"{path}: field 'all_boxes' has shape {cells.shape}, expected "
                             f"({end - first} HOI classes, {num_images} images)")
        sizes = np.fromiter((np.size(c) for c in cells.flat), np.int64, cells.size)
        for flat in np.flatnonzero(sizes):  # C order: class, then image
            h, i = divmod(int(flat), num_images)
            cell = np.asarray(cells[h, i], np.float64)
            if cell.ndim != 2 or cell.shape[1] != 9:
                raise ValueError(f"{path}: field 'all_boxes{{{h + 1},{i + 1}}}' has shape "
                                 f"{cell.shape}, expected [N, 9]")
            parts.append((first + h, i, cell))
    if not parts:
        return official.Detections(np.zeros(0, np.int64), np.zeros(0, np.int64),
                                   np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0))
    rows = np.concatenate([c for _, _, c in parts])
    sizes = [len(c) for _, _, c in parts]
    dets = official.Detections(np.repeat([i for _, i, _ in parts], sizes).astype(np.int64),
                               np.repeat([k for k, _, _ in parts], sizes).astype(np.int64),
                               rows[:, 0:4], rows[:, 4:8], rows[:, 8])
    # Files come in object order; classes in HOI order (stable: cells keep their row order).
    return official.subset(dets, np.lexsort((dets.image, dets.cls)))


def export_predictions(predictions: Mapping[str, Mapping], file_names: Sequence[str],
                       out_dir: str, hoi_to_obj: np.ndarray,
                       max_per_class: int = official.MAX_PER_CLASS) -> list[str]:
    """Our per-image predictions (keyed by file name, see
    `hico_official.detections_from_predictions`) to the 80 files, as PPDM's converter does.

    `file_names` is the official image order (`read_anno_bbox(...).file_names`, 9,658 names):
    column i of `all_boxes` is image file_names[i].
    """
    dets = official.detections_from_predictions(predictions, file_names, len(hoi_to_obj))
    dets = official.prepare_detections(dets, max_per_class)
    return write_detection_files(dets, out_dir, len(file_names), hoi_to_obj)
