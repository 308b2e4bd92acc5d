"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file written as ``path`` + a temporary suffix, flushed to disk and renamed to
    ``path`` when the block ends; on any error the temporary file is removed."""
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, mode) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
