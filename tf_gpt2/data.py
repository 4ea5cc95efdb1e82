"""Training data: text -> uint16 token shards on disk, and windows of them as a tf.data pipeline.

`prepare` streams text files (so a corpus larger than RAM works) through the GPT-2 BPE (or a
character vocabulary for tiny demos) into shard files of raw uint16 ids plus `manifest.json`.
The last `val_fraction` of the bytes (files in the order named) is the validation split. `TokenShards` memory-maps the
shards; `TokenShards.dataset` yields (inputs, targets) windows of `block_size` tokens. Batch `s`
is a pure function of (seed, s), so a resumed run sees exactly the batches it would have seen.

A character vocabulary maps each character to its index:
>>> encode, decode = char_codec([" ", "a", "b"])
>>> encode("ab ba")
[1, 2, 0, 2, 1]
>>> decode([2, 1])
'ba'
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
import hashlib
import importlib.resources
import json
import os
import re
import secrets
import sys
import unicodedata
import warnings
import zlib
from typing import Callable, Iterator, Sequence

import numpy as np

from tf_gpt2.devices import tensorflow
from tf_gpt2.files import atomic_write, exclusive, json_writer, read_json, refuse_dangling_link
from tf_gpt2.progress import progress_bar
from tf_gpt2.tokenizer import ENDOFTEXT

MANIFEST = "manifest.json"
RUN_RECORD = "run.json"  # what `tf-gpt2 train` writes in a run directory (training.py)
TEXT_SUFFIXES = (".txt", ".txt.gz")  # what a folder given as data is read for
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
OUTPUT_KINDS = "a dataset, a training run, a checkpoint or an export"  # what `_is_output` finds
VOCABS = ("gpt2", "char")  # GPT-2 BPE, or the characters of the text
SHARD_TOKENS = 50_000_000  # 100 MB of uint16 per shard
CHUNK_BYTES = 1 << 20


def embedded_corpus() -> str:
    """Path of the corpus shipped inside the package (tinyshakespeare, public domain, gzip)."""
    return str(importlib.resources.files("tf_gpt2") / "corpora" / "tinyshakespeare.txt.gz")


def _text_size(path: str) -> tuple[int, str | None]:
    """Bytes of text in a file, and for .gz the sha256 of that text: counted by decompressing it (the trailer holds
    only the last member's size, as `cat a.gz b.gz` and pigz write several, modulo 4 GiB)."""
    if not path.endswith(".gz"):
        return os.path.getsize(path), None
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise ValueError(f"{path} is not a gzip file")
    size, digest = 0, hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(1 << 24):
                size += len(block)
                digest.update(block)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path} is not a readable gzip file: {e}") from None
    return size, digest.hexdigest()


def _holds_a_model(directory: str) -> bool:
    """A Hugging Face checkpoint (its weights) or tokenizer, an OpenAI or keras-hub checkpoint, a SavedModel version
    or a folder of versions (`tf-gpt2 export`'s), each known by files that come together."""
    def there(*names: str) -> bool:
        return all(os.path.isfile(os.path.join(directory, name)) for name in names)

    return any(there(weights) for weights in HF_WEIGHTS) or there("saved_model.pb") or \
        there("batching_parameters.txt") or there("metadata.json", "config.json", "model.weights.h5") or \
        there("tokenizer_config.json") and (there("vocab.json") or there("tokenizer.json")) or \
        there("vocab.json", "merges.txt") or \
        there("hparams.json") and bool(glob.glob(os.path.join(glob.escape(directory), "*.ckpt*.index")))


def warn_of_a_folder_of_texts(out: str, what: str) -> None:
    """A new dataset or run written into a folder of texts makes it an output, whose texts a folder given as data
    skips from then on (and a read of the folder itself refuses): said. A folder that is already an output (a
    dataset, a run) goes on without a word."""
    if not os.path.isdir(out) or _is_output(out):
        return
    texts, seen = [], {os.path.realpath(out)}
    for looked, (directory, subdirs, names) in enumerate(os.walk(out, followlinks=True)):  # (as data reads it)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and not _is_output(os.path.join(directory, d))
                            and os.path.realpath(os.path.join(directory, d)) not in seen)
        seen.update(os.path.realpath(os.path.join(directory, d)) for d in subdirs)
        texts += sorted(os.path.relpath(os.path.join(directory, n), out) for n in names
                        if n.endswith(TEXT_SUFFIXES) and not n.startswith("."))
        if len(texts) > 3 or looked == 1000:  # (enough to say; a large folder of other files is not walked whole)
            break
    if texts:
        warnings.warn(f"{out} holds texts ({', '.join(texts[:3])}{', ...' * (len(texts) > 3)}): {what} written "
                      "there makes it an output folder, which a folder given as data skips, its texts with it; give "
                      "the output a folder of its own if they are to be read", stacklevel=3)


def _holds(directory: str, marker: str, key: str) -> bool:
    """Whether `directory`'s `marker` file is a JSON object with `key` (another program's is not ours)."""
    path = os.path.join(directory, marker)
    if not os.path.isfile(path):  # (nor a pipe, which would block)
        return False
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError, RecursionError):  # unreadable, or not JSON: not ours
        return False
    return isinstance(value, dict) and key in value


def _is_run(directory: str) -> bool:
    """A training run's folder: its run.json holds settings."""
    return _holds(directory, RUN_RECORD, "settings")


def refuse_a_runs_own_dataset(out_dir: str) -> None:
    """Refuse to write into the dataset a training run made of its raw texts (RUN/data): the run resumes on it, and
    a dataset of other texts there was read as the run's texts edited (`tf-gpt2 prepare` replaced it unasked)."""
    run, name = os.path.split(os.path.abspath(out_dir))
    if name == "data" and _is_run(run):
        raise ValueError(f"{out_dir} is the dataset the training run in {run} made of its texts, which it resumes "
                         "on (and `tf-gpt2 train` makes again when they change): give this dataset a folder of its own")


def _is_output(directory: str) -> bool:
    """A folder of no training text (`OUTPUT_KINDS`): a prepared dataset (its manifest names splits), a training run
    (its record holds settings), a checkpoint or an export (`_holds_a_model`: their merges.txt or
    batching_parameters.txt is no text to learn). Another program's manifest.json or run.json does not make one."""
    return _holds_a_model(directory) or _holds(directory, MANIFEST, "splits") or _is_run(directory)


def _output_kind(directory: str) -> str | None:
    """What output of this package's `directory` holds: "a training run", "a prepared dataset", "a checkpoint or an
    export" (`_holds_a_model`), or None."""
    if not os.path.isdir(directory):
        return None
    return ("a training run" if _is_run(directory) else "a prepared dataset" if _holds(directory, MANIFEST, "splits")
            else "a checkpoint or an export" if _holds_a_model(directory) else None)


