"""edgedet: classify camera frames with a TFLite MobileNet on a Raspberry Pi (CPU or Coral Edge TPU)."""

__version__ = "0.1.0"
