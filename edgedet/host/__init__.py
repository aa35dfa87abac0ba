"""Companion host tools (TensorFlow): synthesize a dataset, retrain MobileNet, convert to TFLite, evaluate.

Never imported by the daemon: it needs the ``host`` extra.
"""
