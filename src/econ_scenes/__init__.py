"""econ-scenes: ECON, an Ensemble of Competing Object Networks for layered scene generation."""

__version__ = "0.1.0"
