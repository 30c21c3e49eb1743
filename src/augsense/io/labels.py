"""Labels for image folders as ImageNet and Places365 are distributed.

A file's label comes from, in this order:

- a ground-truth file, for the images lying directly in the folder (the flat validation layout):
  ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first WordNet ID of the string),
  ``places365_val.txt`` or any plain ``filename label`` text (label: a 0-based index, a WordNet ID or
  a class name), or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (1-based ILSVRC2012 ids,
  one line per ``ILSVRC2012_val_%08d`` file) with its ``meta.mat`` beside it;
- its class folder: an integer name is the index itself; otherwise the longest leading part of the
  folder path that names a class of the class list — ``LOC_synset_mapping.txt`` / ``synset_words.txt``
  (``n01440764 tench, Tinca tinca``, one line per class in index order), ``categories_places365.txt``
  (``/a/airfield 0``: folders ``a/airfield`` or ``airfield``, ``a/apartment_building/outdoor``) or,
  without such a file, the model's class names (spaces or underscores).

Label files are looked for in the folder and up to four folders above it (the Kaggle layout keeps
them beside ``ILSVRC/``), or given explicitly (config ``label_files``). The search stops at the
first folder holding any of the known names, so a file further up (another data set's) never mixes
with the folder's own; the files used are said on the console and recorded in run.json
(``images.label_files``), so a wrong one is visible. Torchvision ships the 1000
ImageNet class *names* but no WordNet IDs, so WordNet-ID folders need the mapping file, except when
all 1000 are present: then they are numbered in sorted order, the ImageFolder convention that
the ImageNet class indices follow.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from augsense.errors import AugsenseError

#: Class lists, by file name.
MAPPING_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "categories_places365.txt")
#: Ground-truth files for a flat folder, by file name (a plain "filename label" text may be given explicitly).
TRUTH_FILES = ("LOC_val_solution.csv", "places365_val.txt", "ILSVRC2012_validation_ground_truth.txt")
#: How many folders above the image folder are searched for label files.
SEARCH_UP = 4
WNID = re.compile(r"^n\d{8}$")


def _key(text: str) -> str:
    """A class key for matching: lower case, spaces as underscores, no surrounding slashes."""
    return text.strip().strip("/").lower().replace(" ", "_")


@dataclass
class ClassList:
    """Class index ↔ names and the keys (WordNet IDs, folder paths, names) that find an index.

    names: index → readable name; keys: normalised key → index; source: where the list came from;
    wnids: index → WordNet ID where known.
    """

    names: list[str]
    keys: dict[str, int]
    source: str
    wnids: list[str] | None = None

    def lookup(self, text: str) -> int | None:
        return self.keys.get(_key(text))


@dataclass
class FolderLabels:
    """What labels a folder: its class list and, for its flat part, a ground truth (file key → label)."""

    classes: ClassList | None = None
    truth: dict[str, int] | None = None
    truth_source: str | None = None
    notices: list[str] = field(default_factory=list)
    #: the label files used (class list first), and how many folders above the image folder they were found
    #: (0: in it or its data/ sub-folder; None: given explicitly or none found)
    files: list[Path] = field(default_factory=list)
    levels_up: int | None = None

    def describe(self, root: Path) -> str | None:
        """One line naming the label files used and where they were found, or None without any."""
        if not self.files:
            return None
        where = ("given in label_files" if self.levels_up is None else "in the image folder" if self.levels_up == 0
                 else f"found {self.levels_up} folder{'s' if self.levels_up > 1 else ''} above the image folder "
                      f"{str(root)!r}")
        return f"labels from {', '.join(str(p) for p in self.files)} ({where})"


def model_class_list(class_names: Sequence[str]) -> ClassList:
    """The model's class names as a class list (keys: names with spaces or underscores)."""
    keys: dict[str, int] = {}
    for i, name in enumerate(class_names):
        keys.setdefault(_key(name), i)
    return ClassList(list(class_names), keys, "the model's class names")


def read_synset_mapping(path: Path) -> ClassList:
    """``LOC_synset_mapping.txt`` / ``synset_words.txt``: ``n01440764 tench, Tinca tinca`` per line, in index order."""
    names, wnids, keys = [], [], {}
    for number, line in enumerate(_lines(path), start=1):
        wnid, _, words = line.partition(" ")
        if not WNID.match(wnid):
            raise AugsenseError(f"{path}: line {number} does not start with a WordNet ID (n01440764 …): {line[:60]!r}")
        index = len(names)
        names.append(words.strip() or wnid)
        wnids.append(wnid)
        keys[wnid.lower()] = index
        first = words.split(",")[0]
        if first.strip():
            keys.setdefault(_key(first), index)
    if not names:
        raise AugsenseError(f"{path} lists no classes")
    return ClassList(names, keys, str(path), wnids)


