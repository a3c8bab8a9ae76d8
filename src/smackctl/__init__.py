"""smackctl: run local GGUF language models with llama.cpp and keep them under control."""

__all__ = ["__version__"]

__version__ = "0.1.0"
