"""Evaluation suite: ADM-compatible FID / sFID / IS / precision / recall (evaluator.py), reference batches
(make_reference.py), and the embedded digits metric (digits_metric.py). The metric math lives in metrics.py.
"""
