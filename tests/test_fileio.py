"""The one atomic writer: complete files or nothing, never a temporary file left behind."""

import numpy as np
import pytest

from pechead_jax import fileio


def test_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    fileio.write_text(target, "first")
    fileio.write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    fileio.write_bytes(target, b"good")
    with pytest.raises(RuntimeError, match="boom"):
        with fileio.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_save_npz_round_trip(tmp_path):
    target = tmp_path / "m.npz"
    fileio.save_npz(target, x=np.arange(5), y=np.eye(2, dtype=np.float32))
    with np.load(target) as f:
        np.testing.assert_array_equal(f["x"], np.arange(5))
        assert f["y"].dtype == np.float32
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
