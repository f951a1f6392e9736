"""The default text corpus: the running interpreter's own standard library sources.

Every machine that runs this project has them offline, so training, calibration and evaluation need
no download. The rule (deterministic, no hand-kept list):

- every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, in sorted order of its POSIX
  relative path;
- except files below a directory named ``test``, ``tests``, ``idle_test`` (test suites, partly
  non-UTF-8 fixtures), ``site-packages`` (installed third-party code, differs per machine),
  ``__pycache__``, ``encodings`` (machine-generated codec tables) or ``config-*`` (build files), and the
  top-level ``_sysconfigdata_*.py`` (the interpreter's build paths, differs per machine).

A file is held out for evaluation when the first byte of sha256(relative path) is below 26 (about
10%): the split depends only on the path, never on file order or contents. Train and eval are the
split's files decoded as UTF-8 and joined by one newline. Calibration text comes from ``train``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
METADATA_FILE = DATA_DIR / "tiny_lm.json"

EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__", "encodings"})
EVAL_BYTE_THRESHOLD = 26  # of 256: about 10% of the files are held out


@dataclass(frozen=True)
class Corpus:
    train: str
    eval: str
    sha256: str  # see corpus_sha256
    root: str
    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: str | Path) -> list[str]:
    """The sorted POSIX relative paths of the corpus files under ``root`` (the module docstring's rule)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {str(root)!r} is not a directory")
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        dirs = rel.parts[:-1]
        if any(d in EXCLUDED_DIRS or d.startswith("config-") for d in dirs):
            continue
        if not dirs and rel.name.startswith("_sysconfigdata"):
            continue
        if path.is_file():
            files.append(rel.as_posix())
    return sorted(files)


def is_eval_file(relpath: str) -> bool:
    return hashlib.sha256(relpath.encode("utf-8")).digest()[0] < EVAL_BYTE_THRESHOLD


def corpus_sha256(train: str, eval: str) -> str:
    """sha256 over b"train\\0" + train + b"eval\\0" + eval (UTF-8): changes with any text or split change."""
    h = hashlib.sha256()
    h.update(b"train\0" + train.encode("utf-8"))
    h.update(b"eval\0" + eval.encode("utf-8"))
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def build_corpus(root: str) -> Corpus:
    files = corpus_files(root)
    if not files:
        raise ValueError(f"no corpus files (*.py) under {root!r}")
    train_files = tuple(f for f in files if not is_eval_file(f))
    eval_files = tuple(f for f in files if is_eval_file(f))
    read = lambda rel: (Path(root) / rel).read_text(encoding="utf-8")  # noqa: E731
    train = "\n".join(read(f) for f in train_files)
    held_out = "\n".join(read(f) for f in eval_files)
    return Corpus(train=train, eval=held_out, sha256=corpus_sha256(train, held_out), root=root,
                  train_files=train_files, eval_files=eval_files)


def recorded_sha256() -> str | None:
    """The corpus sha256 the shipped weights were trained and measured on, if they are shipped."""
    if not METADATA_FILE.is_file():
        return None
    return json.loads(METADATA_FILE.read_text(encoding="utf-8"))["corpus"]["sha256"]


def default_corpus(*, check: bool = True) -> Corpus:
    """The stdlib corpus of this interpreter; warns (``check``) when it is not the one the shipped model saw."""
    corpus = build_corpus(str(stdlib_root()))
    recorded = recorded_sha256() if check else None
    if recorded is not None and recorded != corpus.sha256:
        warnings.warn(
            f"this interpreter's standard library (sha256 {corpus.sha256[:12]}…) is not the corpus the "
            f"shipped tiny LM was trained and measured on (sha256 {recorded[:12]}…); perplexities will "
            "differ from the documented figures", RuntimeWarning, stacklevel=2)
    return corpus
