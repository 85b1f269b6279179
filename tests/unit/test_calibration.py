"""Every calibration-data reader, through the public `open_data`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from qconvert.calibration import open_data
from qconvert.config import DataConfig, Layout
from qconvert.errors import DataError, UsageError
from qconvert.model import TensorSpec

F32 = np.dtype(np.float32)
IMAGE = [TensorSpec("image", F32, ("batch", 3, 8, 8))]
TWO = [TensorSpec("a", F32, ("batch", 4)), TensorSpec("ids", np.dtype(np.int64), ("batch", 5))]


def _two_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((n, 4)).astype(np.float32), "ids": rng.integers(0, 9, (n, 5))}


def test_batched_npz_keeps_a_batch_axis_of_one(tmp_path: Path) -> None:
    arrays = _two_inputs(6)
    np.savez(tmp_path / "d.npz", **arrays)
    data = open_data(DataConfig(str(tmp_path / "d.npz")), TWO)
    samples = list(data)
    assert len(samples) == 6 and data.kind == "npz" and not data.synthetic
    np.testing.assert_array_equal(samples[2]["a"], arrays["a"][2:3])
    np.testing.assert_array_equal(samples[5]["ids"], arrays["ids"][5:6])


def test_npz_one_rank_higher_is_a_stack_of_unbatched_samples(tmp_path: Path) -> None:
    specs = [TensorSpec("v", F32, (4,))]
    stack = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "d.npz", v=stack)
    samples = list(open_data(DataConfig(str(tmp_path / "d.npz")), specs))
    assert [s["v"].tolist() for s in samples] == stack.tolist()


def test_max_samples_and_ignored_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", labels=np.arange(6), **_two_inputs(6))
    data = open_data(DataConfig(str(tmp_path / "d.npz"), max_samples=4, ignore_keys=("labels",)), TWO)
    assert data.count() == 4
    assert set(next(iter(data))) == {"a", "ids"}


def test_every_mismatch_is_listed_in_one_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", a=np.zeros((3, 7), np.float64), extra=np.zeros(3))
    with pytest.raises(DataError) as info:
        open_data(DataConfig(str(tmp_path / "d.npz")), TWO)
    details = "\n".join(info.value.details)
    assert "unexpected input 'extra'" in details
    assert "missing input 'ids'" in details
    assert "'a': dtype float64, model expects float32" in details
    assert "'a': dim 1 is 7, model expects 4" in details


def test_rank_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", image=np.zeros((2, 3, 8, 8, 1, 1), np.float32))
    with pytest.raises(DataError) as info:
        open_data(DataConfig(str(tmp_path / "d.npz")), IMAGE)
    assert any("rank" in d for d in info.value.details)


def test_unequal_sample_counts(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", a=np.zeros((3, 4), np.float32), ids=np.zeros((2, 5), np.int64))
    with pytest.raises(DataError, match="share a non-empty axis 0"):
        open_data(DataConfig(str(tmp_path / "d.npz")), TWO)


def test_non_finite_values_name_the_sample(tmp_path: Path) -> None:
    arrays = _two_inputs(4)
    arrays["a"][2, 1] = np.nan
    np.savez(tmp_path / "d.npz", **arrays)
    data = open_data(DataConfig(str(tmp_path / "d.npz")), TWO)
    with pytest.raises(DataError, match="sample 2, input 'a': 1 NaN/Inf"):
        list(data)


def test_npz_folder_reads_files_in_name_order(tmp_path: Path) -> None:
    for i in (2, 0, 1):
        np.savez(tmp_path / f"s{i}.npz", **_two_inputs(1, seed=i))
    samples = list(open_data(DataConfig(str(tmp_path)), TWO))
    assert len(samples) == 3
    np.testing.assert_array_equal(samples[1]["a"], _two_inputs(1, seed=1)["a"])


def test_npy_folder(tmp_path: Path) -> None:
    arrays = _two_inputs(5)
    for name, value in arrays.items():
        np.save(tmp_path / f"{name}.npy", value)
    data = open_data(DataConfig(str(tmp_path)), TWO)
    samples = list(data)
    assert data.kind == "npy-folder" and len(samples) == 5
    np.testing.assert_array_equal(samples[3]["ids"], arrays["ids"][3:4])


def test_onnx_test_data_named_and_by_position(tmp_path: Path) -> None:
    arrays = _two_inputs(1)
    for i, named in enumerate((True, False)):
        folder = tmp_path / f"test_data_set_{i}"
        folder.mkdir()
        for position, (name, value) in enumerate(arrays.items()):
            tensor = numpy_helper.from_array(value + i, name if named else "")
            (folder / f"input_{position}.pb").write_bytes(tensor.SerializeToString())
    data = open_data(DataConfig(str(tmp_path)), TWO)
    samples = list(data)
    assert data.kind == "onnx-test-data" and len(samples) == 2
    np.testing.assert_array_equal(samples[1]["ids"], arrays["ids"] + 1)


def test_corrupt_test_data_tensor(tmp_path: Path) -> None:
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    (folder / "input_0.pb").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(DataError, match="cannot read tensor"):
        open_data(DataConfig(str(tmp_path)), TWO)


def _png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (20, 10)) -> None:
    from PIL import Image

    Image.new("RGB", size, rgb).save(path)


def test_image_folder_resizes_and_normalises(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", (255, 0, 51))
    _png(tmp_path / "b.jpg", (0, 0, 0))
    data = open_data(DataConfig(str(tmp_path), mean=(0.5,), std=(0.5,)), IMAGE)
    samples = list(data)
    assert data.kind == "images" and len(samples) == 2
    first = samples[0]["image"]
    assert first.shape == (1, 3, 8, 8) and first.dtype == np.float32
    np.testing.assert_allclose(first[0, :, 4, 4], [(1 - 0.5) / 0.5, (0 - 0.5) / 0.5, (0.2 - 0.5) / 0.5], atol=1e-6)


def test_image_folder_nhwc_grayscale_and_explicit_size(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", (255, 255, 255))
    nhwc = [TensorSpec("img", F32, (1, "h", "w", 1))]
    with pytest.raises(UsageError, match="dynamic height/width") as info:
        open_data(DataConfig(str(tmp_path), layout=Layout.NHWC), nhwc)
    assert info.value.hint == "pass --image-size H,W"
    samples = list(open_data(DataConfig(str(tmp_path), image_size=(6, 4), layout=Layout.NHWC), nhwc))
    assert samples[0]["img"].shape == (1, 6, 4, 1)
    np.testing.assert_allclose(samples[0]["img"], 1.0)


def test_image_folder_refuses_multi_input_models(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", (1, 2, 3))
    with pytest.raises(UsageError, match="one input"):
        open_data(DataConfig(str(tmp_path)), TWO)


def test_plugin_from_file_and_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = textwrap.dedent("""
        import numpy as np
        def samples():
            for i in range(3):
                yield {"a": np.full((1, 4), i, np.float32), "ids": np.zeros((1, 5), np.int64)}
        def broken():
            raise RuntimeError("no data today")
        def not_dicts():
            return [1, 2]
    """)
    (tmp_path / "myplugin.py").write_text(code)
    data = open_data(DataConfig(f"{tmp_path / 'myplugin.py'}:samples"), TWO)
    assert data.kind == "plugin" and [float(s["a"][0, 0]) for s in data] == [0.0, 1.0, 2.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert open_data(DataConfig("myplugin:samples"), TWO).count() == 3
    with pytest.raises(DataError, match="no data today"):
        open_data(DataConfig("myplugin:broken"), TWO)
    with pytest.raises(DataError, match="expected a dict"):
        open_data(DataConfig("myplugin:not_dicts"), TWO)
    with pytest.raises(UsageError, match="no function 'missing'"):
        open_data(DataConfig("myplugin:missing"), TWO)


def test_synthetic_from_specs(tmp_path: Path) -> None:
    data = open_data(DataConfig("synthetic", max_samples=3, seed=7), TWO)
    samples = list(data)
    assert data.synthetic and len(samples) == 3
    assert samples[0]["a"].shape == (1, 4) and samples[0]["ids"].dtype == np.int64
    again = list(open_data(DataConfig("synthetic", max_samples=3, seed=7), TWO))
    np.testing.assert_array_equal(samples[2]["a"], again[2]["a"])
    other = list(open_data(DataConfig("synthetic", max_samples=3, seed=8), TWO))
    assert not np.array_equal(samples[0]["a"], other[0]["a"])


def test_synthetic_dynamic_dims_need_shapes() -> None:
    specs = [TensorSpec("tokens", np.dtype(np.int64), ("batch", "seq"))]
    with pytest.raises(UsageError, match=r"dynamic dim 1 \(seq\)") as info:
        open_data(DataConfig("synthetic"), specs)
    assert info.value.hint == "pass --shape tokens=N,N"
    data = open_data(DataConfig("synthetic", shapes=(("tokens", (2, 7)),)), specs)
    assert next(iter(data))["tokens"].shape == (2, 7)


@pytest.mark.parametrize("make", ["missing", "empty", "text", "empty_npz_folder"])
def test_unusable_sources(tmp_path: Path, make: str) -> None:
    target = tmp_path / "src"
    if make == "empty":
        target.mkdir()
    elif make == "text":
        target = tmp_path / "notes.txt"
        target.write_text("hi")
    elif make == "empty_npz_folder":
        target.mkdir()
        np.savez(target / "only.npz", a=np.zeros((0, 4), np.float32))
    with pytest.raises(DataError):
        open_data(DataConfig(str(target)), TWO)


def test_iterating_twice_rereads_the_same_samples(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", **_two_inputs(4))
    data = open_data(DataConfig(str(tmp_path / "d.npz")), TWO)
    first, second = list(data), list(data)
    assert all(np.array_equal(x["a"], y["a"]) for x, y in zip(first, second, strict=True))


def test_model_inputs_come_from_onnx(tmp_path: Path) -> None:
    from qconvert.model import input_specs
    from tests import models

    specs = input_specs(models.initializers_as_inputs())
    assert specs == [TensorSpec("x", F32, ("batch", 16))]
