"""What serves a model: one package or module per backend, each knowing how to start,
probe, measure and stop its runner (``base.backend_for`` picks one; the scheduler never
builds an argv).

    llama_cpp_python   llama-cpp-python's llama_cpp.server in its runner program
                       (``llama_cpp_python.runner``): one request at a time, swaps a model
                       in its warm process
    llama_server       llama.cpp's native llama-server: ``parallel`` slots with continuous
                       batching, no Python in the process

This ``__init__`` imports nothing: the runner program lives below it and starts light.
"""
