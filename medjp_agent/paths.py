"""Where medjp's files go and how they are replaced.

Names a user chooses (a format's name, a finalist's) become folder and file names; :func:`slug_error` says when one
cannot, and :func:`inside` builds a path from names and proves it stays under its parent, so a name like
``../../x`` or ``/abs/x`` can never write outside ``runs/``. :func:`replace_text` writes a file so that a kill at
any moment leaves either the old content or the new, never a truncated mix. :func:`folder_write_error` proves an
output folder writable while flags are read, before the work whose files it will hold. :func:`medjp_home` is where
medjp keeps its caches.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path

from medjp_agent.errors import ConfigError

#: A name that is safe as one path component on every OS: a letter, digit or ``_`` first, then those and ``. - + ·``
#: (:func:`medjp_agent.naming.format_name` joins axis values with ``·``).
SLUG = re.compile(r"\w[\w.+·-]*")
#: Bytes a name may take: a file name holds 255, and names get suffixes (``-direct``, ``.json``: 12 bytes).
MAX_NAME_BYTES = 240


def slug_error(name: object) -> str | None:
    """Why ``name`` cannot name a file or folder, or None when it can."""
    if isinstance(name, str) and SLUG.fullmatch(name) and len(name.encode()) <= MAX_NAME_BYTES:
        return None
    return (f"{name!r} is not a slug: it names files and folders, so it must start with a letter, digit or '_' and "
            f"hold only those and '.', '-', '+', '·' (at most {MAX_NAME_BYTES} bytes; no '/', '\\' or spaces)")


def inside(parent: str | Path, *names: str) -> Path:
    """``parent / names...``, refused (a :class:`ConfigError`) when it would resolve outside ``parent``."""
    base = Path(parent)
    path = base.joinpath(*names)
    # Lexical (abspath, not resolve): a folder the user symlinked elsewhere on purpose stays allowed.
    root, target = Path(os.path.abspath(base)), Path(os.path.abspath(path))
    if target == root or not target.is_relative_to(root):
        raise ConfigError(f"{'/'.join(names)!r} would write outside {base}: names of formats and runs must be slugs")
    return path


def folder_write_error(folder: Path) -> str | None:
    """Why files cannot be written into ``folder``, or None when they can. A missing folder is created with its
    parents, as every output folder of medjp is; the proof is a temporary file, since permission bits lie (to root,
    and on read-only or virtual file systems such as /proc)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        return "a file of that name is in the way"
    except OSError as e:
        return e.strerror or str(e)
    return None


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``: a reader, or a
    run resumed after a kill at any point here, sees the old file or the new one whole."""
    # Named per process and thread, and opened with open(): the new file gets the umask's mode like any other
    # (mkstemp's would be 0600, unreadable to the group a shared run folder is for).
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the data (power loss, not only kills)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def medjp_home() -> Path:
    """Where medjp keeps caches (tiny model, generation cache, demo adapters): ``$MEDJP_HOME`` or
    ``~/.cache/medjp``."""
    return Path(os.environ.get("MEDJP_HOME") or Path.home() / ".cache" / "medjp")
