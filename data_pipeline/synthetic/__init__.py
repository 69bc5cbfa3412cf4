"""The synthetic HICO-Det-style data set of `make demo`: scenes (`scene`), drawing (`draw`) and
the writer (`generate`, also `python -m data_pipeline.synthetic`)."""
