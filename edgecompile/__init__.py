"""edgecompile: small convolutional networks from PyTorch to standalone C and firmware for ARM devices."""

__version__ = "0.1.0"
