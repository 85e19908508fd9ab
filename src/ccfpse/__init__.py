"""CC-FPSE semantic image synthesis: networks, official checkpoint import, training, evaluation."""

__version__ = "0.1.0"
