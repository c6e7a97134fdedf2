"""Writing never goes through a planted link nor outside the folder a command owns, reading opens
only regular files, a folder has one writer at a time, and the library writes files only through
`spae_lab.io` (issue 23, items 1, 9 and 10)."""

from __future__ import annotations

import ast
import hashlib
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from spae_lab import io as sio

PRECIOUS = b"a file outside the output folder"


def _writers():
    """Every writer of spae_lab.io, as (name, write(target, within))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def figure(target, within):
        fig = plt.figure(figsize=(1, 1))
        sio.atomic_save_figure(fig, target, within=within)
        plt.close(fig)

    def via_path(target, within):
        with sio.atomic_write_path(target, within=within) as tmp:
            tmp.write_bytes(b"new")

    return [
        ("text", lambda t, w: sio.atomic_write_text(t, "new", within=w)),
        ("json", lambda t, w: sio.atomic_write_json(t, {"new": 1}, within=w)),
        ("bytes", lambda t, w: sio.atomic_write_bytes(t, b"new", within=w)),
        ("image", lambda t, w: sio.atomic_save_image(Image.new("RGB", (2, 2)), t, within=w)),
        ("figure", figure),
        ("path", via_path),
    ]


@pytest.fixture()
def planted(tmp_path):
    """OUT/, a precious file outside it, and a link to it planted at OUT/result.png."""
    out, precious = tmp_path / "out", tmp_path / "precious.png"
    out.mkdir()
    precious.write_bytes(PRECIOUS)
    (out / "result.png").symlink_to(precious)
    return out, precious


@pytest.mark.parametrize("writer", [w for w in _writers()], ids=[n for n, _ in _writers()])
def test_a_link_planted_at_the_target_is_replaced_never_followed(planted, writer):
    out, precious = planted
    _, write = writer
    write(out / "result.png", out)
    assert precious.read_bytes() == PRECIOUS
    assert not (out / "result.png").is_symlink() and (out / "result.png").stat().st_size > 0
    assert [p.name for p in out.iterdir()] == ["result.png"]  # no temporary left behind


@pytest.mark.parametrize("writer", [w for w in _writers()], ids=[n for n, _ in _writers()])
def test_a_linked_folder_inside_out_cannot_lead_out(tmp_path, writer):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "images").symlink_to(elsewhere, target_is_directory=True)
    _, write = writer
    with pytest.raises(sio.OwnershipError, match="outside"):
        write(out / "images" / "x.png", out)
    assert list(elsewhere.iterdir()) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), sio.atomic_open(target, "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_written_files_get_the_usual_permissions(tmp_path):
    sio.atomic_write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_append_refuses_a_link_and_appends_to_a_file(tmp_path):
    precious = tmp_path / "precious"
    precious.write_bytes(PRECIOUS)
    (tmp_path / "metrics.jsonl").symlink_to(precious)
    with pytest.raises(sio.OutputError, match="is a link"):
        sio.append_text(tmp_path / "metrics.jsonl", "{}\n")
    assert precious.read_bytes() == PRECIOUS
    sio.append_text(tmp_path / "log.jsonl", "1\n")
    sio.append_text(tmp_path / "log.jsonl", "2\n")
    assert (tmp_path / "log.jsonl").read_text() == "1\n2\n"


def test_unwritable_targets_are_one_clear_line_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(sio.OutputError, match=r"file is a file, not a folder"):
        sio.atomic_write_text(tmp_path / "file" / "sub" / "a.txt", "x")
    with pytest.raises(sio.OutputError, match="over the 255-byte limit"):
        sio.atomic_write_text(tmp_path / ("n" * 252 + ".png"), "x")
    sio.atomic_write_text(tmp_path / ("n" * 240 + ".png"), "x")  # long names work: the temporary is cut
    (tmp_path / "folder").mkdir()
    with pytest.raises(sio.OutputError, match="a folder of that name"):
        sio.atomic_write_text(tmp_path / "folder", "x")


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done = []
    thread = threading.Thread(target=lambda: done.append(_refused(fifo)), daemon=True)
    thread.start()
    thread.join(10)
    assert done == [True]
    (tmp_path / "ok.png").write_bytes(b"x")
    with sio.open_regular_file(tmp_path / "ok.png") as f:
        assert f.read() == b"x"


def _refused(path) -> bool:
    try:
        sio.open_regular_file(path)
    except sio.NotRegularFileError as e:
        return "FIFO" in str(e)
    return False


def test_a_folder_lock_refuses_a_second_writer_and_never_follows_a_planted_link(tmp_path):
    folder, precious = tmp_path / "out", tmp_path / "precious"
    folder.mkdir()
    precious.write_bytes(PRECIOUS)
    (folder / sio.LOCK_NAME).symlink_to(precious)
    first, second = sio.FolderLock(folder), sio.FolderLock(folder)
    first.acquire()
    assert precious.read_bytes() == PRECIOUS and not (folder / sio.LOCK_NAME).is_symlink()
    with pytest.raises(sio.FolderBusyError, match=f"pid {os.getpid()}"):
        second.acquire()
    with pytest.raises(sio.FolderBusyError):
        second.refuse_if_locked()
    first.release()
    second.acquire()
    second.release()


def test_sha256_helpers_agree(tmp_path):
    (tmp_path / "a").write_text("spae")
    assert sio.sha256_file(tmp_path / "a") == sio.sha256_text("spae") == hashlib.sha256(b"spae").hexdigest()


# --- every writer of the library goes through spae_lab.io -----------------------------------------

LIBRARY = Path(sio.__file__).parent
# Calls that write a file at a path given to them.
WRITING_METHODS = {"save", "savefig", "write_text", "write_bytes", "to_csv", "to_json", "to_parquet",
                   "save_pretrained", "save_file", "execute_notebook", "connect", "dump", "mkfifo"}
# Reviewed exceptions: (module, method) -> why the call is safe.
ALLOWED = {
    ("teacher/train.py", "save"): "Teacher.save writes with atomic_write_path (teacher/model.py)",
    ("video/teacher.py", "save"): "ClipTeacher.save writes with atomic_write_path",
    ("llm/cache.py", "connect"): "remove_links clears the database and its -wal/-shm before SQLite opens them",
    ("views/report.py", "execute_notebook"): "into the run's own folder, created empty just before",
    ("widgets/pyramid_app.py", "to_json"): "plotly.io.to_json(figure) returns the JSON as a string",
}


def _temporaries(tree: ast.AST) -> set[str]:
    """Names bound by `with atomic_write_path(...) as NAME` or `atomic_open(...) as NAME`, the
    folders of `tempfile.TemporaryDirectory()` (paths no other process has seen), and in-memory
    buffers (`NAME = io.BytesIO()`: no file at all)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if (getattr(func, "attr", None) or getattr(func, "id", None)) in ("BytesIO", "StringIO"):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                func = getattr(call, "func", None)
                name = getattr(func, "attr", None) or getattr(func, "id", None)
                if name in ("atomic_write_path", "atomic_open", "TemporaryDirectory") and \
                        isinstance(item.optional_vars, ast.Name):
                    names.add(item.optional_vars.id)
    return names


