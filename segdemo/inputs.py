"""The images named on a command line: files, folders and glob patterns -> one sorted list.

    >>> found = expand_inputs(["photos/", "extra/*.png", "one.jpg"], recursive=True)
    >>> [(i.name, str(i.path)) for i in found.images][:2]
    [('street/a', 'photos/street/a.jpg'), ('street/b', 'photos/street/b.jpg')]

Each argument is, in this order of checks:

* an existing **folder**: the image files in it (by suffix, :data:`IMAGE_SUFFIXES`, any
  case), sorted by name; with ``recursive`` also those of its subfolders (symbolic links
  to folders are followed; a link back to a folder being walked is a symlink loop,
  reported and not entered). Hidden entries (``.name``) are left out, and so is
  ``exclude`` (the output folder, when it lies inside an input folder). Files of other
  suffixes are listed in :attr:`Expansion.skipped`, not read;
* a **glob pattern** (``*``, ``?``, ``[``; ``**`` spans folders) that names no existing
  path: its matches, sorted; matched folders are walked as above;
* anything else is a **file** and is tried whatever its suffix (a missing one fails
  later, when it is read, with the reader's one-line message).

Output names: a file argument's is its stem (``a.jpg`` -> ``a``); a folder's (or a
pattern's) images keep their path relative to the folder (or to the pattern's folder
part) without the suffix (``photos/street/a.jpg`` -> ``street/a``), so two ``a.jpg`` in
different folders do not collide. A name already taken gets ``_2``, ``_3``... in list
order. An image reached twice (two arguments, or two links to one file) is listed once,
under its first name. The list is a function of the arguments and the files only, so
every process of a distributed run builds the same one.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segdemo.errors import SegdemoError

IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".apng",
        ".webp",
        ".bmp",
        ".dib",
        ".gif",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
    }
)
"""Suffixes (lower case) of the files taken from folders and patterns."""

GLOB_CHARACTERS = frozenset("*?[")


class NoImagesError(SegdemoError):
    """The arguments name no image at all; the message says where it looked and what to do."""


@dataclass(frozen=True)
class InputImage:
    """One image to process.

    Attributes:
        path: the file to read (as reached from the argument, links not resolved).
        name: output name: a relative POSIX path without suffix (``"street/a"``), unique
            within the expansion; results go to ``OUT/<name>_labels.png`` etc.
        label: how messages call the image (a file argument's name, else ``path``).
    """

    path: Path
    name: str
    label: str


@dataclass
class Expansion:
    """What :func:`expand_inputs` found.

    Attributes:
        images: the images, in argument order, each folder's sorted by path.
        problems: one-line messages (symlink loops, broken links, unlistable folders,
            folders or patterns without images); each is a failed input.
        skipped: files in folders or matches of patterns that are not images by suffix.
        expanded: whether any argument was a folder or a pattern.
    """

    images: list[InputImage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    expanded: bool = False


def expand_inputs(
    arguments: Sequence[str | os.PathLike],
    *,
    recursive: bool = False,
    exclude: str | os.PathLike | None = None,
) -> Expansion:
    """The images named by ``arguments`` (see the module docstring).

    Args:
        arguments: file, folder or glob pattern per entry.
        recursive: also walk the subfolders of folder arguments (and of folders that a
            pattern matches).
        exclude: a folder never walked (e.g. the output folder).

    Returns:
        The :class:`Expansion`; a folder or pattern without images adds a problem.

    Raises:
        NoImagesError: no argument gave any image and no file argument was given.
    """
    excluded = _identity(exclude) if exclude is not None and os.path.isdir(exclude) else None
    walker = _Walker(recursive, excluded)
    taken: set[str] = set()
    seen: set[tuple[int, int] | str] = set()
    found = Expansion()
    for argument in arguments:
        text = os.fspath(argument)
        path = Path(text)
        if path.is_dir():
            found.expanded = True
            entries = walker.folder(path, found)
            if not entries:
                found.problems.append(_empty_folder_message(path, recursive))
        elif _is_pattern(text) and not os.path.lexists(text):
            found.expanded = True
            entries = _pattern(text, walker, found)
            if entries is None:
                found.problems.append(f"{text}: no file matches this pattern; check the pattern")
                continue
            if not entries:
                found.problems.append(f"{text}: the matches hold no image files")
        else:
            entries = [(path, path.stem, path.name)]
        for file, stem, label in entries:
            key = _file_key(file)
            if key in seen:
                continue
            seen.add(key)
            found.images.append(InputImage(file, _unique(stem, taken), label))
    if not found.images:
        raise NoImagesError(
            "; ".join(found.problems)
            or "no images given; name image files, folders or patterns such as photos/*.jpg"
        )
    return found


# --------------------------------------------------------------------------- folders


class _Walker:
    """Sorted folder listings with symlink-loop detection."""

    def __init__(self, recursive: bool, exclude: tuple[int, int] | None) -> None:
        self.recursive = recursive
        self.exclude = exclude
        self.visited: set[tuple[int, int]] = set()

    def folder(self, root: Path, found: Expansion) -> list[tuple[Path, str, str]]:
        """``(file, output name, label)`` of the images under ``root``."""
        out: list[tuple[Path, str, str]] = []
        self._walk(root, root, [], found, out)
        return out

    def _walk(
        self,
        root: Path,
        folder: Path,
        ancestors: list[tuple[int, int]],
        found: Expansion,
        out: list[tuple[Path, str, str]],
    ) -> None:
        identity = _identity(folder)
        if identity in ancestors:
            found.problems.append(
                f"{folder}: symlink loop (it leads back to a folder being walked); "
                "remove or fix the link"
            )
            return
        if identity in self.visited or identity == self.exclude:
            return  # reached again through another link: its images are listed already
        self.visited.add(identity)
        try:
            names = sorted(entry.name for entry in os.scandir(folder))
        except OSError as err:
            found.problems.append(
                f"{folder}: cannot list this folder ({err.strerror or err}); check its permissions"
            )
            return
        subfolders = []
        for name in names:
            if name.startswith("."):
                continue  # .DS_Store, .ipynb_checkpoints, our own temporary files
            path = folder / name
            try:
                mode = os.stat(path).st_mode  # follows links
            except OSError as err:  # a link to itself or to nothing, or no permission
                found.problems.append(_link_message(path, err))
                continue
            if stat.S_ISDIR(mode):
                subfolders.append(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                relative = path.relative_to(root)
                out.append((path, relative.with_suffix("").as_posix(), str(path)))
            else:
                found.skipped.append(path)
        if self.recursive:
            for sub in subfolders:
                self._walk(root, sub, [*ancestors, identity], found, out)


def _link_message(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return f"{path}: symlink loop (the link leads back to itself); remove or fix the link"
    if err.errno == errno.ENOENT and path.is_symlink():
        return (
            f"{path}: broken link (its target {os.readlink(path)} does not exist); remove or fix it"
        )
    return f"{path}: cannot read it ({err.strerror or err}); check its permissions"


def _empty_folder_message(folder: Path, recursive: bool) -> str:
    suffixes = ", ".join(sorted(s for s in IMAGE_SUFFIXES if s in {".jpg", ".png", ".webp"}))
    hint = "" if recursive else "; add --recursive to look in its subfolders"
    return f"{folder}: no image files in this folder ({suffixes}, ...){hint}"


def _identity(path: str | os.PathLike) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _file_key(path: Path) -> tuple[int, int] | str:
    try:
        return _identity(path)
    except OSError:
        return os.path.abspath(path)  # missing or unreadable: the reader reports it


# --------------------------------------------------------------------------- patterns


def _is_pattern(text: str) -> bool:
    return any(c in GLOB_CHARACTERS for c in text)


def _pattern(text: str, walker: _Walker, found: Expansion) -> list[tuple[Path, str, str]] | None:
    """Images matched by ``text``; ``None`` when nothing matches at all."""
    matches = sorted(glob.glob(text, recursive=True))
    if not matches:
        return None
    base = _pattern_base(text)
    out: list[tuple[Path, str, str]] = []
    for match in matches:
        path = Path(match)
        if path.is_dir():
            out += [
                (file, _relative_name(file, base), label)
                for file, _, label in walker.folder(path, found)
            ]
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            out.append((path, _relative_name(path, base), str(path)))
        else:
            found.skipped.append(path)
    return out


def _pattern_base(text: str) -> Path:
    """The folder part of a pattern before its first glob character (``a/b*/c`` -> ``a``)."""
    parts = Path(text).parts
    fixed = []
    for part in parts[:-1]:
        if _is_pattern(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative_name(path: Path, base: Path) -> str:
    try:
        relative = path.relative_to(base)
    except ValueError:  # "../x*" patterns and the like: keep the file name only
        relative = Path(path.name)
    return relative.with_suffix("").as_posix()


# --------------------------------------------------------------------------- names


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... when an earlier image has it."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


__all__ = ["IMAGE_SUFFIXES", "Expansion", "InputImage", "NoImagesError", "expand_inputs"]
