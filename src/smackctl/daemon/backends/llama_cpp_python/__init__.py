"""llama-cpp-python's ``llama_cpp.server`` as a backend: ``backend`` (its argv and the
supervisor's side of it), ``runner`` (the runner program), ``patches`` and ``routes`` (what
the runner program adds to llama_cpp.server), ``words`` (what both sides share).

This ``__init__`` imports nothing: the runner program starts light.
"""
