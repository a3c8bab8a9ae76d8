"""A runner process started before it is needed (``python -m smackctl.daemon.spare``).

Starting ``python -m llama_cpp.server`` spends ~0.85 s on this machine importing it (FastAPI,
pydantic settings, numpy, the llama.cpp library) before it reads a byte of the model. The
supervisor keeps one such process with the imports done, waiting on its stdin; a load hands
it the runner's command-line flags and the runner's log, and it becomes that runner: the same
argument parsing and server as ``python -m llama_cpp.server``, minus the wait.

Order, one JSON line on stdin: ``{"args": ["--model=…", …], "log": "/…/runner-NAME.log"}``.
End of stdin without an order: exit quietly (the supervisor let it go).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys

#: what uvicorn imports only once it runs (~25 ms here, measured after an order arrived):
#: the HTTP protocol, the lifespan, the loop setup, and the IDNA codec for the host name
LATE_IMPORTS = (
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.asyncio",
    "encodings.idna",
)


def main() -> None:
    from llama_cpp.server.__main__ import main as serve  # the import the spare exists for

    for name in LATE_IMPORTS:
        with contextlib.suppress(ImportError):  # another uvicorn may lay them out otherwise
            importlib.import_module(name)

    sys.stdout.write("spare: ready\n")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        return
    order = json.loads(line)
    fd = os.open(order["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # as a runner started the usual way: stdin is /dev/null
    os.close(devnull)
    sys.argv = ["llama_cpp.server", *order["args"]]
    serve()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