def read_places_categories(path: Path) -> ClassList:
    """``categories_places365.txt``: ``/a/airfield 0`` per line; keys ``a/airfield`` and ``airfield``."""
    entries: dict[int, str] = {}
    for number, line in enumerate(_lines(path), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise AugsenseError(f"{path}: line {number} is not '/a/airfield 0': {line[:60]!r}")
        entries[int(parts[1])] = parts[0].strip("/")
    if sorted(entries) != list(range(len(entries))):
        raise AugsenseError(f"{path}: the class indices are not 0 … {len(entries) - 1}, each once")
    names, keys = [], {}
    tails: dict[str, list[int]] = {}
    for index in range(len(entries)):
        path_parts = entries[index].split("/")
        keys[_key(entries[index])] = index
        tail = "/".join(path_parts[1:]) if len(path_parts) > 1 and len(path_parts[0]) == 1 else entries[index]
        tails.setdefault(_key(tail), []).append(index)
        names.append(tail.replace("_", " "))
    for tail, indices in tails.items():  # 'airfield' alone, when no other class shares it
        if len(indices) == 1:
            keys.setdefault(tail, indices[0])
    return ClassList(names, keys, str(path))


def read_class_list(path: Path) -> ClassList:
    """A class list from a mapping file, by its name or first line."""
    if path.name == "categories_places365.txt":
        return read_places_categories(path)
    if path.name in ("LOC_synset_mapping.txt", "synset_words.txt"):
        return read_synset_mapping(path)
    first = next(iter(_lines(path)), "")
    return read_synset_mapping(path) if WNID.match(first.split(" ")[0]) else read_places_categories(path)


def read_ground_truth(path: Path, classes: ClassList | None) -> dict[str, int]:
    """File key (name without extension, lower case) → label, from one of the ground-truth formats."""
    if path.suffix.lower() == ".csv":
        return _read_loc_solution(path, classes)
    if path.name == "ILSVRC2012_validation_ground_truth.txt":
        return _read_devkit_truth(path, classes)
    truth: dict[str, int] = {}
    for number, line in enumerate(_lines(path), start=1):
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise AugsenseError(f"{path}: line {number} is not 'filename label': {line[:60]!r}")
        name, label = parts
        truth[_file_key(name)] = _label_of(label, classes, path, number)
    return truth


def _read_loc_solution(path: Path, classes: ClassList | None) -> dict[str, int]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise AugsenseError(f"cannot read label file {str(path)!r}: {error}") from None
    header = rows[0] if rows else None
    if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise AugsenseError(f"{path}: expected the header 'ImageId,PredictionString' of LOC_val_solution.csv")
    if classes is None or classes.wnids is None:
        raise AugsenseError(f"{path} names classes by WordNet ID: put LOC_synset_mapping.txt beside it (or name it in "
                            "label_files) to number them")
    truth: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        words = row[1].split() if len(row) > 1 else []
        if not words:
            raise AugsenseError(f"{path}: line {number} has no WordNet ID")
        truth[_file_key(row[0])] = _label_of(words[0], classes, path, number)
    return truth


def _read_devkit_truth(path: Path, classes: ClassList | None) -> dict[str, int]:
    """The devkit's 1-based ILSVRC2012 ids, through ``meta.mat`` beside the file, as class indices."""
    meta = path.parent / "meta.mat"
    if not meta.is_file():
        raise AugsenseError(f"{path} holds ILSVRC2012 ids, which need the devkit's meta.mat beside it to become classes")
    from scipy.io import loadmat

    synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    ilsvrc = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    if classes is None or classes.wnids is None:  # the 1000 leaves in sorted WordNet-ID order: the class index
        order = sorted(ilsvrc.values())
        classes = ClassList(order, {w.lower(): i for i, w in enumerate(order)}, str(meta), order)
    truth: dict[str, int] = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.isdigit() or int(line) not in ilsvrc:
            raise AugsenseError(f"{path}: line {number} is not an ILSVRC2012 id of meta.mat: {line[:20]!r}")
        truth[f"ilsvrc2012_val_{number:08d}"] = _label_of(ilsvrc[int(line)], classes, path, number)
    return truth


def _label_of(text: str, classes: ClassList | None, path: Path, number: int) -> int:
    if text.isdigit():
        return int(text)
    index = classes.lookup(text) if classes is not None else None
    if index is None:
        where = f"the class list {classes.source}" if classes is not None else "no class list (LOC_synset_mapping.txt)"
        raise AugsenseError(f"{path}: line {number}: label {text!r} is not in {where}")
    return index


def _file_key(name: str) -> str:
    """A file's key in a ground truth: its name without folders and extension, lower case."""
    stem = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    return stem.rsplit(".", 1)[0].lower() if "." in stem else stem.lower()


def file_key(path: Path) -> str:
    return _file_key(path.name)


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AugsenseError(f"cannot read label file {str(path)!r}: {error}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def find_label_files(root: Path, explicit: Sequence[str] = ()) -> list[Path]:
    """The given label files, then the known names found in the first folder of root and the
    :data:`SEARCH_UP` folders above it that holds any of them (see :func:`search_label_files`)."""
    return search_label_files(root, explicit)[0]


def search_label_files(root: Path, explicit: Sequence[str] = ()) -> tuple[list[Path], int | None]:
    """(label files, how many folders above ``root`` the searched ones lie; None when none was searched out).

    The given files come first. The known names not given are looked for in ``root``, then in each
    folder above it (at most :data:`SEARCH_UP`), also in a folder's ``data/`` (the devkit layout);
    the search stops at the first folder that holds any of them, so files from two levels never mix
    and a stray file higher up is not used when the folder has its own.
    """
    found = []
    for name in explicit:
        path = Path(name)
        if not path.is_file():
            raise AugsenseError(f"label file {name!r} does not exist")
        found.append(path)
    given = {p.name for p in found}
    folders = [root, *list(root.resolve().parents)[:SEARCH_UP]]
    wanted = [name for name in MAPPING_FILES + TRUTH_FILES if name not in given]
    for level, folder in enumerate(folders):
        here = []
        for name in wanted:
            candidate = next((c for c in (folder / name, folder / "data" / name) if c.is_file()), None)
            if candidate is not None:
                here.append(candidate)
        if here:
            return found + here, level
    return found, None


def folder_labels(root: Path, label_files: Sequence[str] = (), class_names: Sequence[str] | None = None) -> FolderLabels:
    """The class list and ground truth that label the images of ``root`` (see the module docstring)."""
    files, levels_up = search_label_files(root, label_files)
    mappings = [p for p in files if p.name in MAPPING_FILES or (p.name not in TRUTH_FILES and _looks_like_mapping(p))]
    truths = [p for p in files if p not in mappings]
    labels = FolderLabels()
    if mappings:
        labels.classes = read_class_list(mappings[0])
        labels.files.append(mappings[0])
    elif class_names:
        labels.classes = model_class_list(class_names)
    if truths:
        labels.truth = read_ground_truth(truths[0], labels.classes if mappings else None)
        labels.truth_source = str(truths[0])
        labels.files.append(truths[0])
    searched = [p for p in labels.files if p not in {Path(name) for name in label_files}]
    labels.levels_up = levels_up if searched else None
    line = labels.describe(root)
    if line is not None and line not in _SAID:  # which file labels the images is never silent (once per process)
        _SAID.add(line)
        print(f"augsense: {line}" + ("; if that is not this data set's, name the right one with --label-files"
                                     if labels.levels_up else ""), file=sys.stderr)
    return labels


#: The label-file lines already printed by this process (mask, single-class … reload the run's images).
_SAID: set[str] = set()


def _looks_like_mapping(path: Path) -> bool:
    """A plain text whose first line is ``wnid words`` or ``/a/airfield 0`` is a class list."""
    first = next(iter(_lines(path)), "")
    head = first.split(" ")[0]
    return bool(WNID.match(head)) or head.startswith("/")


def wnid_classes(folders: Sequence[str], root: Path) -> ClassList:
    """WordNet-ID folders without a mapping file: numbered in sorted order when all 1000 are there, else refused."""
    wnids = sorted(set(folders))
    if len(wnids) != 1000:
        raise AugsenseError(
            f"the class folders of {str(root)!r} are WordNet IDs ({wnids[0]} …) but no LOC_synset_mapping.txt was "
            f"found in or up to {SEARCH_UP} folders above it; torchvision ships ImageNet's class names but not their "
            f"WordNet IDs, and {len(wnids)} of the 1000 classes cannot be numbered without it: put the mapping file "
            "beside the folder or name it in label_files (--label-files)")
    return ClassList(wnids, {w.lower(): i for i, w in enumerate(wnids)}, "all 1000 WordNet-ID folders in sorted order",
                     wnids)
