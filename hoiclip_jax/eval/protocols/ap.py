"""11-point VOC average precision for many classes at once, bit-exact with the reference loop.

The reference (`voc_ap` of the HICO evaluator, fixture README rule 4) computes, per class,

    ap = 0.
    for t in np.arange(0., 1.1, 0.1):
        p = max(prec[rec >= t]) if any(rec >= t) else 0
        ap = ap + p / 11.

`np.arange` makes three thresholds slightly larger than their decimal value (0.30000000000000004,
0.6000000000000001, 0.7000000000000001), so a recall of exactly 0.3, 0.6 or 0.7 does not reach
them, and the step-by-step sum can give 1.0000000000000002. We keep the same thresholds and the
same float64 operations in the same order, only applied to every class in one array operation.
"""
import numpy as np

VOC11_THRESHOLDS = np.arange(0., 1.1, 0.1)


def precision_recall(tp: np.ndarray, starts: np.ndarray,
                     n_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision inside each class segment.

    Args:
      tp: [R] bool, the predictions of all classes, grouped by class (segments) and sorted by
        descending score inside a segment; True for a true positive.
      starts: [S] int, strictly increasing start of each segment (starts[0] == 0).
      n_gt: [S] int > 0, number of GT instances of each segment's class.

    Returns:
      rec, prec: [R] float64, tp_cum / n_gt and tp_cum / (tp_cum + fp_cum) where the cumulative
      sums restart at every segment (the reference's `np.cumsum` over one class).
    """
    sizes = np.diff(np.append(starts, len(tp)))
    segment = np.repeat(np.arange(len(starts)), sizes)
    tp = tp.astype(np.int64)
    cum = np.cumsum(tp)
    tp_cum = cum - (cum - tp)[starts][segment]
    fp_cum = np.arange(1, len(tp) + 1) - np.repeat(starts, sizes) - tp_cum
    # int64 / int64 -> float64, the same conversions as the reference's arrays of Python ints.
    rec = tp_cum / np.asarray(n_gt, np.int64)[segment]
    prec = tp_cum / (fp_cum + tp_cum)
    return rec, prec


def voc11_ap(rec: np.ndarray, prec: np.ndarray, starts: np.ndarray,
             thresholds: np.ndarray = VOC11_THRESHOLDS) -> np.ndarray:
    """[S] float64 11-point AP of each segment (see the module docstring).

    Args:
      rec, prec: [R] from `precision_recall` (recall non-decreasing inside a segment).
      starts: [S] int, strictly increasing segment starts, starts[0] == 0, every segment
        non-empty.
      thresholds: [11] recall thresholds, summed in this order; the default is the python
        reference's `np.arange(0., 1.1, 0.1)` (MATLAB's `0:0.1:1` differs at 0.6 and 0.7:
        `hico_official.MATLAB_THRESHOLDS`).
    """
    ap = np.zeros(len(starts))
    if len(starts) == 0:
        return ap
    for t in thresholds:
        # prec >= 0, so a 0 in place of the entries below the threshold changes no maximum and
        # gives the reference's p = 0 when no entry reaches it.
        p = np.maximum.reduceat(np.where(rec >= t, prec, 0.0), starts)
        ap = ap + p / 11.
    return ap
