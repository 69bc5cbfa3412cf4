"""Evaluation and inference: one prediction path (top-k, NMS, training-free enhancement) used
by the evaluator, `Predictor` and `predict`, and the protocol registry with the HICO-Det and
V-COCO protocols (`protocols/`)."""
