"""The runner program:
``python -m smackctl.daemon.backends.llama_cpp_python.runner [--spare | FLAG…]``.

It serves one model with llama_cpp.server's own app, settings and flags (the same as
``python -m llama_cpp.server FLAG…``), and adds one route, ``POST /smackctl/load``, so that
the process can take another model when the supervisor unloads the one it holds: a swap
then happens in a warm process, as llama_cpp.server's ``--config_file`` swaps do, instead of
paying a new process's start (measured in BENCHMARKS.md, line 4).

Its bearer key comes from the environment (``SMACKCTL_RUNNER_KEY``, removed from it once
read) or from the spare's order, never from the command line, which any local user can read
in ``ps``; it is compared in constant time, on llama_cpp.server's routes too. Its log folder
is fixed at start (``SMACKCTL_RUNNER_LOGS``): an order names a file in it, never a path.

``--spare``: import everything (~0.85 s here: FastAPI, pydantic settings, numpy, the llama.cpp
library), print ``spare: ready`` and wait on stdin for one order, a JSON line
``{"args": [FLAG…], "log": "runner-NAME.log", "key": KEY}``; then serve as above. End of stdin
without an order: exit quietly (the supervisor let it go).

``POST /smackctl/load`` (the runner's own bearer key), body
``{"args": [FLAG…], "log": "runner-NAME.log", "keep_old": BOOL}``: with every request of the
app held off (llama_cpp.server's own locks), free the model and load the one ``args`` names,
on the event loop's thread as llama_cpp.server loads; 200 once it answers, 400 for flags it
cannot read, 409 when they change a server setting (a fresh process is needed), 500 with llama.cpp's
error when the load fails (the process then holds no model and the supervisor ends it).
``log``: the output goes to that file of the log folder from then on.

``keep_old`` (only when memory has room for both models, which the supervisor decides):
load first and free the old model later, on ``POST /smackctl/free``, which the supervisor
sends once the new model's first request is answered. Freeing Gemma 3's 262k-token
vocabulary takes 50-80 ms here; before a load it adds that to the swap, and beside a load
it slowed the load by as much (measured: both in BENCHMARKS.md). A load frees whatever is
still kept first.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from typing import Any

from . import patches
from .routes import add_routes, parser, redirect_output, settings
from .words import KEY_ENV, log_path, same_key

__all__ = ["main", "serve", "spare"]

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


def _constant_time_auth(key: str) -> Any:
    """llama_cpp.server's own key check compares with ``==``: this one, in constant time,
    replaces it on every route that depends on it."""
    from fastapi import Depends, HTTPException
    from llama_cpp.server import app as llama_app

    bearer = Depends(llama_app.bearer_scheme)

    async def authenticate(authorization: Any = bearer) -> bool:
        given = f"Bearer {authorization.credentials}" if authorization else None
        if not same_key(given, key):
            raise HTTPException(status_code=401, detail="Invalid API key")
        return True

    return authenticate


def serve(args: list[str], key: str | None = None) -> None:
    import uvicorn
    from llama_cpp.server import app as llama_app
    from llama_cpp.server.app import create_app

    patches.apply()
    flags = parser()
    try:
        server, model = settings(flags, args)
    except Exception as exc:  # as llama_cpp.server: the reason, then the usage
        print(exc, file=sys.stderr)
        flags.print_help()
        sys.exit(1)
    key = key or os.environ.pop(KEY_ENV, None) or server.api_key
    if key:
        server.api_key = key
    app = create_app(server_settings=server, model_settings=[model])
    if key:
        app.dependency_overrides[llama_app.authenticate] = _constant_time_auth(key)
    add_routes(app, flags, server)
    uvicorn.run(
        patches.with_cached_tokens(app),
        host=server.host,
        port=server.port,
        ssl_keyfile=server.ssl_keyfile,
        ssl_certfile=server.ssl_certfile,
    )


def spare() -> None:
    import llama_cpp.server.app  # noqa: F401  (the import the spare exists for)
    import uvicorn  # noqa: F401

    parser()  # builds the models' field tables too
    for name in LATE_IMPORTS:
        with contextlib.suppress(ImportError):  # another uvicorn may lay them out otherwise
            importlib.import_module(name)

    sys.stdout.write("spare: ready\n")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        return
    order = json.loads(line)
    redirect_output(log_path(order["log"]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # as a runner started the usual way: stdin is /dev/null
    os.close(devnull)
    serve(list(order["args"]), order.get("key"))


def main() -> None:
    if sys.argv[1:] == ["--spare"]:
        spare()
    else:
        serve(sys.argv[1:])


if __name__ == "__main__":
    main()