def refuse_a_dataset_or_run(directory: str, what: str) -> None:
    """Refuse to write `what` into the folder of a prepared dataset or a training run: its files mixed with theirs
    (`prepare` then refused the folder as an export's, and `generate --model RUN` read a stale copy written there
    instead of the run's model)."""
    if (kind := _output_kind(directory)) in ("a training run", "a prepared dataset"):
        raise ValueError(f"{directory} is the folder of {kind}: {what} written there would mix its files with "
                         "those; give it a folder of its own")


def refuse_another_output(directory: str) -> None:
    """Refuse a training run's folder where another output lies, a prepared dataset, a checkpoint or an export:
    the run's files went in beside theirs, and `--model` of that folder read the checkpoint there, not the run's
    model, without a word."""
    if (kind := _output_kind(directory)) not in (None, "a training run"):
        raise ValueError(f"{directory} is the folder of {kind}: a training run written there would mix its files with "
                         "those (and a model read from the folder would be theirs); give the run a folder of its own")


def _refuse_unreadable(error: OSError) -> None:
    """A folder that cannot be listed (permissions, a failing disk) is named, not skipped with its texts."""
    raise OSError(error.errno, f"{error.strerror}: its texts cannot be read", error.filename)


def _text_files_in(folder: str, exclude: set[str]) -> list[str]:
    """The text files (or links to one) under `folder`, its linked folders too (each once), without hidden names,
    the caller's `exclude` folders and the datasets and runs this package wrote; those and the other files there
    are named in a warning, not skipped without a word. A broken link named as text, or a folder that cannot be
    listed, is an error."""
    files, others, special, ours, hidden = [], [], [], [], []
    seen = {os.path.realpath(folder)}
    for directory, subdirs, names in os.walk(folder, followlinks=True, onerror=_refuse_unreadable):
        kept = []
        hidden += [os.path.join(directory, d) for d in subdirs if d.startswith(".")]
        for d in (d for d in subdirs if not d.startswith(".")):
            path, real = os.path.join(directory, d), os.path.realpath(os.path.join(directory, d))
            if real in exclude or real in seen:  # the caller's output, or a folder read already (a link's loop)
                continue
            seen.add(real)
            if _is_output(path):
                ours.append(path)
            else:
                kept.append(d)
        subdirs[:] = kept
        hidden += [os.path.join(directory, n) for n in names if n.startswith(".") and n.endswith(TEXT_SUFFIXES)]
        for name in (n for n in names if not n.startswith(".")):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                (files if name.endswith(TEXT_SUFFIXES) else others).append(path)
            else:  # a pipe, a socket, a broken link: one named as text is an error
                if name.endswith(TEXT_SUFFIXES):
                    refuse_dangling_link(path)
                    os.stat(path)  # (a file in a folder that can be listed, not entered: its error names it)
                (special if name.endswith(TEXT_SUFFIXES) else others).append(path)
    for skipped, what in ((others, f"file(s) that are not {' or '.join(TEXT_SUFFIXES)}"),
                          (special, "text name(s) of no regular file (a pipe, a socket or a device)"),
                          (hidden, "hidden text file(s) or folder(s) (named with a leading dot)"),
                          (ours, f"folder(s) of {OUTPUT_KINDS} (not text)")):
        if skipped:
            shown = ", ".join(os.path.relpath(f, folder) for f in sorted(skipped)[:3]) + ", ..." * (len(skipped) > 3)
            warnings.warn(f"{folder} holds {len(skipped)} {what}, not read: {shown}", stacklevel=3)
    return sorted(files)


def _output_folder(path: str, known: dict[str, bool] | None = None) -> str | None:
    """The folder of no training text (`_is_output`) that `path` is or lies in, or None; `known` keeps the folders
    looked at, for the next path."""
    known = {} if known is None else known
    folder = os.path.abspath(path)
    while True:
        if folder not in known:
            known[folder] = os.path.isdir(folder) and _is_output(folder)
        if known[folder]:
            return folder
        if os.path.dirname(folder) == folder:
            return None
        folder = os.path.dirname(folder)


def refuse_if_not_text(path: str) -> None:
    """Refuse a file named as text that is a file of a dataset, a run, a checkpoint or an export (its manifest.json,
    a shard, config.json; a `.txt` there, merges.txt, is taken as named)."""
    if not path.endswith(TEXT_SUFFIXES) and (owner := _output_folder(path)):
        raise ValueError(f"{path} is a file of {owner}, {OUTPUT_KINDS}, not text (a prepared dataset is trained on "
                         "by giving its folder as --data)")


def _globbed(pattern: str, excluded: set[str]) -> list[str]:
    """The text files a glob matches: a folder matched is read as one named (not again inside one matched), a file
    as named; but a dataset's shards and manifest, a run's, a checkpoint's or an export's files (merges.txt too) are
    no text: said, not read."""
    matched = sorted(glob.glob(pattern, recursive=True))  # (a broken link too: named, or matched)
    for f in matched:
        refuse_dangling_link(f)
    folders: list[str] = []
    for folder in (f for f in matched if os.path.isdir(f) and os.path.realpath(f) not in excluded):
        if not any(folder.startswith(os.path.join(outer, "")) for outer in folders):
            folders.append(folder)
    known: dict[str, bool] = {}
    ours = {f: owner for f in folders + [f for f in matched if os.path.isfile(f)]
            if (owner := _output_folder(f, known))}
    walked = [os.path.join(os.path.abspath(f), "") for f in folders if f not in ours]  # (whose walk says it)
    if shown := sorted({owner for owner in ours.values() if not any(owner.startswith(w) for w in walked)}):
        warnings.warn(f"{pattern!r} matches {OUTPUT_KINDS} (not text), not read: {', '.join(shown[:3])}"
                      + ", ..." * (len(shown) > 3), stacklevel=3)
    named = [f for f in matched if not os.path.isdir(f) and f not in ours  # (one in a folder read: its call)
             and not any(os.path.abspath(f).startswith(w) for w in walked)]
    if pipe := next((f for f in named if not os.path.isfile(f) and not _output_folder(f, known)), None):
        raise _no_file(f"{pipe} (matched by {pattern!r}), a pipe or a device,")  # read as named: as a pipe named is
    if not any(map(os.path.isfile, matched)) and not folders:
        raise FileNotFoundError(f"no data file matches {pattern!r}")
    files = [f for folder in folders if folder not in ours for f in _text_files_in(folder, excluded)]
    named = [f for f in named if os.path.isfile(f)]
    suffix = os.path.splitext(pattern)[1]
    if (others := [f for f in named if not f.endswith(TEXT_SUFFIXES)]) and not suffix.strip("*?[]."):
        shown = ", ".join(others[:3]) + ", ..." * (len(others) > 3)
        warnings.warn(f"{pattern!r} names no suffix, and matches {len(others)} file(s) not named "
                      f"{' or '.join(TEXT_SUFFIXES)}, read as text: {shown} (a pattern such as "
                      f"{os.path.join(os.path.dirname(pattern), '*.txt')!r} leaves them out)", stacklevel=3)
    return sorted(files + named)


