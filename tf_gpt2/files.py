"""Publishing files safely: a half-written file never replaces a good one, a killed write leaves
nothing that grows without bound, published files are readable by other users (TF Serving), and
one run directory has one writer at a time.

Example:
>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
>>> atomic_write(path, lambda tmp: open(tmp, "w").write("hello"))
>>> open(path).read()
'hello'
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator

TEMP_MARK = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: str) -> None:
    """Give `path` (and, for a directory, everything in it) the ordinary permissions of a new file or
    directory (0644 / 0755 under the usual umask), not the 0600 / 0700 of temporary files."""
    mask = _umask()
    if not os.path.isdir(path):
        os.chmod(path, 0o666 & ~mask)
        return
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def staging_dir(path: str) -> str:
    """The hidden sibling folder, `.<name>.tmp-<pid>/`, where this process writes `path` first, under its own name
    (Keras only saves to names ending in `.keras`), and where a writing library's own temporaries go too (safetensors
    stages `.tmpXXXXXX` beside its file): the next write sweeps the folder if this process is killed."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}{TEMP_MARK}{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(path: str) -> None:
    """Remove what killed writers of `path` left behind (temporaries whose process is gone)."""
    directory, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{name}{TEMP_MARK}") + r"(\d+)(\.keras)?$")  # (.keras: older versions' files)
    if not os.path.isdir(directory):
        return
    for entry in os.listdir(directory):
        match = pattern.match(entry)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            stale = os.path.join(directory, entry)
            shutil.rmtree(stale, ignore_errors=True) if os.path.isdir(stale) else os.remove(stale)


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a write cut short by the disk, a quota or a size limit


def _temp_folder(what: str) -> str:
    """A new folder `tf_gpt2-<what>-<pid>-...` in the system's temp folder; those that processes now gone left
    there (a conversion killed midway leaves its whole model) go first."""
    root = tempfile.gettempdir()
    pattern = re.compile(re.escape(f"tf_gpt2-{what}-") + r"(\d+)-")
    for entry in os.listdir(root):
        match = pattern.match(entry)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"tf_gpt2-{what}-{os.getpid()}-")


def process_dir(what: str) -> str:
    """A temporary folder (`_temp_folder`) for the rest of this process, removed as it exits."""
    directory = _temp_folder(what)
    atexit.register(shutil.rmtree, directory, True)
    return directory


@contextlib.contextmanager
def work_dir(what: str) -> Iterator[str]:
    """A temporary folder (`_temp_folder`) for the block. A write in it cut short (a full temp folder, said by
    Python with the file's name, see `write_file`, or by TensorFlow's own file system) becomes an `OSError` that
    names the temp folder and TMPDIR, without a file name: `atomic_write` adds the file being made."""
    directory = _temp_folder(what)
    try:
        yield directory
    except Exception as e:
        said = f"{getattr(e, 'filename', None) or ''} {e}"
        code = next((c for c in _FULL if directory in said and (getattr(e, "errno", None) == c
                                                                 or os.strerror(c) in said)), None)
        if code is None:
            raise
        raise OSError(code, f"{os.strerror(code)} in the temp folder {tempfile.gettempdir()}, where it is staged "
                            "(set TMPDIR to stage it elsewhere)") from e
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_file(path: str, data: bytes) -> None:
    """`data` to the file `path`; a write cut short (a full disk) names the file, as a failure to open it does."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, path) from e


def _fsync(path: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(path: str) -> None:
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in files:
                _fsync(os.path.join(root, name))
    _fsync(path)


def atomic_write(path: str, write: Callable[[str], object]) -> None:
    """Call `write(tmp)` to write a file (or a directory) at a temporary sibling path, then move it to
    `path` in one rename. A crash, a kill or a full disk leaves the previous `path` as it was; the
    next write removes temporaries left by killed writers. A new file gets ordinary read permissions; a file
    replaced keeps its own.
    """
    write_together({path: write})


def write_together(writes: dict[str, Callable[[str], object]]) -> None:
    """`atomic_write` for files that belong together (weights and their config): every file is written
    in full before the first rename, so a failure while writing (a full disk) changes none of them."""
    staged = {}
    try:
        for path, write in writes.items():
            path = os.path.abspath(os.fspath(path))
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "Is a directory, cannot be replaced", path)
            remove_stale_temps(path)
            staging = staging_dir(path)
            staged[path] = tmp = os.path.join(staging, os.path.basename(path))
            try:
                shutil.rmtree(staging, ignore_errors=True)  # (an earlier process's with this pid)
                os.mkdir(staging)  # (not the folders above it: a missing folder fails as writing the file would)
                write(tmp)
                _sync_tree(tmp)
            except OSError as e:  # a full disk or a size limit, said of the file being written
                ours = e.filename is None or (os.fspath(e.filename) + os.sep).startswith(staging + os.sep)
                if not ours or e.strerror is None:
                    raise
                raise OSError(e.errno, f"{e.strerror} (while writing)", path) from e
            except Exception as e:  # a Rust library's (safetensors'): "...: File too large (os error 27)"; TensorFlow's
                # own writers' (a SavedModel's): "<a staged file>; No space left on device", an OpError
                code = re.search(r"\(os error (\d+)\)", str(e))
                code = int(code[1]) if code else next((c for c in _FULL if f"; {os.strerror(c)}" in str(e)
                                                       and staging in str(e)), None)
                if code is None:
                    raise
                raise OSError(code, f"{os.strerror(code)} (while writing)", path) from e
            make_readable(tmp)
            if os.path.isfile(path) and os.path.isfile(tmp):  # a file replaced keeps its permissions (a private one
                shutil.copymode(path, tmp)                    # was made readable by everyone)
        for path, tmp in staged.items():
            try:
                os.replace(tmp, path)
            except OSError as e:  # (named the staged file, a hidden name the user never gave)
                raise OSError(e.errno, f"{e.strerror} (while putting the written file in its place)", path) from e
            _fsync(os.path.dirname(path))
    finally:
        for path in staged:
            shutil.rmtree(staging_dir(path), ignore_errors=True)


def bytes_writer(data: bytes) -> Callable[[str], None]:
    """A writer for `atomic_write`/`write_together` that writes `data`."""
    return functools.partial(write_file, data=data)


def json_writer(value: Any, indent: int = 2) -> Callable[[str], None]:
    """A writer for `atomic_write`/`write_together` that writes `value` as JSON."""
    return bytes_writer(json.dumps(value, indent=indent).encode("utf-8"))


def read_json(path: str, kind: str | None = None) -> dict[str, Any]:
    """A JSON object from `path` (`kind` names what it should be); anything else is a ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, expected a JSON file") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected an object"
                         + (f": not {kind}" if kind else ""))
    return value


