"""Loading never runs code from a file the user gives: one test per loader, each with a planted payload.

Every payload below would, if unpickled or executed, create a marker file; each test asserts the
loader refuses the input with kfopt's own error *and* the marker does not exist (so it could fail).
The Keras loaders (.keras safe mode, SavedModel inside Keras' safe-mode scope, a Lambda layer's code)
are tested the same way in tests/test_existing_model.py::test_lambda_layers_are_never_deserialized.
"""

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kfopt.errors import KfoptError


class _Payload:
    """Unpickling this creates `marker` (the way a malicious pickle runs code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": _Payload(marker)})


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_a_torch_pickle_is_refused_unopened(tmp_path, suffix):
    from kfopt import frameworks

    marker, model = tmp_path / "ran", tmp_path / f"model{suffix}"
    model.write_bytes(_pickle_bytes(marker))
    with pytest.raises(KfoptError, match=r"torch\.export\.save"):
        frameworks.detect(model).load_user(model, None)
    assert not marker.exists()


def test_a_pickle_renamed_pt2_is_refused_unopened(tmp_path):
    """torch.export.load reads a zip of tensors and a JSON graph; a pickle under a .pt2 name is not one."""
    from kfopt import frameworks

    marker, model = tmp_path / "ran", tmp_path / "model.pt2"
    with zipfile.ZipFile(model, "w") as archive:  # a torch.save-style archive: data.pkl holds the pickle
        archive.writestr("archive/data.pkl", _pickle_bytes(marker))
        archive.writestr("archive/version", "3\n")
    with pytest.raises(KfoptError):
        frameworks.detect(model).load_user(model, None)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".h5", ".pkl", ".joblib"])
def test_other_pickle_like_formats_are_refused_by_name_and_never_read(tmp_path, suffix):
    from kfopt import frameworks

    marker, model = tmp_path / "ran", tmp_path / f"model{suffix}"
    model.write_bytes(_pickle_bytes(marker))
    with pytest.raises(KfoptError, match="Pickles"):
        frameworks.detect(model)
    assert not marker.exists()


def test_an_npz_with_pickled_objects_is_refused(tmp_path):
    from kfopt.data.load import load

    marker, data = tmp_path / "ran", tmp_path / "data.npz"
    x = np.empty(60, dtype=object)
    x[:] = [_Payload(marker) for _ in range(60)]
    buf = io.BytesIO()
    np.savez(buf, x=x, y=np.arange(60) % 2)
    data.write_bytes(buf.getvalue())
    with pytest.raises(KfoptError, match="allow_pickle"):
        load(str(data), "label")
    assert not marker.exists()


def test_an_onnx_file_is_parsed_not_run(tmp_path):
    """ONNX is a protobuf: loading it parses data. A pickle posing as .onnx is one clear error."""
    from kfopt import frameworks

    marker, model = tmp_path / "ran", tmp_path / "model.onnx"
    model.write_bytes(_pickle_bytes(marker))
    with pytest.raises(KfoptError):
        frameworks.detect(model).load_user(model, None)
    assert not marker.exists()
