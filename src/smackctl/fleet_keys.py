"""A member's nkey: the seed file it logs in to the fleet's NATS server with
(``fleet.credentials.nkey_file``), made by ``smackctl fleet nkey FILE``. The seed is the
secret and stays in its file (only its owner may read it); its public key goes in the NATS
server's ``authorization``. NATS's own ``nkeys`` library signs and encodes (Ed25519)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from smackctl.errors import UsageError

__all__ = ["exposed", "make_seed", "public_key"]

_HINT = "write one with `smackctl fleet nkey FILE`, and put its public key in the NATS server's "
_HINT += "authorization: users = [{nkey: U…}]"


def public_key(path: str | Path) -> str:
    """The public key (``U…``) of the user seed in ``path``; UsageError, naming the fix, for
    a file that cannot be read or is not a user's seed."""
    import nkeys

    try:
        seed = Path(path).expanduser().read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"the fleet's nkey_file {path} cannot be read ({exc.strerror})",
                         _HINT) from exc  # fmt: skip
    try:
        if not seed.startswith(b"SU"):
            raise nkeys.ErrInvalidSeed()
        return str(nkeys.from_seed(bytearray(seed)).public_key.decode())
    except (nkeys.NkeysError, ValueError) as exc:
        raise UsageError(f"the fleet's nkey_file {path} holds no user's nkey seed (SU…)",
                         _HINT) from exc  # fmt: skip


def make_seed(path: str | Path) -> str:
    """A new user seed, written to ``path`` (which must not exist) for its owner alone; its
    public key."""
    import nkeys

    target = Path(path).expanduser()
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise UsageError(f"{target} exists", "give another path, or remove it") from exc
    except OSError as exc:
        raise UsageError(f"{target} cannot be written ({exc.strerror})",
                         "give a path in a folder you can write") from exc  # fmt: skip
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(seed + b"\n")
    except OSError as exc:  # a disk full: no half seed left behind
        target.unlink(missing_ok=True)
        raise UsageError(f"{target} cannot be written ({exc.strerror})",
                         "free some space, or give another path") from exc  # fmt: skip
    return public_key(target)


def exposed(path: str | Path) -> str | None:
    """What to say of a seed file others may read (a secret, as an ssh key), or None."""
    try:
        mode = Path(path).expanduser().stat().st_mode
    except OSError:
        return None
    if mode & 0o077:
        return f"the nkey seed {path} can be read by others: chmod 600 {path}"
    return None
