"""rsctool: respiratory-sound classification from the command line."""

__version__ = "0.1.0"
