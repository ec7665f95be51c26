"""Deleting local folders: only ever inside the folder the caller owns.

Scratch folders, model caches and checkpoint copies are built from names that came from outside (run ids,
config values, store keys). A name that slipped through as `/abs/path` or `../x` would turn a cleanup into the
deletion of someone else's files, so every recursive delete goes through `remove_tree`, which resolves both
paths (symlinks included) and refuses anything that is not strictly below the owner.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path


class UnsafeRemoval(ValueError):
    """A recursive delete was asked for a path outside the folder that owns it; nothing was deleted."""


class UnsafeScratchFolder(PermissionError):
    """A shared scratch folder in the system temp dir is not this user's private folder; nothing was written."""


def private_scratch_root(name: str) -> Path:
    """`<system temp dir>/<name>`, a scratch root reused by every process of this user (so a later run finds
    what an earlier one left there, e.g. the detached servers' state), made as private as `mkdtemp` makes its
    folders: created with mode 0700, and refused unless it is a real folder (not a symlink) owned by this user.

    The name is predictable, so on a shared machine another user could create it first (to read or plant files):
    that folder is refused with UnsafeScratchFolder, never used. A folder of ours with looser permissions (made
    by an older version) is tightened to 0700.
    """
    root = Path(tempfile.gettempdir()) / name
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(root)
    fix = "remove it or point toaflow at a folder of your own (TOAFLOW_WORKDIR, training.common.work_dir)"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeScratchFolder(f"scratch folder {root} is a symbolic link or not a folder; {fix}")
    if hasattr(os, "getuid"):
        if info.st_uid != os.getuid():
            raise UnsafeScratchFolder(f"scratch folder {root} belongs to another user (uid {info.st_uid}); {fix}")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(root, 0o700)
    return root


def is_inside(path: str | os.PathLike, owner: str | os.PathLike) -> bool:
    """True when `path` resolves to a place strictly below `owner` (both resolved, symlinks followed)."""
    resolved, root = Path(path).resolve(), Path(owner).resolve()
    return resolved != root and root in resolved.parents


def remove_tree(path: str | os.PathLike, owner: str | os.PathLike, *, missing_ok: bool = True,
                ignore_errors: bool = False) -> None:
    """`shutil.rmtree(path)`, but only when `path` lies strictly inside `owner`; UnsafeRemoval otherwise.

    A symlink is never followed out of `owner` (its target is what the check sees); a missing path is fine when
    `missing_ok` (the default). `ignore_errors` is rmtree's (errors of the deletion itself, never of the check).
    """
    path = Path(path)
    if not is_inside(path, owner):
        raise UnsafeRemoval(f"refusing to delete '{path}': it is not inside '{owner}', the folder this cleanup owns")
    if not path.exists() and not path.is_symlink():
        if missing_ok:
            return
        raise FileNotFoundError(path)
    if path.is_symlink():  # inside the owner, pointing inside it too: drop the link, never its target
        path.unlink()
        return
    shutil.rmtree(path, ignore_errors=ignore_errors)