def _uses(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _raw_writes(source: str, module: str) -> list[str]:
    """'module:line name(...)' of every call in `source` that writes a file it was given a path to,
    unless that path is a fresh temporary or the call is in ALLOWED."""
    tree = ast.parse(source)
    temporaries = _temporaries(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = getattr(func, "attr", None) or getattr(func, "id", None)
        if name == "open":
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            writes = isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
        else:
            writes = name in WRITING_METHODS and bool(node.args or any(k.arg in ("path", "path_or_buf")
                                                                     for k in node.keywords))
        if writes and not _uses(node, temporaries) and (module, name) not in ALLOWED:
            found.append(f"{module}:{node.lineno} {name}(...)")
    return found


def test_the_library_writes_files_only_through_spae_lab_io():
    """A new `img.save(path)`, `open(path, "w")` or `df.to_csv(path)` would follow a link planted
    at `path` and leave half a file when killed: use the writers of spae_lab.io."""
    raw = [hit for path in sorted(LIBRARY.rglob("*.py")) if path.name != "io.py"
           for hit in _raw_writes(path.read_text(), path.relative_to(LIBRARY).as_posix())]
    assert raw == [], "write these through spae_lab.io (atomic, never through a link):\n" + "\n".join(raw)


def test_the_writer_check_sees_raw_writes():
    """The check above can fail: it finds each kind of raw write in a module made for it."""
    hits = _raw_writes("def f(img, df, path, fig):\n"
                       "    img.save(path)\n    df.to_csv(path)\n    fig.savefig(path)\n"
                       "    open(path, 'w').write('x')\n    path.write_text('x')\n"
                       "    df.to_csv(index=False)\n    open(path).read()\n"
                       "    with atomic_write_path(path) as tmp:\n        img.save(tmp)\n"
                       "    buffer = io.BytesIO()\n    img.save(buffer)\n", "probe.py")
    assert sorted(h.split()[1] for h in hits) == ["open(...)", "save(...)", "savefig(...)", "to_csv(...)",
                                                  "write_text(...)"]


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    (tmp_path / ".results.csv.abcd.tmp").write_text("half")
    (tmp_path / "keep.csv").write_text("x")
    assert [p.name for p in sio.remove_stale_temporaries(tmp_path)] == [".results.csv.abcd.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]
