"""NeuralField-LDM: generative model of 3D scenes (unofficial PyTorch implementation)."""

__version__ = "0.1.0"