def _no_file(what: str) -> ValueError:
    return ValueError(f"{what} is no file: a dataset reads each text twice (its size and digest, then its tokens), "
                      "which a pipe cannot give; write the text to a file first (a .txt.gz is read decompressed)")


def resolve_inputs(inputs: str | Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Files named by a path, a folder (its `.txt` and `.txt.gz` files, recursively, but for hidden ones and the
    datasets, runs, checkpoints and exports there) or a glob (`_globbed`), in the order named (a folder's or a
    glob's files sorted by path), each once however often it is named (where first named). Folders in `exclude`
    are never read."""
    patterns = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    excluded = {os.path.realpath(e) for e in exclude}
    files: list[str] = []
    for pattern in map(os.fspath, patterns):
        if os.path.isdir(pattern):
            if _is_output(pattern):  # its merges.txt or batching_parameters.txt is no text to learn
                raise ValueError(f"{pattern} is {OUTPUT_KINDS} by its files (a manifest.json of splits, a run.json, "
                                 "weights, or a tokenizer's files), not a folder of text: to read text kept there, "
                                 "name the files themselves (a glob skips such a folder too)")
            files += _text_files_in(pattern, excluded)
        elif os.path.isfile(pattern):
            refuse_if_not_text(pattern)
            files.append(pattern)
        elif os.path.exists(pattern) or pattern == "-":  # (was "no data file matches", of a path that is there)
            raise _no_file("standard input ('-')" if pattern == "-" and not os.path.exists(pattern) else
                           f"{pattern}, a pipe or a device,")
        else:
            files += _globbed(pattern, excluded)
    if not files:
        raise FileNotFoundError(f"no data files found in {inputs!r} (a folder is read for .txt and .txt.gz files)")
    unique: dict[str, str] = {}
    for f in files:  # a file named twice is read once
        unique.setdefault(os.path.realpath(f), f)
    return list(unique.values())


def source_stamps(files: Sequence[str]) -> dict[str, list]:
    """{absolute path: [size, modification time in ns, sha256]} of each file: what a dataset was made from."""
    return {os.path.abspath(f): [*_size_and_time(f), _sha256(f)] for f in files}


def _warn_of_copies(texts: dict[str, tuple[int, str]]) -> None:
    """Say where two files hold the same text ({path: (bytes of text, its sha256)}: a copy kept in an old/ folder, a
    .gz of a .txt): both are read, so the text counts twice, and the validation split may hold text the model trains
    on."""
    first: dict[str, str] = {}  # digest: the first file that holds it
    copies = [(path, first[digest]) for path, (size, digest) in texts.items()
              if size and first.setdefault(digest, path) != path]  # (empty files add no text)
    if copies:
        shown = ", ".join(f"{copy} (of {original})" for copy, original in copies[:3]) + ", ..." * (len(copies) > 3)
        warnings.warn(f"{len(copies)} file(s) hold the same text as another, and both are read (the text counts "
                      f"twice; the validation split may repeat training text): {shown}", stacklevel=3)


def made_from(manifest: dict, files: Sequence[str], vocab: str) -> bool:
    """Whether a dataset is these files, as they are now (contents compared when size or time differ), in `vocab`."""
    stamps = manifest.get("source_stamps")  # (an earlier tf_gpt2's dataset kept none, or a list)
    if not isinstance(stamps, dict) or manifest.get("vocab") != vocab or set(stamps) != {*map(os.path.abspath, files)}:
        return False
    for path, (size, mtime, digest) in stamps.items():
        if not os.path.isfile(path) or _size_and_time(path) != [size, mtime] and _sha256(path) != digest:
            return False
    return True


def shards_whole(directory: str, manifest: dict) -> bool:
    """Whether every shard `manifest` lists is in `directory` at its size."""
    try:
        return all(os.path.getsize(os.path.join(directory, shard["file"])) == 2 * shard["tokens"]
                   for shards in manifest["splits"].values() for shard in shards)
    except (OSError, KeyError, TypeError, AttributeError):  # one missing, or a manifest damaged
        return False


def texts_changed(manifest: dict, files: Sequence[str], vocab: str) -> str:
    """How `files` differ from the texts a dataset was made from, in `vocab`, in the same order (which makes the token
    stream and what the validation split holds), wherever they lie now (contents compared), in words: "" where they
    do not."""
    if manifest.get("vocab") != vocab:
        return f"tokenized with --vocab {manifest.get('vocab')}, now {vocab}"
    if not isinstance(manifest.get("source_stamps"), dict):
        return "its dataset, made by an earlier tf_gpt2, does not record its texts"
    before = {path: stamp[2] for path, stamp in manifest["source_stamps"].items()}  # (in the order read)
    now = {os.path.abspath(path): _sha256(path) for path in files}
    if list(before.values()) == list(now.values()):
        return ""
    said = [f"{what} {', '.join(paths[:3])}{', ...' * (len(paths) > 3)}" for what, paths in (
        ("edited:", [p for p in now if p in before and now[p] != before[p]]),
        ("added:", [p for p in now if p not in before]), ("gone:", [p for p in before if p not in now])) if paths]
    return "; ".join(said) or "the same texts, read in another order"


def data_digest(manifest: bytes) -> str:
    """The dataset's digest: its texts' contents, vocabulary and split sizes. Not the names of its shards (each
    `prepare` names them afresh) nor where the texts lie or when they were touched: preparing the same texts again
    is the same dataset. A manifest without its texts' digests is digested whole."""
    try:
        values = json.loads(manifest)
    except ValueError:  # the dataset's reader names what is wrong with it
        values = None
    if not isinstance(values, dict) or not isinstance(values.get("source_stamps"), dict):
        return hashlib.sha256(manifest).hexdigest()
    what = {"vocab": values.get("vocab"), "vocab_size": values.get("vocab_size"), "chars": values.get("chars"),
            "texts": [stamp[-1] for stamp in values["source_stamps"].values()],
            "splits": {split: [(shard.get("tokens"), shard.get("max_id")) for shard in shards]
                       for split, shards in values.get("splits", {}).items()}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _size_and_time(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _refuse_changed(stamps: dict[str, list], error: BaseException | None = None) -> None:
    """Raise where a text's size or modification time is not what `stamps` recorded before it was read."""
    for path, (size, modified, _) in stamps.items():
        try:
            now = _size_and_time(path)
        except OSError:
            now = None
        if now != [size, modified]:
            raise ValueError(f"{path} changed while it was being read ({size:,} bytes before, " + (
                f"{now[0]:,} now" if now else "gone now") + "): prepare its text again once it is written whole"
            ) from error


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def not_utf8(path: str, error: UnicodeDecodeError, offset: int = 0, lines: int = 0, start: bytes = b"") -> ValueError:
    """The error for a file that is not UTF-8: the first bad byte by its offset in the file and its line, and what
    the file's `start` (its first bytes) shows it to be. `error` came from decoding bytes that start at `offset` in the
    file, after `lines` line breaks."""
    at = offset + error.start
    line = lines + error.object[:error.start].count(b"\n") + 1
    where = " of its decompressed text" if path.endswith(".gz") else ""
    return ValueError(f"{path} is not UTF-8 text: byte {error.object[error.start]:02x} at byte offset {at}{where} "
                      f"(line {line}){_what_it_is(path, start)}")


# What a file's first bytes show it to be, where it is no text: (offset, a pattern of the bytes there, what it is,
# what to do).
_NOT_TEXT = ((0, rb"PK\x03\x04", "a zip archive", "extract it and give its folder"),
             (257, rb"ustar(\x00|  \x00)", "a tar archive", "extract it (tar xf) and give its folder"),
             (0, rb"7z\xbc\xaf\x27\x1c", "a 7z archive", "extract it and give its folder"),
             (0, rb"BZh[1-9]1AY&SY", "bzip2-compressed data", "decompress it (bunzip2), or give it gzipped as .txt.gz"),
             (0, rb"\xfd7zXZ\x00", "xz-compressed data", "decompress it (unxz), or give it gzipped as .txt.gz"),
             (0, rb"\x28\xb5\x2f\xfd", "zstd-compressed data", "decompress it (unzstd), or give it gzipped as .txt.gz"),
             (0, rb"%PDF-\d\.\d", "a PDF", "extract its text first (pdftotext, say)"))


def _what_it_is(path: str, start: bytes) -> str:
    """"; it ..." naming what a file that is no UTF-8 text is, from its first bytes (a .gz's decompressed), or ""."""
    if start[:2] == b"\x1f\x8b":
        return ("; it is gzip-compressed twice: decompress it once (gunzip)" if path.endswith(".gz") else
                "; it starts as gzip does: decompress it on its way in (zcat FILE.gz | ...)"
                if path in ("-", STDIN) else
                "; it starts as gzip does: name it .txt.gz")
    if start[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "; it starts with UTF-16's byte-order mark: save it as UTF-8"
    for at, magic, what, then in _NOT_TEXT:
        if re.match(magic, start[at:]):
            return f"; it starts as {what} does: {then}"
    return ""


def _iconv(path: str, codec: str) -> str:
    """The command that converts `path` from `codec` to UTF-8 (a .gz file's text is converted decompressed)."""
    return f"zcat FILE | iconv -f {codec} -t utf-8 | gzip" if path.endswith(".gz") else f"iconv -f {codec} -t utf-8"


STDIN = "standard input"  # how messages name what `read_text("-")` reads


def shown(path: str) -> str:
    """`path` as messages name it (- is standard input)."""
    return STDIN if path == "-" else path


BINARY_SUFFIXES = (".bin", ".npy", ".npz", ".pt", ".pth", ".safetensors", ".h5", ".ckpt", ".pkl", ".keras")


def _refuse_binary(path: str, start: bytes) -> None:
    """Refuse a file of numbers given as text (nanoGPT's train.bin: its uint16 ids read as UTF-16 without a mark,
    whose advice, iconv, made them text of nonsense)."""
    suffix = os.path.splitext(path[:-3] if path.endswith(".gz") else path)[1].lower()
    if suffix in BINARY_SUFFIXES and b"\0" in start:
        raise ValueError(f"{path} is not text: a {suffix} file of binary data (token ids, such as nanoGPT's train.bin, "
                         "or weights); prepare and --data read text files")


def _refuse_utf16(path: str, start: bytes) -> None:
    """Refuse text that is UTF-16 without a byte-order mark, which often decodes as UTF-8 (0x04 beside each Cyrillic
    letter, 0x09 beside each Devanagari one): every space, line break, digit or ASCII letter of it puts a NUL (its
    high byte) in the same place of each pair, where UTF-8 text has next to none. UTF-32, with or without a mark,
    puts NULs in the two high places of every four bytes (all text but emoji and rarer scripts)."""
    quarters = [start[i::4].count(0) for i in range(4)]
    for codec, high in (("utf-32le", quarters[2:]), ("utf-32be", quarters[:2])):
        if len(start) >= 8 and min(high) >= 0.9 * len(start) // 4:
            marked = start[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")  # (iconv -f utf-32 drops the mark)
            raise ValueError(f"{path} is not UTF-8 text: its start reads as {codec.upper()} (NULs in two of every "
                             f"four bytes): save it as UTF-8 ({_iconv(path, 'utf-32' if marked else codec)})")
    if start[:2] in (b"\xff\xfe", b"\xfe\xff"):  # (a mark is no UTF-8: `not_utf8` says so)
        return
    even, odd = start[0::2].count(0), start[1::2].count(0)
    nuls, highs = max(even, odd), start[1::2] if odd > even else start[0::2]
    in_a_row = b"\0\0" in highs  # two characters in a row with NUL high bytes ("h\0i\0"): said of a short text
    if min(even, odd) <= nuls / 10 and (nuls >= max(4, len(start) / 40) or len(start) < 64 and in_a_row):
        codec = "utf-16le" if odd > even else "utf-16be"
        raise ValueError(f"{path} is not UTF-8 text: its start reads as {codec.upper()} without a byte-order mark "
                         f"(NULs in every other place only, the high byte of ASCII characters): save it as UTF-8 "
                         f"({_iconv(path, codec)})")
    # Letters of one script and no space (Cyrillic, Greek, Hebrew, Arabic, Thai): its high byte, a control character
    # other than a tab or a line break, in nearly every other place. UTF-8 text has next to none.
    for codec, high in (("utf-16le", start[1::2]), ("utf-16be", start[0::2])):
        byte = max(set(high), key=high.count, default=0)
        if len(high) >= 8 and 0 < byte < 0x20 and byte not in b"\t\n\r" and high.count(byte) >= 0.9 * len(high):
            raise ValueError(f"{path} is not UTF-8 text: its start reads as {codec.upper()} without a byte-order mark "
                             f"(byte 0x{byte:02X}, a control character, in every other place: the high byte of one "
                             f"script's letters): save it as UTF-8 ({_iconv(path, codec)})")


ZEROS = b"\0" * 64  # no text holds such a stretch; a file cut short by a crash or a failed copy is filled with them


def _refuse_zeros(path: str, data: bytes, offset: int, lines: int, start: bytes = b"") -> None:
    """Refuse a stretch of zero bytes in `data`, which starts at `offset` in the file, after `lines` line breaks (and
    what the file's `start` shows it to be, where it is an archive)."""
    if (at := data.find(ZEROS)) >= 0:
        where = " of its decompressed text" if path.endswith(".gz") else ""
        line = lines + data[:at].count(b"\n") + 1
        if hint := _what_it_is(path, start):
            raise ValueError(f"{path} is not text{hint}")
        raise ValueError(f"{path} is not text at byte offset {offset + at}{where} (line {line}): a stretch of zero "
                         "bytes, as a file cut short by a crash or a failed copy is filled; copy it again, or cut the "
                         "stretch out")


def _blocks(path: str, block_bytes: int) -> Iterator[str]:
    """The file's text, `block_bytes` at a time, decoded as UTF-8 exactly as written (a CRLF stays CRLF, as tiktoken
    reads it). A byte that is not UTF-8, or a stretch of zero bytes, is named by its offset in the file and its
    line."""
    utf8 = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0  # bytes read, and line breaks among them
    tail = b""  # the last bytes of the block before (a stretch of zeros may straddle two)
    name = shown(path)
    try:
        with _opened(path) as f:
            held = f.read(1024)  # (read once: a pipe cannot go back to it)
            start = held
            _refuse_binary(name, held)
            _refuse_zeros(name, held, 0, 0, start)  # (a file of zeros reads as UTF-32 too: said as what it is)
            _refuse_utf16(name, held)
            while True:
                data, held = held[:block_bytes], held[block_bytes:]
                if len(data) < block_bytes:
                    data += f.read(block_bytes - len(data))
                joined = tail + data
                _refuse_zeros(name, joined, offset - len(tail), lines - tail.count(b"\n"), start)
                tail = joined[-len(ZEROS) + 1:]
                pending = utf8.getstate()[0]  # the start of a character the last block cut
                try:
                    text = utf8.decode(data, final=not data)
                except UnicodeDecodeError as e:
                    raise not_utf8(name, e, offset - len(pending), lines, start) from None
                if text:
                    yield text
                if not data:
                    return
                offset, lines = offset + len(data), lines + data.count(b"\n")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path} is not a readable gzip file: {e}") from None


def _opened(path: str):
    """The binary file `path` (a .gz decompressed; - is standard input, left open)."""
    if path != "-":
        return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    if sys.stdin is None:  # (started with `<&-`)
        raise ValueError(f"{STDIN} is closed: give the text in a file")
    if getattr(sys.stdin, "buffer", None) is None:  # (a notebook's or a test's text stream)
        raise ValueError(f"{STDIN} here is a text stream, not bytes: give the text in a file")
    if sys.stdin.isatty():
        print(f"reading {STDIN} to its end (Ctrl-D)", file=sys.stderr)
    return contextlib.nullcontext(sys.stdin.buffer)


def read_text(path: str) -> str:
    """A whole text file (.gz decompressed; - reads standard input) as `prepare` reads it: UTF-8 exactly as written,
    a bad byte named; a dataset's manifest or shard, or a checkpoint's file, is refused."""
    if path != "-":
        refuse_if_not_text(path)
    text = "".join(_blocks(path, CHUNK_BYTES))
    _warn_of_marks([shown(path)] if text.startswith("\ufeff") else [])
    return text


def _warn_of_marks(marked: Sequence[str]) -> None:
    """Say which texts start with UTF-8's byte-order mark, read as written, as tiktoken reads it: a character
    before each text (tokens of a model's input), not silent."""
    if marked:
        warnings.warn(f"{', '.join(marked[:3])}{', ...' * (len(marked) > 3)} start(s) with UTF-8's byte-order mark "
                      "(U+FEFF, as Windows Notepad writes it): read as written, a character before the text (remove "
                      "it to leave it out)", stacklevel=3)


def _starts_with_mark(path: str) -> bool:
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        try:
            return f.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8
        except (gzip.BadGzipFile, EOFError, zlib.error):  # (the reader names it)
            return False


# GPT-2's pre-tokenizer (tokenizer.PAT_STR) splits text into pieces and encodes each alone, so text cut where one
# piece ends and the next begins, whatever follows, encodes as the whole text does. Three kinds of places are such:
# - before a whitespace character that follows a non-space: the piece before cannot take whitespace, and a whitespace
#   run only ever joins what comes after it (`\s+(?!\S)` gives its last space to the next word);
# - between a letter, a digit and another symbol (\p{L}, \p{N}, the rest), unless the first is an apostrophe
#   (`'s`, `'ll`, ...) or the place lies inside `<|endoftext|>`, which encodes as one token;
# - after `<|endoftext|>`: tiktoken encodes the text between special tokens piece by piece.
_WHITESPACE_AFTER_NON_SPACE = re.compile(r"(?<=\S)[\t\n\v\f\r ]")  # str.isspace is wider than \s: never too wide


def _char_class(c: str) -> str | None:
    """Letter, number or other symbol, as GPT-2's pre-tokenizer sees `c`; None for whitespace or a character this
    Python's Unicode tables do not know."""
    category = unicodedata.category(c)
    if c.isspace() or category == "Cn":
        return None
    return category[0] if category[0] in "LN" else "P"


def safe_cut(text: str, start: int = 0, end: int | None = None) -> int:
    """The last place i in (start, end] where `text[:i]` and `text[i:]` encode, one after the other, as `text` does
    with GPT-2's tokenizer; 0 if there is none."""
    end = len(text) if end is None else min(end, len(text))
    window, last = 4096, None
    while True:  # most text has a space or a line break near its end: look there first
        low = max(start, end - window)
        for last in _WHITESPACE_AFTER_NON_SPACE.finditer(text, low, min(end + 1, len(text))):
            pass
        if last or low == start:
            break
        window *= 16
    if last:
        return last.start()
    special = len(ENDOFTEXT)
    after_special = at + special if (at := text.rfind(ENDOFTEXT, start, end)) >= 0 else 0  # (encoded apart)
    for i in range(min(end, len(text) - special), max(start, after_special), -1):  # no whitespace (rare): classes
        before, after = _char_class(text[i - 1]), _char_class(text[i])
        if before and after and before != after and text[i - 1] != "'" \
                and ENDOFTEXT not in text[max(0, i - special + 1):i + special - 1]:
            return i
    return after_special


LONGEST_RUN = 1 << 16  # characters with no safe cut read before cutting anyway (and two chunks)
SPLIT_SLACK = 1 << 10  # characters the validation split may start before its fraction, to cut where it is safe


def _chunks(path: str, chunk_bytes: int = CHUNK_BYTES, anywhere: bool = False) -> Iterator[str]:
    """The file's text in pieces of about `chunk_bytes` characters, cut only where GPT-2's tokenizer cannot join
    across (`safe_cut`), so encoding the pieces one by one gives the ids of the whole file (or `anywhere`: characters
    encode one by one). A stretch of more than `LONGEST_RUN` characters and two chunks with no such place (a run of
    one kind of character: letters, digits, symbols or whitespace) is cut where it stands, with a warning: memory
    stays bounded, and only the ids at that cut may differ."""
    if anywhere:
        yield from _blocks(path, chunk_bytes)
        return
    carry, offset = "", 0
    blocks = _blocks(path, chunk_bytes)
    block = next(blocks, None)
    while block is not None:
        text, block = carry + block, next(blocks, None)
        if block is None:  # the end of the file: no cut needed
            yield text
            return
        cut = safe_cut(text, start=max(0, len(carry) - len(ENDOFTEXT)))  # carry has no place to cut
        if cut == 0 and len(text) >= max(2 * chunk_bytes, LONGEST_RUN):  # cut anyway
            cut = len(text)
            warnings.warn(f"{path}: the {len(text):,} characters from byte offset {offset:,} on are one run that "
                          "GPT-2's tokenizer may join; cut after them to bound memory, so the ids at that cut may "
                          "differ from tokenizing the file whole", stacklevel=2)
        if cut:
            yield text[:cut]
            offset += len(text[:cut].encode("utf-8"))
        carry = text[cut:]


class _ShardWriter:
    """Writes one split's shards under names unique to this preparation (`train_<tag>_0000.bin`), so
    the shards of a dataset already there stay intact until the new manifest replaces its own."""

    def __init__(self, out_dir: str, split: str, shard_tokens: int, tag: str):
        self.out_dir, self.split, self.shard_tokens, self.tag = out_dir, split, shard_tokens, tag
        self.shards: list[dict] = []
        self.file = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            with self._named():
                self.file.write(part.astype("<u2").tobytes())
            self.shards[-1]["tokens"] += len(part)
            self.shards[-1]["max_id"] = max(self.shards[-1].get("max_id", 0), int(part.max()))

    def _open_next(self) -> None:
        self._close_file()
        name = f"{self.split}_{self.tag}_{len(self.shards):04d}.bin"
        self.file = open(os.path.join(self.out_dir, name), "wb")
        self.shards.append({"file": name, "tokens": 0})

    def _close_file(self) -> None:
        if self.file:
            with self._named():
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            self.file = None

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        """A full disk or a size limit, said of the shard being written."""
        try:
            yield
        except OSError as e:
            if e.filename is not None or e.strerror is None:
                raise
            raise OSError(e.errno, f"{e.strerror} (while writing)", self.file.name) from e

    def close(self) -> list[dict]:
        self._close_file()
        return self.shards

    def discard(self) -> None:
        """Remove every shard this writer made (the preparation failed)."""
        if self.file:
            self.file.close()
            self.file = None
        for shard in self.shards:
            path = os.path.join(self.out_dir, shard["file"])
            if os.path.exists(path):
                os.remove(path)


SHARD_NAME = re.compile(r"(train|val)_[0-9a-f]{8}_\d{4}\.bin$")


def _remove_unlisted_shards(out_dir: str, old_manifest: dict | None, manifest: dict) -> None:
    """After `manifest` replaced `old_manifest`: delete the old dataset's shards and any left by a
    preparation that was killed; nothing the new manifest lists."""
    listed = {s["file"] for shards in manifest["splits"].values() for s in shards}
    old = {s["file"] for shards in (old_manifest or {}).get("splits", {}).values() for s in shards}
    for name in os.listdir(out_dir):
        if name not in listed and (name in old or SHARD_NAME.match(name)):
            os.remove(os.path.join(out_dir, name))


def char_codec(chars: Sequence[str]) -> tuple[Callable[[str], list[int]], Callable[[Sequence[int]], str]]:
    """(encode, decode) for a character vocabulary; a character outside it is an error, not dropped."""
    from tf_gpt2.tokenizer import CharacterTokenizer

    tokenizer = CharacterTokenizer(chars)
    return tokenizer.encode, tokenizer.decode


def codec(manifest: dict) -> tuple[Callable[[str], list[int]], Callable[[Sequence[int]], str]]:
    """(encode, decode) for the vocabulary a prepared dataset was written with."""
    if manifest["vocab"] == "char":
        return char_codec(manifest["chars"])
    from tf_gpt2.tokenizer import GPT2Tokenizer

    tok = GPT2Tokenizer()
    return tok.encode, tok.decode


def char_vocabulary(files: Sequence[str]) -> list[str]:
    chars: set[str] = set()
    for path in files:
        for block in _blocks(path, CHUNK_BYTES):
            chars.update(block)
    return sorted(chars)


def first_place(files: Sequence[str], chars: Sequence[str]) -> str:
    """Where the first of `chars` stands in `files`, for a message: "'é' in FILE, line N" ("" if none is there)."""
    if not chars:
        return ""
    wanted = re.compile("[" + "".join(map(re.escape, chars)) + "]")
    for path in files:
        line = 1
        for block in _blocks(path, CHUNK_BYTES):
            found = wanted.search(block)
            if found:
                line += block.count("\n", 0, found.start())
                return f"{found.group()!r} in {path}, line {line}"
            line += block.count("\n")
    return ""


def prepare(inputs: str | Sequence[str], out_dir: str, val_fraction: float = 0.1, vocab: str = "gpt2",
            shard_tokens: int = SHARD_TOKENS, verbose: bool = True, exclude: Sequence[str] = (),
            chunk_bytes: int = CHUNK_BYTES, characters: Sequence[str] | None = None) -> dict:
    """Tokenize text files into `out_dir` (shards + manifest.json) and return the manifest.

    With `vocab="char"`, id i is the i-th of the text's characters sorted, or of `characters` when given (a model's
    own, to fine-tune it on text of some of them).

    Documents (files) are separated by `<|endoftext|>` with the GPT-2 vocabulary; each file's ids are tiktoken's on
    the whole file (read `chunk_bytes` at a time, cut only where the tokenizer cannot join across). A dataset
    already in `out_dir` stays intact until the new one is complete: the manifest is replaced last, in one rename.
    Folders given as inputs are read without `out_dir` and the folders in `exclude`.
    """
    if vocab not in VOCABS:
        raise ValueError(f"vocab must be one of {VOCABS}, got {vocab!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    _check_count("shard_tokens", shard_tokens, optional=False)
    _check_count("chunk_bytes", chunk_bytes, optional=False)
    files = resolve_inputs(inputs, exclude=[out_dir, *exclude])
    if inside := [f for f in files if os.path.realpath(f).startswith(os.path.join(os.path.realpath(out_dir), ""))]:
        raise ValueError(f"{out_dir} holds {inside[0]}, a text it would read: a dataset written there makes that "
                         "folder a dataset, whose texts are not read as text again; give the output another folder")
    if os.path.isdir(out_dir) and (kind := "a training run" if _is_run(out_dir) else
                                   "a checkpoint or an export" if _holds_a_model(out_dir) else None):
        raise ValueError(f"{out_dir} is the folder of {kind}: a dataset written there would mix its files with those; "
                         "give the dataset a folder of its own")
    warn_of_a_folder_of_texts(out_dir, "a dataset")
    texts = {os.path.abspath(f): _text_size(f) for f in files}
    total = sum(size for size, _ in texts.values())
    if total == 0:
        raise ValueError(f"the data is empty: {files}")
    if vocab == "gpt2":
        if characters is not None:
            raise ValueError("characters are for vocab='char'")
        from tf_gpt2.tokenizer import GPT2Tokenizer

        tok = GPT2Tokenizer()
        encode, separator, vocab_size, chars = tok.encode, [tok.eot_id], tok.vocab_size, None
    else:
        chars = char_vocabulary(files) if characters is None else list(characters)
        encode, separator, vocab_size = char_codec(chars)[0], [], len(chars)
    if vocab_size > 65536:
        raise ValueError(f"a vocabulary of {vocab_size} characters does not fit uint16 shards (65,536 ids at most): "
                         "train on GPT-2's tokens (--vocab gpt2) instead")

    stamps = source_stamps(files)
    _warn_of_copies({path: (size, digest or stamps[path][2]) for path, (size, digest) in texts.items()})
    _warn_of_marks([f for f in files if _starts_with_mark(f)])
    with exclusive(out_dir, "prepare"):
        old_manifest = _read_manifest(out_dir) if os.path.exists(os.path.join(out_dir, MANIFEST)) else None
        tag = secrets.token_hex(4)
        writers = {s: _ShardWriter(out_dir, s, shard_tokens, tag) for s in ("train", "val")}
        try:
            what = "the embedded Tiny Shakespeare" if files == [embedded_corpus()] else \
                f"{len(files)} file(s)"
            size = f"{total / 1e6:.1f} MB" if total >= 1e5 else f"{total:,} bytes"  # (9,360 bytes said "0.0 MB")
            label = f"tokenizing {what}, {size} of text ({vocab} vocabulary) into {out_dir}"
            try:
                splits = _write_shards(files, total, val_fraction, encode, separator, writers,
                                       label if verbose else None, chunk_bytes, anywhere=vocab == "char")
            except ValueError as error:  # (a text cut short under the reader reads as bad UTF-8 past its new end)
                _refuse_changed(stamps, error)
                raise
            _refuse_changed(stamps)  # (one cut short or written on read as text it never held, without a word)
            if sum(s["tokens"] for s in splits["train"]) == 0:
                held = sum(s["tokens"] for s in splits["val"])
                raise ValueError(f"no training tokens came out of {files}: " + (
                    f"all {held} went to the validation split (val_fraction {val_fraction}): give more text, or a "
                    "smaller fraction (tf-gpt2 prepare --val-fraction)" if held else "the text gave no tokens"))
            manifest = {"vocab": vocab, "vocab_size": vocab_size, "chars": chars, "sources": files,
                        "source_stamps": stamps, "splits": splits}
            # The step that switches datasets (its rename is its last step that can fail):
            atomic_write(os.path.join(out_dir, MANIFEST), json_writer(manifest, indent=1))
        except BaseException:  # a full disk, bad text, Ctrl-C: the dataset already there stays as it was
            for writer in writers.values():
                writer.discard()
            raise
        _remove_unlisted_shards(out_dir, old_manifest, manifest)
    return manifest


@contextlib.contextmanager
def _progress_bar(total: int, label: str | None) -> Iterator:
    """The label, then a progress bar in bytes of text where it can be redrawn (`progress_bar`; None without a
    label); an error or warning shown meanwhile starts on a line of its own, not on the bar's."""
    if not label:
        yield None
        return
    print(label, flush=True)
    bar = progress_bar(total, unit_name="byte")
    if bar is None:
        yield None
        return
    show = warnings.showwarning
    with warnings.catch_warnings():
        warnings.showwarning = lambda *args, **kwargs: (print(flush=True), show(*args, **kwargs))
        try:
            yield bar
        except BaseException:
            print(flush=True)
            raise


def _write_shards(files, total, val_fraction, encode, separator, writers, label, chunk_bytes,
                  anywhere: bool = False) -> dict[str, list[dict]]:
    """The files' ids into the writers, the last `val_fraction` of the bytes into "val": the split starts at most
    `SPLIT_SLACK` characters early, where GPT-2's tokenizer cannot join across, or, with none there, where it falls
    (with a warning; `anywhere`, for characters, always there)."""
    val_from = total * (1.0 - val_fraction)
    done = 0
    with _progress_bar(total, label) as progress:
        for path in files:
            for chunk in _chunks(path, chunk_bytes, anywhere):
                data = chunk.encode("utf-8")
                size = len(data)
                # Where the split falls, in characters of this chunk (val_from counts bytes).
                cut = 0 if done >= val_from else len(chunk) if done + size <= val_from else len(
                    data[:int(val_from - done)].decode("utf-8", errors="ignore"))
                if 0 < cut < len(chunk) and not anywhere:  # inside this chunk: where the tokenizer cannot join
                    earliest = max(0, cut - SPLIT_SLACK)  # (a chunk starts at such a place: 0 is one)
                    cut = safe_cut(chunk, start=earliest, end=cut) or (earliest and _cut_anyway(path, chunk, cut))
                for split, text in (("train", chunk[:cut]), ("val", chunk[cut:])):
                    if text:
                        writers[split].write(np.asarray(encode(text), dtype=np.uint16))
                done += size
                if progress:
                    progress.update(min(done, total))
            writers["train" if done <= val_from else "val"].write(np.asarray(separator, dtype=np.uint16))
    return {s: w.close() for s, w in writers.items()}


def _cut_anyway(path: str, chunk: str, cut: int) -> int:
    warnings.warn(f"{path}: the split between train and val falls in a run that GPT-2's tokenizer may join across, "
                  f"with no safe place to cut within {SPLIT_SLACK:,} characters before it "
                  f"({chunk[max(0, cut - 20):cut]!r}): cut there, so the ids at that cut may differ from tokenizing "
                  "the file whole", stacklevel=3)
    return cut


def _read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    manifest = read_json(path, kind="a tf_gpt2 dataset manifest")
    if not isinstance(manifest.get("splits"), dict) or not isinstance(manifest.get("vocab_size"), int):
        raise ValueError(f"{path} is not a tf_gpt2 dataset manifest (no splits or vocab_size)")
    for split, shards in manifest["splits"].items():
        shard = lambda s: isinstance(s, dict) and isinstance(s.get("file"), str) and type(s.get("tokens")) is int \
            and s["tokens"] >= 0 and type(s.get("max_id", 0)) is int  # noqa: E731
        if not isinstance(shards, list) or not all(map(shard, shards)):
            raise ValueError(f"{path}: split {split!r} is not a list of shards, each with a file and a token count")
    if manifest.get("vocab") == "char" and not (isinstance(manifest.get("chars"), list)
                                                and len(manifest["chars"]) == manifest["vocab_size"]):
        raise ValueError(f"{path}: a character dataset needs its {manifest['vocab_size']} characters (chars)")
    return manifest


class TokenShards:
    """The token ids of one split, memory-mapped from the shards `prepare` wrote.

    Example:
    >>> shards = TokenShards("data/shakespeare", "train")         # doctest: +SKIP
    >>> ds = shards.dataset(block_size=256, batch_size=8, seed=0)  # doctest: +SKIP
    """

    def __init__(self, directory: str, split: str = "train"):
        if not os.path.exists(os.path.join(directory, MANIFEST)):
            raise FileNotFoundError(f"{directory} has no {MANIFEST}: run `tf-gpt2 prepare` first")
        self.manifest = _read_manifest(directory)
        if split not in self.manifest["splits"]:
            raise ValueError(f"{os.path.join(directory, MANIFEST)} has no split {split!r}")
        self.vocab_size = self.manifest["vocab_size"]
        self.parts, self.files = [], []
        for shard in self.manifest["splits"][split]:
            if os.path.basename(shard["file"]) != shard["file"]:
                raise ValueError(f"{directory}/{MANIFEST} names shard {shard['file']!r} outside its directory")
            file = os.path.join(directory, shard["file"])
            if not os.path.exists(file) or os.path.getsize(file) != 2 * shard["tokens"]:
                raise ValueError(f"shard {file} is missing or corrupt: expected {2 * shard['tokens']} bytes")
            if shard["tokens"]:
                part = np.memmap(file, dtype="<u2", mode="r")
                # The largest id, as `prepare` recorded it (a manifest written before it did: one read of the shard).
                self._check_ids(shard["max_id"] if "max_id" in shard else int(part.max()), file)
                self.parts.append(part)
                self.files.append(file)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # where each shard starts
        self.directory, self.split = directory, split

    def _check_ids(self, largest: int, file: str) -> None:
        if largest >= self.vocab_size:  # such an id would train on another row of the embedding
            raise ValueError(f"shard {file} holds token id {largest}, outside the vocabulary of {self.vocab_size} "
                             "its manifest declares: it was written with another vocabulary, or changed since")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int32, read across shard boundaries."""
        pieces, end = [], start + length
        part = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < end:
            local = start - self.offsets[part]
            piece = self.parts[part][local: local + end - start]
            self._check_ids(int(piece.max()), self.files[part])  # every id read is checked: a few per batch
            pieces.append(piece)
            start += len(piece)
            part += 1
        return np.concatenate(pieces).astype(np.int32)

    def check_block(self, block_size: int, batch_size: int) -> None:
        if batch_size <= 0 or block_size <= 0:
            raise ValueError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}")
        if len(self) < block_size + 1:
            raise ValueError(f"the {self.split} split of {self.directory} has {len(self)} tokens, "
                             f"fewer than block_size + 1 = {block_size + 1}")

    def batch(self, step: int, block_size: int, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The random batch number `step`: a pure function of (seed, step)."""
        starts = np.random.default_rng([seed, step]).integers(0, len(self) - block_size, batch_size)
        windows = np.stack([self.window(int(s), block_size + 1) for s in starts])
        return windows[:, :-1], windows[:, 1:]

    def dataset(self, block_size: int, batch_size: int, seed: int = 0, start_step: int = 0, steps: int | None = None):
        """Random windows as a tf.data.Dataset of (inputs, targets) int32 [batch, block_size]."""
        tf = tensorflow()

        self.check_block(block_size, batch_size)
        _check_count("steps", steps)
        fetch = lambda s: self.batch(int(s), block_size, batch_size, seed)  # noqa: E731
        steps_ds = tf.data.Dataset.range(start_step, 2**62 if steps is None else start_step + steps)
        ds = steps_ds.map(
            lambda s: tf.numpy_function(fetch, [s], (tf.int32, tf.int32), stateful=False),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )
        return ds.map(lambda x, y: (tf.ensure_shape(x, [batch_size, block_size]),
                                    tf.ensure_shape(y, [batch_size, block_size]))).prefetch(tf.data.AUTOTUNE)

    def sequential(self, block_size: int, batch_size: int, max_batches: int | None = None):
        """Consecutive non-overlapping windows, in order (for evaluation), as a tf.data.Dataset."""
        tf = tensorflow()

        self.check_block(block_size, batch_size)
        _check_count("max_batches", max_batches)
        n = (len(self) - 1) // block_size
        tokens = self.window(0, n * block_size + 1)
        x, y = tokens[:-1].reshape(n, block_size), tokens[1:].reshape(n, block_size)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=n >= batch_size)
        return ds if max_batches is None else ds.take(max_batches)


def _check_count(name: str, value: int | None, optional: bool = True) -> None:
    """A count (of tokens, bytes, batches) is a positive integer, Python's or numpy's, or None where `optional`
    (0 would mean every batch, or none). `checks.is_integer`'s rule: that module loads Keras, which the CLI's
    help and the files it reads must not."""
    if value is None and optional:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")
