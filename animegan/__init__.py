"""animegan: a distributed DCGAN that learns to draw 64x64 anime faces, on Ray Train with TensorFlow."""

__version__ = "0.1.0"
