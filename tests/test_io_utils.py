"""The one atomic writer: permissions follow the umask, failures leave nothing, output checks are one line."""

import json
import os
import stat

import pytest

from keras_t2t import io_utils


def test_json_files_get_the_umask_permissions_like_every_other_output(tmp_path):
    old = os.umask(0o022)
    try:
        path = io_utils.write_json_atomic(os.path.join(tmp_path, "summary.json"), {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert json.load(open(path)) == {"a": 1}


def test_save_atomic_keeps_the_old_file_and_no_temporary_when_the_writer_fails(tmp_path):
    path = os.path.join(tmp_path, "best.weights.h5")
    with open(path, "w") as handle:
        handle.write("old")

    def failing(temp):
        assert temp.endswith(".weights.h5") and os.path.dirname(temp) == str(tmp_path)
        with open(temp, "w") as handle:
            handle.write("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        io_utils.save_atomic(path, failing)
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["best.weights.h5"]
    io_utils.save_atomic(path, lambda temp: open(temp, "w").write("new"))
    assert open(path).read() == "new" and os.listdir(tmp_path) == ["best.weights.h5"]


def test_an_output_folder_under_a_file_is_refused_in_one_line(tmp_path):
    blocker = os.path.join(tmp_path, "file")
    open(blocker, "w").close()
    with pytest.raises(ValueError, match=r"cannot be created: .* is a file"):
        io_utils.check_output_folder(os.path.join(blocker, "run"))
    with pytest.raises(ValueError, match="cannot be written"):
        io_utils.check_output_folder("/proc/keras_t2t_run")
    assert io_utils.check_output_folder(os.path.join(tmp_path, "new", "run")).endswith("run")
    assert not os.path.exists(os.path.join(tmp_path, "new"))
