"""Write then rename: a failed write leaves the previous file or folder, never a partial one."""

from __future__ import annotations

import pytest

from deblurdiff.files import atomic_write, atomic_write_bytes, atomic_write_text, publish_directory


def test_written_files_appear_whole_and_replace_the_old(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_a_failing_write_keeps_the_previous_file_and_no_leftover(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "complete")

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_publish_directory_swaps_whole_folders(tmp_path):
    out = tmp_path / "model"
    publish_directory(out, lambda tmp: (tmp.mkdir(), (tmp / "a.json").write_text("1")))
    publish_directory(out, lambda tmp: (tmp.mkdir(), (tmp / "b.json").write_text("2")))
    assert [p.name for p in out.iterdir()] == ["b.json"]

    def crash(tmp):
        tmp.mkdir()
        (tmp / "c.json").write_text("3")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        publish_directory(out, crash)
    assert [p.name for p in out.iterdir()] == ["b.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
