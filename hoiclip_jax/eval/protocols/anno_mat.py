"""Reading the HICO-Det release's MATLAB files for the official protocol: `anno_bbox.mat` (the
boxes and HOIs of each image, as ho-rcnn's `eval_one.m` reads them) and `anno.mat` (the image-level
HOI labels of the Known-Object setting). Errors name the file, the image and the field."""
import numpy as np
import scipy.io

from hoiclip_jax.eval.protocols.hico_official import ImageLabels, OfficialGt


def read_anno_bbox(path: str, split: str = "test") -> OfficialGt:
    """Reads `bbox_<split>` of `anno_bbox.mat` (the official GT): invis HOIs skipped.

    Layout: struct array with `filename`, `size`, `hoi`; `hoi` a struct array with `id` (1-based
    HOI id), `bboxhuman` / `bboxobject` (struct arrays of x1, y1, x2, y2), `connection` ([k, 2]
    1-based (human, object) indices) and `invis`.
    """
    var = f"bbox_{split}"
    entries = _structs(load_mat(path, var)[var], path, var)
    names, rows = [], []
    for i, entry in enumerate(entries):
        where = f"{var}({i + 1})"
        names.append(_string(_field(entry, "filename", path, where), path, f"{where}.filename"))
        hois = _structs(_field(entry, "hoi", path, where), path, f"{where}.hoi")
        for j, hoi in enumerate(hois):
            rows.extend(_hoi_pairs(hoi, i, path, f"{where}.hoi({j + 1})"))
    image, cls, sub, obj = (np.array([r[k] for r in rows]) for k in range(4))
    return OfficialGt(tuple(names), image.astype(np.int64).reshape(-1),
                      cls.astype(np.int64).reshape(-1), sub.reshape(-1, 4).astype(np.float64),
                      obj.reshape(-1, 4).astype(np.float64))


def read_anno_image_labels(path: str, split: str = "test") -> ImageLabels:
    """Reads `list_<split>` (cell of file names) and `anno_<split>` ([K, N]) of `anno.mat`."""
    list_var, anno_var = f"list_{split}", f"anno_{split}"
    mat = load_mat(path, list_var, anno_var)
    names = tuple(_string(c, path, f"{list_var}{{{k + 1}}}")
                  for k, c in enumerate(np.asarray(mat[list_var], object).ravel(order="F")))
    labels = np.asarray(mat[anno_var], np.float64)
    if labels.ndim != 2 or labels.shape[1] != len(names):
        raise ValueError(f"{path}: field '{anno_var}' has shape {labels.shape}, expected "
                         f"[num HOIs, {len(names)}] (one column per entry of '{list_var}')")
    return ImageLabels(names, labels)


def load_mat(path: str, *names: str) -> dict:
    """`names` from the .mat file `path` (loadmat, no squeezing, structs as `mat_struct`)."""
    try:
        mat = scipy.io.loadmat(path, variable_names=list(names), squeeze_me=False,
                               struct_as_record=False)
    except (OSError, ValueError, NotImplementedError) as e:
        raise ValueError(f"{path}: cannot read as a MATLAB v5 .mat file: {e}") from None
    for name in names:
        if name not in mat:
            raise ValueError(f"{path}: no field '{name}' (has "
                             f"{sorted(k for k in mat if not k.startswith('__'))})")
    return mat


def _structs(value, path: str, where: str) -> list:
    """A MATLAB struct array (loadmat object array of mat_struct) as a list, column-major."""
    value = np.asarray(value, object)
    items = list(value.ravel(order="F"))
    if not all(isinstance(x, scipy.io.matlab.mat_struct) for x in items):
        raise ValueError(f"{path}: field '{where}' must be a struct array")
    return items


def _field(struct, name: str, path: str, where: str):
    if name not in struct._fieldnames:
        raise ValueError(f"{path}: '{where}' has no field '{name}' (has {struct._fieldnames})")
    return getattr(struct, name)


def _string(value, path: str, where: str) -> str:
    flat = np.asarray(value).ravel()
    if flat.size != 1 or not isinstance(flat[0], str):
        raise ValueError(f"{path}: field '{where}' must be a string, got {value!r}")
    return str(flat[0])


def _number(value, path: str, where: str) -> float:
    flat = np.asarray(value, np.float64).ravel()
    if flat.size != 1 or not np.isfinite(flat[0]):
        raise ValueError(f"{path}: field '{where}' must be one finite number, got {value!r}")
    return float(flat[0])


def _hoi_pairs(hoi, image: int, path: str, where: str) -> list:
    """(image, class, human box, object box) for each connection row of a visible HOI."""
    if _number(_field(hoi, "invis", path, where), path, f"{where}.invis") != 0:
        return []
    hoi_id = _number(_field(hoi, "id", path, where), path, f"{where}.id")
    if hoi_id < 1 or hoi_id != int(hoi_id):
        raise ValueError(f"{path}: field '{where}.id' must be a 1-based HOI id, got {hoi_id}")
    humans = _boxes(_field(hoi, "bboxhuman", path, where), path, f"{where}.bboxhuman")
    objects = _boxes(_field(hoi, "bboxobject", path, where), path, f"{where}.bboxobject")
    conn = np.asarray(_field(hoi, "connection", path, where), np.float64)
    if conn.size % 2 or (conn.ndim == 2 and conn.size and conn.shape[1] != 2):
        raise ValueError(f"{path}: field '{where}.connection' must be [k, 2], got {conn.shape}")
    conn = conn.reshape(-1, 2)
    bad = (conn < 1) | (conn != np.floor(conn)) | (conn > [len(humans), len(objects)])
    if bad.any():
        raise ValueError(f"{path}: field '{where}.connection' row {np.flatnonzero(bad.any(1))[0]}"
                         f" does not index bboxhuman ({len(humans)}) / bboxobject "
                         f"({len(objects)}): {conn.tolist()}")
    conn = conn.astype(np.int64) - 1
    return [(image, int(hoi_id) - 1, humans[h], objects[o]) for h, o in conn]


def _boxes(value, path: str, where: str) -> np.ndarray:
    """[m, 4] float64 xyxy of a struct array with fields x1, y1, x2, y2."""
    structs = _structs(value, path, where) if np.asarray(value).size else []
    return np.array([[_number(_field(s, k, path, f"{where}({i + 1})"), path,
                              f"{where}({i + 1}).{k}") for k in ("x1", "y1", "x2", "y2")]
                     for i, s in enumerate(structs)], np.float64).reshape(-1, 4)
