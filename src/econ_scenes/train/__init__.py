"""Training (Appendix C.3): the loop, atomic checkpoints and resume, TensorBoard logging."""

from econ_scenes.train.checkpoint import load_model, save_model
from econ_scenes.train.loop import TrainResult, train

__all__ = ["TrainResult", "load_model", "save_model", "train"]