def index_shards(directory: str, index_name: str) -> list[str]:
    """The files an index's weight_map names, each a file of `directory`."""
    index = os.path.join(directory, index_name)
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no weight_map")
    names = sorted({str(f) for f in weight_map.values()})
    for name in names:  # a file of this directory by its name (a link, as in huggingface_hub's cache, goes anywhere)
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"{index} points at {name!r}, not a file of {directory}: refusing to read it")
    return [os.path.join(directory, name) for name in names]


def refuse_dangling_link(path: str, why: str = "") -> None:
    """A link to nothing (an unmounted disk, a file moved) is named, not taken for no file."""
    if os.path.islink(path) and not os.path.exists(path):
        said = f"{path} is a link to {os.readlink(path)}, which is not there"
        raise FileNotFoundError(f"{said} ({why})" if why else said)


def refuse_writing_over_inputs(out: str | None, *inputs: str | None) -> None:
    """Checked before anything is written: an output path that is one of the inputs would replace it."""
    for source in inputs:
        if out and source and os.path.exists(source) and os.path.realpath(out) == os.path.realpath(source):
            raise ValueError(f"the output {out} is the input {source}: writing there would replace the input or "
                             "mix the output's files with it; choose another output path")


FILE_MARKS = {"tflite": (4, b"TFL3"), "litertlm": (0, b"LITERTLM"), "keras": (0, b"PK\x03\x04")}  # (offset, bytes)


def refuse_replacing_another_kind(path: str, kind: str) -> None:
    """A file at `path` is replaced only where it is one of the `kind` written there (an earlier export): notes, a
    text or a model of another format at that name were replaced, said only after."""
    if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path):  # (an empty file, mktemp's or
        # touch's, holds nothing to lose; a link is replaced, not the file it names)
        offset, mark = FILE_MARKS[kind]
        with open(path, "rb") as f:
            if f.read(offset + len(mark))[offset:] != mark:
                raise ValueError(f"{path} is a file but no .{kind} file: writing there would replace it; give "
                                 "another path, or remove it first")


def save_keras(model, path: str) -> None:
    """A GPT2's `model.save(path)`, which replaces a `.keras` file whole or not at all (a failed or killed save keeps
    the previous file) and names `path` in its errors."""
    if not os.fspath(path).endswith(".keras"):
        raise ValueError(f"a Keras model file must end in .keras, got {path}")
    model.save(path)


