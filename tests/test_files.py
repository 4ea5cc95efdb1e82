"""Publishing files: a kill or a full disk never destroys the previous good file, killed writers leave
nothing that grows, published files are readable by others, and one run directory has one writer."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tf_gpt2 import GPT2, GPT2Config
from tf_gpt2.files import atomic_write, bytes_writer, exclusive, save_keras

# tf_gpt2/files.py imports the standard library only: a fresh process that needs nothing else loads it alone, as
# `files`, without the package's `__init__` (TensorFlow: seconds of each test).
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tf_gpt2")
FILES_ALONE = f"import sys; sys.path.insert(0, {PACKAGE_DIR!r}); import files; assert 'tensorflow' not in sys.modules"


def _tiny(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=40, n_positions=16))


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_keeps_the_previous_keras_file(tmp_path, monkeypatch):
    import keras

    path = str(tmp_path / "model.keras")
    good = _tiny(0)
    save_keras(good, path)
    before = open(path, "rb").read()

    def half_then_full(model, tmp, **kwargs):  # what a full disk does: part of the file, then ENOSPC
        with open(tmp, "wb") as f:
            f.write(before[: len(before) // 2])
        _disk_full()

    other = _tiny(1)
    monkeypatch.setattr(keras.Model, "save", half_then_full)  # (Keras' own writing, under GPT2.save)
    with pytest.raises(OSError, match="No space left"):
        save_keras(other, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["model.keras"]  # no temporary left behind
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded.get_weights()[0], good.get_weights()[0])


def test_model_save_and_config_save_interrupted_keep_the_previous_file(tmp_path, monkeypatch):
    """`model.save("x.keras")` (Keras' own writes its archive in place) and `GPT2Config.save`, stopped halfway."""
    import zipfile

    path, config_path = tmp_path / "model.keras", tmp_path / "config.json"
    good = _tiny(0)
    good.save(path)
    good.config.save(config_path)
    before, config_before = path.read_bytes(), config_path.read_bytes()
    open_member = zipfile.ZipFile.open

    def interrupted_at_the_second_member(self, name, mode="r", **kwargs):
        if mode == "w" and len(self.namelist()) == 1:
            raise KeyboardInterrupt
        return open_member(self, name, mode, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", interrupted_at_the_second_member)
    with pytest.raises(KeyboardInterrupt):
        _tiny(1).save(path)
    monkeypatch.setattr("tf_gpt2.files.write_file",
                        lambda path, data: open(path, "wb").write(data[:9]) and _disk_full())
    with pytest.raises(OSError, match="No space left"):
        GPT2Config.from_preset("gpt2-tiny").save(config_path)
    assert path.read_bytes() == before and config_path.read_bytes() == config_before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.keras"]  # no temporary left behind
    assert GPT2Config.load(config_path) == good.config
    config_path.write_text('{"n_layer": 2, "n_embd": 64, "n_head": 2, "colour": "red"}')
    with pytest.raises(ValueError, match=f"{config_path}: unknown GPT2Config fields: \\['colour'\\]"):
        GPT2Config.load(config_path)


def test_a_kill_while_saving_keeps_the_previous_keras_file_and_the_next_save_cleans_up(tmp_path):
    path = str(tmp_path / "model.keras")
    save_keras(_tiny(0), path)
    before = open(path, "rb").read()
    script = textwrap.dedent(f"""
        import os, signal, zipfile
        import keras
        from tf_gpt2 import GPT2, GPT2Config
        from tf_gpt2.files import save_keras
        open_member, opened = zipfile.ZipFile.open, []
        def die_on_second_member(self, name, mode="r", **kwargs):  # killed in the middle of the archive
            if mode == "w":
                opened.append(name)
                if len(opened) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return open_member(self, name, mode, **kwargs)
        zipfile.ZipFile.open = die_on_second_member
        keras.utils.set_random_seed(1)
        save_keras(GPT2(GPT2Config.from_preset("gpt2-tiny", vocab_size=40, n_positions=16)), {path!r})
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert open(path, "rb").read() == before  # the good file is untouched
    leftovers = [n for n in os.listdir(tmp_path) if n != "model.keras"]
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]  # the killed write's partial file
    save_keras(_tiny(2), path)
    assert os.listdir(tmp_path) == ["model.keras"]  # swept by the next write


def test_what_a_writing_library_stages_beside_its_file_is_swept_after_a_kill(tmp_path):
    """safetensors writes its own `.tmpXXXXXX` beside the file it is given and renames it there: a writer killed in
    between leaves it in the killed write's own folder, which the next write of the file removes whole."""
    path = tmp_path / "model.safetensors"
    atomic_write(str(path), bytes_writer(b"good"))
    script = textwrap.dedent(f"""
        import os, signal
        {FILES_ALONE}
        from files import atomic_write
        def as_safetensors_writes(tmp):
            with open(os.path.join(os.path.dirname(tmp), ".tmpAbC123"), "wb") as f:  # its own temporary
                f.write(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(path)!r}, as_safetensors_writes)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert path.read_bytes() == b"good" and len(os.listdir(tmp_path)) == 2
    atomic_write(str(path), bytes_writer(b"better"))
    assert os.listdir(tmp_path) == ["model.safetensors"] and path.read_bytes() == b"better"


def test_a_write_cut_short_in_a_work_folder_names_the_output_the_temp_folder_and_tmpdir(tmp_path):
    """A `.litertlm` is assembled from parts written in a temp folder: a part cut short there (EFBIG from
    RLIMIT_FSIZE; a full /tmp alike) is said of the temp folder, with TMPDIR, and of the output; nothing stays."""
    (tmp_path / "temp").mkdir()
    script = textwrap.dedent(f"""
        import os, resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        {FILES_ALONE}
        from files import atomic_write, work_dir, write_file
        def assemble(tmp):
            with work_dir("parts") as folder:
                write_file(os.path.join(folder, "model.tflite"), b"x" * 5000)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
        try:
            atomic_write({str(tmp_path / "m.litertlm")!r}, assemble)
        except OSError as e:
            print(e)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TMPDIR": str(tmp_path / "temp")})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == (f"[Errno 27] File too large in the temp folder {tmp_path / 'temp'}, where it is "
                                  f"staged (set TMPDIR to stage it elsewhere) (while writing): "
                                  f"'{tmp_path / 'm.litertlm'}'")
    assert os.listdir(tmp_path / "temp") == [] and sorted(os.listdir(tmp_path)) == ["temp"]


def test_published_files_and_directories_are_readable_by_other_users(tmp_path):
    os.umask(0o022)
    atomic_write(str(tmp_path / "f.bin"), lambda tmp: open(tmp, "wb").write(b"x"))
    assert stat.S_IMODE(os.stat(tmp_path / "f.bin").st_mode) == 0o644

    def write_dir(tmp):
        os.makedirs(os.path.join(tmp, "variables"), mode=0o700)
        fd = os.open(os.path.join(tmp, "variables", "v.bin"), os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)

    atomic_write(str(tmp_path / "1"), write_dir)
    assert stat.S_IMODE(os.stat(tmp_path / "1").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "1" / "variables").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "1" / "variables" / "v.bin").st_mode) == 0o644


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    """A private file rewritten (a model saved again) became readable by everyone (0644)."""
    os.umask(0o022)
    (tmp_path / "f.bin").write_bytes(b"x")
    for kept in (0o600, 0o640):
        os.chmod(tmp_path / "f.bin", kept)
        atomic_write(str(tmp_path / "f.bin"), lambda tmp: open(tmp, "wb").write(oct(kept).encode()))
        assert stat.S_IMODE(os.stat(tmp_path / "f.bin").st_mode) == kept
        assert (tmp_path / "f.bin").read_bytes() == oct(kept).encode()


def test_a_refused_rename_names_the_file_not_its_staged_copy(tmp_path, monkeypatch):
    """The last step, the rename over the old file, refused (another user's file in a sticky folder) named the
    hidden staged copy; the old file stays, and nothing staged is left."""
    def refused(source, target):
        raise PermissionError(errno.EACCES, "Permission denied", source, None, target)

    (tmp_path / "f.bin").write_bytes(b"old")
    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(PermissionError) as failed:
        atomic_write(str(tmp_path / "f.bin"), lambda tmp: open(tmp, "wb").write(b"new"))
    assert failed.value.filename == str(tmp_path / "f.bin") and "while putting" in failed.value.strerror
    assert (tmp_path / "f.bin").read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_a_directory_in_use_is_refused_until_its_holder_ends(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        {FILES_ALONE}
        from files import exclusive
        with exclusive({str(tmp_path)!r}, "training run"):
            print("held", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"in use by another training run \(pid {holder.pid}\)"):
            with exclusive(str(tmp_path), "training run"):
                pass
        with pytest.raises(RuntimeError, match=rf"in use by another training run \(pid {holder.pid}\)"):
            with exclusive(str(tmp_path), "prepare"):  # the holder's kind, not the caller's
                pass
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock with the process
        holder.wait()
    with exclusive(str(tmp_path), "training run"):
        pass


def test_a_file_system_without_locks_is_named_and_the_folder_made_for_the_lock_removed(tmp_path, monkeypatch):
    """Lustre without `-o flock`, some network mounts: flock fails with ENOSYS or ENOLCK, not as a held lock."""
    import errno
    import fcntl

    def unsupported(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", unsupported)
    with pytest.raises(OSError, match=r"Function not implemented: this file system cannot lock the file that keeps a "
                                      r"second training run out of the folder; use a folder on a local disk: "
                                      rf"'{tmp_path}/run/.lock'"):
        with exclusive(str(tmp_path / "run"), "training run"):
            pass
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    with pytest.raises(ValueError):  # a run that fails before writing: the folders made for it go, parents too
        with exclusive(str(tmp_path / "runs" / "new" / "run"), "training run"):
            raise ValueError("refused")
    assert os.listdir(tmp_path) == []
    (tmp_path / "runs").mkdir()
    with exclusive(str(tmp_path / "runs" / "new" / "run"), "training run"):
        (tmp_path / "runs" / "notes.txt").write_text("kept")  # a parent there before, and a file of its own
    assert sorted(os.listdir(tmp_path / "runs")) == ["notes.txt"]
    with exclusive(str(tmp_path / "runs" / "new" / "run"), "training run"):
        (tmp_path / "runs" / "new" / "other.txt").write_text("kept")  # a parent made for it, given a file meanwhile
    assert os.listdir(tmp_path / "runs" / "new") == ["other.txt"]
    os.symlink(tmp_path / "runs" / "new", tmp_path / "link")
    with pytest.raises(ValueError):  # through a link and back up: the folders made where it leads (runs/made) go
        with exclusive(str(tmp_path / "link" / ".." / "made" / "run"), "training run"):
            raise ValueError("refused")
    assert sorted(os.listdir(tmp_path / "runs")) == ["new", "notes.txt"]


def test_a_waiter_for_a_folder_removed_by_a_failed_holder_makes_it_again(tmp_path, monkeypatch):
    """Exports wait for each other: the first, into a folder it made, fails and removes the folder (a failed export
    into a new --out left one holding only its lock); the one that waited makes it again and writes there."""
    import fcntl
    import threading

    folder, failed, wrote = str(tmp_path / "served" / "gpt2"), [], []
    entered, waiting = threading.Event(), threading.Event()
    flock = fcntl.flock

    def said_flock(file, operation):
        if threading.current_thread().name == "second" and operation == fcntl.LOCK_EX:
            waiting.set()  # about to wait for the first's lock
        return flock(file, operation)

    monkeypatch.setattr(fcntl, "flock", said_flock)

    def first():
        try:
            with exclusive(folder, "export", wait=True):
                entered.set()
                waiting.wait(timeout=60)
                time.sleep(0.2)  # (from the flag to the wait inside flock)
                raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            failed.append(e)

    def second():
        entered.wait()
        with exclusive(folder, "export", wait=True):
            with open(os.path.join(folder, "1"), "w") as f:
                f.write("version 1")
            wrote.append(True)

    threads = [threading.Thread(target=first, name="first"), threading.Thread(target=second, name="second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failed and wrote == [True] and waiting.is_set()
    assert sorted(os.listdir(folder)) == [".lock", "1"]
    with pytest.raises(OSError):  # alone, a failed one leaves nothing
        with exclusive(str(tmp_path / "new"), "export", wait=True):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["served"]
    os.remove(os.path.join(folder, ".lock"))
    os.symlink(tmp_path / "gone" / "x", os.path.join(folder, ".lock"))  # a folder that stays: no retry (no busy loop)
    with pytest.raises(FileNotFoundError, match=r"\.lock"):
        with exclusive(folder, "export", wait=True):
            pass
    os.symlink(tmp_path / "gone" / "x", tmp_path / "dangling")  # a parent that is a broken link: no retry either
    with pytest.raises(FileNotFoundError):
        with exclusive(str(tmp_path / "dangling" / "run"), "training run"):
            pass


def test_working_directories_of_killed_processes_are_removed_by_the_next_one(tmp_path, monkeypatch):
    """A LiteRT conversion killed midway leaves its working directory (the whole model): the next one sweeps it."""
    import subprocess
    import sys
    import tempfile

    from tf_gpt2.files import work_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"tf_gpt2-litert-{int(dead.stdout)}-abc"
    (stale / "saved").mkdir(parents=True)
    alive = tmp_path / f"tf_gpt2-litert-{os.getppid()}-def"  # a conversion still running in another process
    alive.mkdir()
    other = tmp_path / "somebody-else"
    other.mkdir()
    with work_dir("litert") as directory:
        assert os.path.isdir(directory) and os.path.basename(directory).startswith(f"tf_gpt2-litert-{os.getpid()}-")
        assert not stale.exists() and alive.exists() and other.exists()
    assert not os.path.exists(directory)


def _cut_short_then_disk_full(tmp):
    """What a disk that fills during a write leaves: the first half of each file written so far, then ENOSPC."""
    for path in ([tmp] if os.path.isfile(tmp) else
                 [os.path.join(d, n) for d, _, names in os.walk(tmp) for n in names]):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    _disk_full()


def _tree_bytes(path):
    if os.path.isfile(path):
        return {"": open(path, "rb").read()}
    return {os.path.relpath(os.path.join(d, n), path): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(path) for n in names}


@pytest.mark.parametrize("artifact", ["checkpoint.npz", "run.json", "saved_model", "tflite", "hf"])
def test_a_disk_full_midway_through_any_write_keeps_the_previous_file(artifact, tmp_path, monkeypatch):
    """Every published file goes through one publishing step; each is cut off midway here (half of every file
    written, then ENOSPC): the previous version stays byte-identical and no temporary is left."""
    import keras

    import tf_gpt2.files
    from tf_gpt2.devices import Placement
    from tf_gpt2.export import export_saved_model
    from tf_gpt2.training import TrainConfig, run_record, save_checkpoint

    model = _tiny(0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    cfg = TrainConfig(out=str(tmp_path))
    def checkpoint_and_run_json(step):  # written together: a cut in either keeps both
        save_checkpoint(model, str(tmp_path / "checkpoint.npz"), step,
                        beside=run_record(cfg, {"settings": {"step": step}}, Placement(scope=None, replicas=1)))

    writes = {
        "checkpoint.npz": (str(tmp_path / "checkpoint.npz"), checkpoint_and_run_json),
        "run.json": (str(tmp_path / "run.json"), checkpoint_and_run_json),
        "saved_model": (str(tmp_path / "m" / "1"),
                        lambda step: export_saved_model(model, str(tmp_path / "m"), version=1,
                                                        max_new_tokens_limit=2)),
        "tflite": (str(tmp_path / "m.tflite"), None),
        "hf": (str(tmp_path / "hf" / "model.safetensors"), lambda step: model.save_pretrained(tmp_path / "hf")),
    }
    path, write = writes[artifact]
    if artifact == "tflite":
        pytest.importorskip("ai_edge_litert")
        from tf_gpt2.litert import export_litert

        write = lambda step: export_litert(model, path, cache_length=8, prefill_lengths=(4,))  # noqa: E731
    if artifact == "saved_model":
        before = {}  # a version is never replaced: the one write, cut short, must leave no version behind
    else:
        if artifact == "tflite":  # the earlier file's bytes: converting one would take as long as the write below
            (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3 an earlier export")  # (its header: one)
        else:
            write(1)
        before = _tree_bytes(path)
    monkeypatch.setattr(tf_gpt2.files, "_sync_tree", _cut_short_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        write(2)
    after = _tree_bytes(path) if os.path.exists(path) else {}
    assert after == before  # the previous file as it was (a version: still absent, never half there)
    leftovers = [n for d, dirs, names in os.walk(tmp_path) for n in dirs + names if ".tmp-" in n]
    assert leftovers == []
