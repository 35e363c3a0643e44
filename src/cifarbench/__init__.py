"""cifarbench: a config-driven CIFAR-10 experiment runner."""

__version__ = "0.1.0"