@contextlib.contextmanager
def exclusive(directory: str, what: str, wait: bool = False) -> Iterator[None]:
    """Hold `directory`'s lock while the block runs; if another process holds it, refuse at once, or with `wait`
    wait until it is done.

    The lock is an OS file lock (`flock`): it is released when the process ends, even by SIGKILL. A directory made
    here that holds nothing but the lock when the block ends (it failed before writing) is removed again, with the
    parents made for it where they are empty; a process that waited for that lock then makes them again.
    """
    import fcntl  # (Unix only: imported where a lock is taken)

    if os.path.exists(directory) and not os.path.isdir(directory):  # not makedirs' bare "File exists"
        raise NotADirectoryError(errno.ENOTDIR, f"Not a directory ({what} writes a folder there)", directory)
    if os.path.islink(directory) and not os.path.exists(directory):  # (makedirs: "File exists" too)
        raise FileNotFoundError(f"{directory} is a link to {os.readlink(directory)}, which is not there ({what} "
                                "writes into the folder a link leads to: make it, or give another path)")
    lock, made = _locked(directory, what, wait)
    with lock:
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} {what}")
        lock.flush()
        try:
            yield
        finally:
            if made:  # removed while the lock is held: a process waiting for it finds its file gone, and starts over
                _remove_if_only_lock(directory, made)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _locked(directory: str, what: str, wait: bool) -> tuple[Any, str | None]:
    """`directory`'s lock file, open and locked, and the top folder made for it (None: the directory was there)."""
    import fcntl

    lock_path = os.path.join(directory, ".lock")
    for attempt in range(100):
        made = _first_missing(directory)
        try:
            make_folders(directory)
            lock = open(lock_path, "a+")
        except FileNotFoundError:  # removed meanwhile by the holder of the lock, whose write failed: again (not a
            if made is not None or os.path.isdir(directory) or attempt == 99:  # .lock or a parent that is a broken
                raise  # link, nor "": those fail each time)
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            lock.seek(0)
            pid, _, holder = lock.read().strip().partition(" ")  # what holds it (a prepare's folder, trained into)
            lock.close()
            raise RuntimeError(f"{directory} is in use by another {holder or 'process'} (pid {pid or 'unknown'}); "
                               "wait for it to finish or choose another directory") from None
        except OSError as e:  # a file system without locks (NFS without lockd, Lustre without -o flock)
            lock.close()
            if made:
                _remove_if_only_lock(directory, made)
            raise OSError(e.errno, f"{e.strerror}: this file system cannot lock the file that keeps a second {what} "
                                   "out of the folder; use a folder on a local disk", lock_path) from None
        try:
            if os.path.samestat(os.fstat(lock.fileno()), os.stat(lock_path)):
                return lock, made
        except FileNotFoundError:
            pass
        lock.close()  # the holder this process waited for removed the folder it had made (its write failed)
    raise RuntimeError(f"{directory} was removed each time this {what} took its lock: another program removes it")


def nearest_existing(path: str) -> str:
    """`path`, absolute, or the nearest of its parents that is there."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def make_folders(directory: str) -> None:
    """`os.makedirs(directory, exist_ok=True)`, naming the file where a folder of the path would be (makedirs said
    "File exists" of the folder it could not make)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        part = nearest_existing(directory)
        if os.path.isdir(part):
            raise
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory (a file, where a folder to write in would be)",
                                 part) from None


def _first_missing(directory: str) -> str | None:
    """The topmost folder of `directory`'s path that is not there yet (None: it is there)."""
    top, path = None, os.path.realpath(directory)  # (as makedirs follows a link: `link/../new` is made where it leads)
    while not os.path.lexists(path):
        top, path = path, os.path.dirname(path)
    return top


def _remove_if_only_lock(directory: str, top: str) -> None:
    """Remove a folder `exclusive` made that holds nothing but its lock, and the parents made with it up to `top`
    while they are empty (a failed `--out a/b/c` left a/b)."""
    with contextlib.suppress(OSError):
        if os.listdir(directory) == [".lock"]:
            os.remove(os.path.join(directory, ".lock"))
            _remove_empty_folders(directory, top)


def _remove_empty_folders(directory: str, top: str) -> None:
    """Remove `directory` and its parents up to `top` while they are empty (one that is not stays, with those above)."""
    with contextlib.suppress(OSError):
        path = os.path.realpath(directory)
        while True:
            os.rmdir(path)  # (not empty: something else was written there, and it stays)
            if path == top:
                return
            path = os.path.dirname(path)


@contextlib.contextmanager
def folders_for(path: str) -> Iterator[None]:
    """Make the folders that `path` is to be written in; if the block fails, remove those made here (while empty):
    a failed write leaves no folders behind."""
    directory = os.path.dirname(os.path.abspath(path))
    top = _first_missing(directory)
    make_folders(directory)
    try:
        yield
    except BaseException:
        if top is not None:
            _remove_empty_folders(directory, top)
        raise
