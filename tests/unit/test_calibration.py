"""Every calibration-data reader, through the public `open_data`: values, caps, layouts and refusals."""

from __future__ import annotations

import importlib
import io
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper
from PIL import Image

from qconvert.calibration import CalibrationData, open_data, sample_mismatches
from qconvert.config import DataConfig, Layout
from qconvert.errors import DataError, UsageError
from qconvert.model.loading import TensorSpec

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)
# A two-input model: a float vector and integer ids, both with a dynamic batch axis.
VEC = [TensorSpec("x", F32, ("batch", 4)), TensorSpec("ids", I64, ("batch", 5))]


def _arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 4)).astype(np.float32), "ids": rng.integers(0, 1000, (n, 5))}


def _open(source: str | Path, specs: list[TensorSpec], **options: object) -> CalibrationData:
    return open_data(DataConfig(str(source), **options), specs)  # type: ignore[arg-type]


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# --- one batched .npz ----------------------------------------------------------------------------------


def test_batched_npz_at_model_rank_keeps_a_batch_axis_of_one(tmp_path: Path) -> None:
    arrays = _arrays(6)
    data = _open(_npz(tmp_path / "d.npz", **arrays), VEC)
    samples = list(data)
    assert data.kind == "npz" and data.description == str(tmp_path / "d.npz") and not data.synthetic
    assert len(samples) == data.count() == 6
    for i, sample in enumerate(samples):
        assert list(sample) == ["x", "ids"]
        assert sample["x"].shape == (1, 4) and sample["x"].dtype == F32
        assert sample["ids"].shape == (1, 5) and sample["ids"].dtype == I64
        np.testing.assert_array_equal(sample["x"], arrays["x"][i : i + 1])
        np.testing.assert_array_equal(sample["ids"], arrays["ids"][i : i + 1])


def test_batched_npz_one_rank_higher_is_a_stack_of_unbatched_samples(tmp_path: Path) -> None:
    specs = [TensorSpec("patch", F32, (2, 3)), TensorSpec("x", F32, ("batch", 4))]
    patches = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    x = _arrays(5)["x"]
    samples = list(_open(_npz(tmp_path / "d.npz", patch=patches, x=x), specs))
    assert len(samples) == 5
    for i, sample in enumerate(samples):
        assert sample["patch"].shape == (2, 3)  # unbatched: the model's own shape
        np.testing.assert_array_equal(sample["patch"], patches[i])
        np.testing.assert_array_equal(sample["x"], x[i : i + 1])  # same rank in the same file: batch of 1


def test_max_samples_caps_the_stream_at_the_first_samples(tmp_path: Path) -> None:
    arrays = _arrays(10)
    path = _npz(tmp_path / "d.npz", **arrays)
    data = _open(path, VEC, max_samples=3)
    assert data.count() == 3 and data.to_dict()["max_samples"] == 3
    np.testing.assert_array_equal(np.concatenate([s["x"] for s in data]), arrays["x"][:3])
    assert _open(path, VEC, max_samples=100).count() == 10


def test_max_samples_must_be_positive(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", **_arrays(2))
    for bad in (0, -1):
        with pytest.raises(UsageError, match="max_samples must be at least 1"):
            _open(path, VEC, max_samples=bad)
        with pytest.raises(UsageError, match="max_samples must be at least 1"):
            _open("synthetic", VEC, max_samples=bad)


def test_ignore_keys_drops_a_labels_array(tmp_path: Path) -> None:
    arrays = _arrays(4)
    labels = np.array([0.0, np.nan, 2.0, 3.0])  # ignored keys are neither returned nor checked
    path = _npz(tmp_path / "d.npz", labels=labels, **arrays)
    samples = list(_open(path, VEC, ignore_keys=("labels",)))
    assert len(samples) == 4 and all(set(s) == {"x", "ids"} for s in samples)
    np.testing.assert_array_equal(samples[3]["x"], arrays["x"][3:4])
    # An ignored key may even have its own length: it is dropped before the sample counts are compared.
    odd = _npz(tmp_path / "odd.npz", labels=np.arange(9), **arrays)
    assert _open(odd, VEC, ignore_keys=("labels",)).count() == 4


def test_an_unexpected_key_is_listed(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", labels=np.arange(4), **_arrays(4))
    with pytest.raises(DataError, match="sample 0 does not match") as info:
        _open(path, VEC)
    assert info.value.details == ("unexpected input 'labels' (model inputs: ids, x)",)


def test_every_mismatch_is_listed_in_one_error(tmp_path: Path) -> None:
    specs = [
        TensorSpec("x", F32, ("batch", 4)),
        TensorSpec("ids", I64, ("batch", 5)),
        TensorSpec("img", F32, ("batch", 3, 2, 2)),
        TensorSpec("mask", np.dtype(np.bool_), ("batch", 5)),
    ]
    path = _npz(
        tmp_path / "d.npz",
        x=np.zeros((3, 7), np.float64),  # wrong dtype AND wrong static dim
        ids=np.zeros((3, 5), np.int32),  # wrong dtype
        img=np.zeros((3, 3, 2, 2, 1, 1), np.float32),  # rank 5 after unstacking
        bogus=np.zeros((3, 2), np.float32),  # not a model input
    )  # and "mask" is missing
    with pytest.raises(DataError) as info:
        _open(path, specs)
    assert isinstance(info.value.hint, str) and "--shape" in info.value.hint
    assert info.value.details == (
        "unexpected input 'bogus' (model inputs: ids, img, mask, x)",
        "'x': dtype float64, model expects float32",
        "'x': dim 1 is 7, model expects 4 (shape [1, 7] vs ['batch', 4])",
        "'ids': dtype int32, model expects int64",
        "'img': rank 5 (shape [3, 2, 2, 1, 1]), model expects rank 4 ['batch', 3, 2, 2]",
        "missing input 'mask'",
    )
    assert info.value.to_dict()["exit_code"] == 2


def test_static_batch_dim_is_checked(tmp_path: Path) -> None:
    specs = [TensorSpec("x", F32, (2, 4))]
    with pytest.raises(DataError) as info:
        _open(_npz(tmp_path / "d.npz", x=np.zeros((6, 4), np.float32)), specs)
    assert info.value.details == ("'x': dim 0 is 1, model expects 2 (shape [1, 4] vs [2, 4])",)
    # Stacked one rank higher, each sample is a full batch of 2.
    assert _open(_npz(tmp_path / "s.npz", x=np.zeros((3, 2, 4), np.float32)), specs).count() == 3


def test_unknown_rank_and_non_positive_dims_accept_any_shape() -> None:
    specs = [TensorSpec("a", F32, None), TensorSpec("b", F32, (0, -1, "n"))]
    sample = {"a": np.zeros((2, 3, 4, 5), np.float32), "b": np.zeros((7, 8, 9), np.float32)}
    assert sample_mismatches(sample, specs) == []
    assert sample_mismatches({**sample, "a": np.zeros(3, np.int8)}, specs) == [
        "'a': dtype int8, model expects float32"
    ]


def test_arrays_with_different_sample_counts_are_refused(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", x=np.zeros((3, 4), np.float32), ids=np.zeros((2, 5), np.int64))
    with pytest.raises(DataError, match="share a non-empty axis 0") as info:
        _open(path, VEC)
    assert sorted(info.value.details) == ["ids: 2 samples", "x: 3 samples"]


@pytest.mark.parametrize(
    "arrays",
    [
        {"x": np.zeros((0, 4), np.float32), "ids": np.zeros((0, 5), np.int64)},
        {"x": np.float32(1.0), "ids": np.int64(1)},
    ],
    ids=["zero-samples", "scalars"],
)
def test_npz_without_a_sample_axis_is_refused(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    with pytest.raises(DataError, match="non-empty axis 0"):
        _open(_npz(tmp_path / "d.npz", **arrays), VEC)


def test_npz_holding_only_ignored_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no arrays"):
        _open(_npz(tmp_path / "d.npz", labels=np.arange(3)), VEC, ignore_keys=("labels",))


def _damaged_npz(kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "bare-npy":
        np.save(buffer, np.zeros((2, 4), np.float32))
        return buffer.getvalue()
    if kind in ("stored-bad-crc", "compressed-bad-crc"):
        save = np.savez if kind == "stored-bad-crc" else np.savez_compressed
        save(buffer, **_arrays(50))
        raw = bytearray(buffer.getvalue())
        raw[len(raw) // 4] ^= 0xFF  # inside the first member's data
        return bytes(raw)
    return {"empty": b"", "zip-magic-only": b"PK\x03\x04 not really a zip", "pickle": b"\x80\x04K\x01."}[kind]


@pytest.mark.parametrize("kind", ["empty", "zip-magic-only", "pickle", "bare-npy", "stored-bad-crc",
                                  "compressed-bad-crc"])
def test_damaged_npz_is_a_data_error(tmp_path: Path, kind: str) -> None:
    (tmp_path / "d.npz").write_bytes(_damaged_npz(kind))
    with pytest.raises(DataError, match=r"cannot read .*d\.npz") as info:
        _open(tmp_path / "d.npz", VEC)
    assert info.value.hint == "expected a .npz written by numpy.savez"
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "s0.npz").write_bytes(_damaged_npz(kind))
    with pytest.raises(DataError, match=r"cannot read .*s0\.npz"):
        _open(tmp_path / "folder", VEC)


def test_non_finite_values_name_the_sample(tmp_path: Path) -> None:
    arrays = _arrays(5)
    arrays["x"][3, 1] = np.nan
    arrays["x"][3, 2] = -np.inf
    data = _open(_npz(tmp_path / "d.npz", **arrays), VEC)  # the first sample is fine, so opening works
    seen: list[int] = []
    with pytest.raises(DataError, match=r"sample 3, input 'x': 2 NaN/Inf value\(s\)"):
        for sample in data:
            seen.append(int(sample["ids"][0, 0]))
    assert seen == arrays["ids"][:3, 0].tolist()  # samples before the bad one were delivered
    arrays["x"][0, 0] = np.inf
    with pytest.raises(DataError, match="sample 0, input 'x': 1 NaN/Inf"):
        _open(_npz(tmp_path / "first.npz", **arrays), VEC)


# --- a folder of per-sample .npz files ------------------------------------------------------------------


def test_npz_folder_reads_one_sample_per_file_in_name_order(tmp_path: Path) -> None:
    per_file = {name: _arrays(1, seed=i) for i, name in enumerate(["c", "a", "b"])}
    for name, arrays in per_file.items():
        _npz(tmp_path / f"{name}.npz", label=np.array([7]), **arrays)
    data = _open(tmp_path, VEC, ignore_keys=("label",))
    samples = list(data)
    assert data.kind == "npz-folder" and len(samples) == 3
    for sample, name in zip(samples, ["a", "b", "c"], strict=True):
        np.testing.assert_array_equal(sample["x"], per_file[name]["x"])
        np.testing.assert_array_equal(sample["ids"], per_file[name]["ids"])


def test_npz_folder_cap_reads_nothing_past_it(tmp_path: Path) -> None:
    for i in range(2):
        _npz(tmp_path / f"s{i}.npz", **_arrays(1, seed=i))
    (tmp_path / "s2.npz").write_bytes(b"corrupt")  # never reached with max_samples=2
    assert _open(tmp_path, VEC, max_samples=2).count() == 2
    data = _open(tmp_path, VEC)
    with pytest.raises(DataError, match=r"cannot read .*s2\.npz"):
        data.count()


def test_npz_folder_mismatch_names_the_sample(tmp_path: Path) -> None:
    _npz(tmp_path / "s0.npz", **_arrays(1))
    _npz(tmp_path / "s1.npz", x=np.zeros((1, 4), np.float32))
    data = _open(tmp_path, VEC)
    with pytest.raises(DataError, match="sample 1 does not match") as info:
        data.count()
    assert info.value.details == ("missing input 'ids'",)


# --- a folder of <input>.npy files ----------------------------------------------------------------------


def _memory_mapped(array: np.ndarray) -> bool:
    base: object = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return False


def test_npy_folder_is_memory_mapped_and_exact(tmp_path: Path) -> None:
    arrays = _arrays(5, seed=3)
    for name, value in arrays.items():
        np.save(tmp_path / f"{name}.npy", value)
    data = _open(tmp_path, VEC, max_samples=4)
    samples = list(data)
    assert data.kind == "npy-folder" and len(samples) == 4
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(sample["x"], arrays["x"][i : i + 1])
        np.testing.assert_array_equal(sample["ids"], arrays["ids"][i : i + 1])
        assert sample["x"].flags.c_contiguous and _memory_mapped(sample["x"])


def test_npy_folder_stacked_one_rank_higher(tmp_path: Path) -> None:
    specs = [TensorSpec("patch", F32, (2, 3))]
    stack = np.arange(4 * 6, dtype=np.float32).reshape(4, 2, 3)
    np.save(tmp_path / "patch.npy", stack)
    samples = list(_open(tmp_path, specs))
    assert [s["patch"].tolist() for s in samples] == stack.tolist()


def test_npy_folder_sample_counts_must_agree_except_for_ignored_files(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "ids.npy", np.zeros((3, 5), np.int64))
    np.save(tmp_path / "labels.npy", np.zeros(2))
    with pytest.raises(DataError, match="share a non-empty axis 0") as info:
        _open(tmp_path, VEC)
    assert sorted(info.value.details) == ["ids.npy: 3 samples", "labels.npy: 2 samples", "x.npy: 3 samples"]
    assert _open(tmp_path, VEC, ignore_keys=("labels",)).count() == 3


# --- ONNX test-data folders -----------------------------------------------------------------------------


def _write_tensor(path: Path, array: np.ndarray, name: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(numpy_helper.from_array(array, name).SerializeToString())


def test_onnx_test_data_named_tensors(tmp_path: Path) -> None:
    sets = [_arrays(1, seed=i) for i in range(3)]
    for i, arrays in enumerate(sets):
        folder = tmp_path / f"test_data_set_{i}"
        # written in the opposite order to the model's inputs: names decide, not positions
        _write_tensor(folder / "input_0.pb", arrays["ids"], "ids")
        _write_tensor(folder / "input_1.pb", arrays["x"], "x")
        _write_tensor(folder / "output_0.pb", np.zeros(3, np.float32), "y")  # outputs are not inputs
    data = _open(tmp_path, VEC)
    samples = list(data)
    assert data.kind == "onnx-test-data" and len(samples) == 3
    for sample, arrays in zip(samples, sets, strict=True):
        np.testing.assert_array_equal(sample["x"], arrays["x"])
        np.testing.assert_array_equal(sample["ids"], arrays["ids"])


def test_onnx_test_data_unnamed_tensors_map_by_numeric_position(tmp_path: Path) -> None:
    specs = [TensorSpec(f"in{i}", F32, (1,)) for i in range(11)]
    for i in range(11):  # input_10 must come after input_9, not after input_1
        _write_tensor(tmp_path / "test_data_set_0" / f"input_{i}.pb", np.array([i], np.float32))
    (sample,) = list(_open(tmp_path, specs))
    assert {name: float(value[0]) for name, value in sample.items()} == {f"in{i}": float(i) for i in range(11)}


def test_corrupt_test_data_tensor(tmp_path: Path) -> None:
    bad = tmp_path / "test_data_set_0" / "input_0.pb"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(DataError, match="cannot read tensor") as info:
        _open(tmp_path, VEC)
    assert str(bad) in info.value.message


# --- image folders --------------------------------------------------------------------------------------


def _image(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _solid(path: Path, rgb: tuple[int, int, int], width: int = 20, height: int = 10) -> Path:
    return _image(path, np.broadcast_to(np.array(rgb, np.uint8), (height, width, 3)))


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def test_image_folder_resizes_to_the_models_static_size(tmp_path: Path) -> None:
    left_red_right_blue = np.zeros((8, 12, 3), np.uint8)  # H=8, W=12
    left_red_right_blue[:, :6, 0] = 255
    left_red_right_blue[:, 6:, 2] = 255
    _image(tmp_path / "a.png", left_red_right_blue)
    _solid(tmp_path / "b.jpg", (0, 128, 0), width=33, height=17)
    (tmp_path / "notes.txt").write_text("not an image")
    specs = [TensorSpec("image", F32, ("batch", 3, 4, 6))]
    data = _open(tmp_path, specs)
    samples = list(data)
    assert data.kind == "images" and len(samples) == 2
    for sample in samples:
        assert sample["image"].shape == (1, 3, 4, 6) and sample["image"].dtype == F32
    a = samples[0]["image"][0]
    np.testing.assert_allclose(a[:, :, 0], [[1.0] * 4, [0.0] * 4, [0.0] * 4])  # left column stays red
    np.testing.assert_allclose(a[:, :, 5], [[0.0] * 4, [0.0] * 4, [1.0] * 4])  # right column stays blue
    np.testing.assert_allclose(samples[1]["image"][0, 1], 128 / 255, atol=3 / 255)  # JPEG is lossy


def test_image_mean_std_normalisation_of_one_pixel_nchw_and_nhwc(tmp_path: Path) -> None:
    pixels = np.full((6, 8, 3), 200, np.uint8)  # already the model's H=6, W=8: no resampling
    pixels[2, 5] = (10, 20, 30)
    _image(tmp_path / "p.png", pixels)
    expected = (np.array([10, 20, 30]) / 255 - np.array(MEAN)) / np.array(STD)
    nchw = next(iter(_open(tmp_path, [TensorSpec("in", F32, (1, 3, 6, 8))], mean=MEAN, std=STD)))["in"]
    nhwc = next(iter(_open(tmp_path, [TensorSpec("in", F32, (1, 6, 8, 3))], mean=MEAN, std=STD)))["in"]
    assert nchw.shape == (1, 3, 6, 8) and nhwc.shape == (1, 6, 8, 3)
    np.testing.assert_allclose(nchw[0, :, 2, 5], expected, rtol=1e-5)
    np.testing.assert_allclose(nhwc[0, 2, 5, :], expected, rtol=1e-5)
    np.testing.assert_allclose(nchw[0, :, 0, 0], (200 / 255 - np.array(MEAN)) / np.array(STD), rtol=1e-5)
    np.testing.assert_array_equal(nhwc[0], nchw[0].transpose(1, 2, 0))
    assert nhwc.flags.c_contiguous


def test_explicit_layout_beats_the_guess(tmp_path: Path) -> None:
    pixels = np.zeros((3, 3, 3), np.uint8)
    pixels[0, 1] = (255, 0, 0)  # row 0, column 1 is red
    _image(tmp_path / "p.png", pixels)
    spec = [TensorSpec("in", F32, (1, 3, 3, 3))]  # ambiguous: guessed NCHW
    guessed = next(iter(_open(tmp_path, spec)))["in"]
    nhwc = next(iter(_open(tmp_path, spec, layout=Layout.NHWC)))["in"]
    np.testing.assert_array_equal(guessed[0, :, 0, 1], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(nhwc[0, 0, 1, :], [1.0, 0.0, 0.0])


def test_image_size_option_for_dynamic_height_and_width(tmp_path: Path) -> None:
    _solid(tmp_path / "a.png", (255, 255, 255))
    specs = [TensorSpec("in", F32, ("N", 3, "H", "W"))]
    with pytest.raises(UsageError, match="dynamic height/width") as info:
        _open(tmp_path, specs)
    assert info.value.hint == "pass --image-size H,W"
    (sample,) = list(_open(tmp_path, specs, image_size=(5, 7)))
    assert sample["in"].shape == (1, 3, 5, 7)
    np.testing.assert_allclose(sample["in"], 1.0)


def test_grayscale_models_get_one_luminance_channel(tmp_path: Path) -> None:
    _solid(tmp_path / "a.png", (200, 100, 50))
    luminance = (200 * 299 + 100 * 587 + 50 * 114) // 1000  # ITU-R 601-2, as Pillow's "L" mode
    (nchw,) = [s["in"] for s in _open(tmp_path, [TensorSpec("in", F32, (1, 1, 4, 4))], mean=(0.5,), std=(0.25,))]
    assert nchw.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(nchw, (luminance / 255 - 0.5) / 0.25, rtol=1e-5)
    nhwc_spec = [TensorSpec("in", F32, ("N", "h", "w", 1))]
    (nhwc,) = [s["in"] for s in _open(tmp_path, nhwc_spec, image_size=(3, 2))]
    assert nhwc.shape == (1, 3, 2, 1)
    np.testing.assert_allclose(nhwc, luminance / 255, rtol=1e-5)


def test_image_dtype_follows_the_model(tmp_path: Path) -> None:
    _solid(tmp_path / "a.png", (255, 0, 0))
    (sample,) = list(_open(tmp_path, [TensorSpec("in", np.dtype(np.float16), (1, 3, 2, 2))]))
    assert sample["in"].dtype == np.float16


@pytest.mark.parametrize(
    ("specs", "options", "message"),
    [
        (VEC, {}, "image folders feed models with one input; this model has 2"),
        ([TensorSpec("in", F32, (1, 3, 8))], {}, "is not a 4-D image tensor"),
        ([TensorSpec("in", F32, None)], {}, "is not a 4-D image tensor"),
        ([TensorSpec("in", F32, (1, 1, 4, 4))], {"mean": MEAN}, "--mean has 3 values for 1 channels"),
        ([TensorSpec("in", F32, (1, 3, 4, 4))], {"std": (1.0, 2.0)}, "--std has 2 values for 3 channels"),
    ],
    ids=["multi-input", "rank-3", "unknown-rank", "mean-count", "std-count"],
)
def test_image_folder_refusals(tmp_path: Path, specs: list[TensorSpec], options: dict[str, object],
                               message: str) -> None:
    _solid(tmp_path / "a.png", (1, 2, 3))
    with pytest.raises(UsageError, match=message):
        _open(tmp_path, specs, **options)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        _open(tmp_path, [TensorSpec("in", F32, (1, 3, 4, 4))])


# --- plugins --------------------------------------------------------------------------------------------

PLUGIN_SOURCE = textwrap.dedent('''
    import numpy as np

    PULLED = []


    def samples():
        rng = np.random.default_rng(3)
        for i in range(4):
            PULLED.append(i)
            yield {"x": rng.standard_normal((1, 4)).astype(np.float32), "ids": np.full((1, 5), i, np.int64)}


    def as_list():
        return [{"x": np.ones((1, 4), np.float32), "ids": np.zeros((1, 5), np.int64)}]


    def broken():
        raise RuntimeError("database offline")


    def fails_later():
        yield from as_list()
        raise KeyError("row 1")


    def not_dicts():
        return [("x", 1)]


    def plain_lists():
        return [{"x": [[0.0, 0.0, 0.0, 0.0]], "ids": np.zeros((1, 5), np.int64)}]


    NOT_A_FUNCTION = 3
''')
PLUGIN_MODULE = "qconvert_test_calib_plugin"


def _expected_plugin_x() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.stack([rng.standard_normal((1, 4)).astype(np.float32) for _ in range(4)])


@pytest.fixture
def plugin_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / f"{PLUGIN_MODULE}.py"
    path.write_text(PLUGIN_SOURCE)
    yield path
    for name in (PLUGIN_MODULE, f"qconvert_plugin_{PLUGIN_MODULE}", "qconvert_plugin_bad"):
        sys.modules.pop(name, None)


def test_plugin_by_file_path(plugin_file: Path) -> None:
    data = _open(f"{plugin_file}:samples", VEC)
    samples = list(data)
    assert data.kind == "plugin" and data.description == f"plugin {plugin_file}:samples"
    np.testing.assert_array_equal(np.stack([s["x"] for s in samples]), _expected_plugin_x())
    assert [int(s["ids"][0, 0]) for s in samples] == [0, 1, 2, 3]
    assert _open(f"{plugin_file}:as_list", VEC).count() == 1  # any iterable of dicts will do


def test_plugin_by_module_reference(plugin_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(plugin_file.parent))
    data = _open(f"{PLUGIN_MODULE}:samples", VEC, max_samples=2)
    module = importlib.import_module(PLUGIN_MODULE)
    module.PULLED.clear()
    samples = list(data)
    assert len(samples) == 2 and module.PULLED == [0, 1]  # the cap stops the plugin, no extra sample
    np.testing.assert_array_equal(np.stack([s["x"] for s in samples]), _expected_plugin_x()[:2])


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("broken", "failed: RuntimeError: database offline"),
        ("not_dicts", "yielded tuple, expected a dict"),
    ],
)
def test_plugin_failures_are_data_errors(plugin_file: Path, function: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _open(f"{plugin_file}:{function}", VEC)


def test_plugin_failing_mid_stream(plugin_file: Path) -> None:
    data = _open(f"{plugin_file}:fails_later", VEC)  # the first sample is fine
    with pytest.raises(DataError, match="failed: KeyError") as info:
        data.count()
    assert isinstance(info.value.__cause__, KeyError)


def test_plugin_yielding_lists_instead_of_arrays(plugin_file: Path) -> None:
    with pytest.raises(DataError) as info:
        _open(f"{plugin_file}:plain_lists", VEC)
    assert info.value.details == ("'x': expected a numpy array, got list",)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("{file}:missing", "has no function 'missing'"),
        ("{file}:NOT_A_FUNCTION", "has no function 'NOT_A_FUNCTION'"),
        ("{dir}/absent.py:samples", "plugin file not found"),
        ("qconvert_no_such_module.sub:samples", "cannot import plugin module 'qconvert_no_such_module.sub'"),
    ],
)
def test_plugin_reference_errors_are_usage_errors(plugin_file: Path, reference: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _open(reference.format(file=plugin_file, dir=plugin_file.parent), VEC)


def test_plugin_that_fails_to_import(plugin_file: Path) -> None:
    bad = plugin_file.parent / "bad.py"
    bad.write_text("raise ValueError('no config')\n")
    with pytest.raises(DataError, match="failed to import: ValueError: no config"):
        _open(f"{bad}:samples", VEC)
    bad.write_text("def samples(:\n")
    with pytest.raises(DataError, match="failed to import: SyntaxError"):
        _open(f"{bad}:samples", VEC)


# --- synthetic data -------------------------------------------------------------------------------------


def test_synthetic_shapes_come_from_the_specs() -> None:
    specs = [TensorSpec("img", F32, ("batch", 3, 4, 4)), TensorSpec("ids", I64, (2, 5)),
             TensorSpec("mask", np.dtype(np.bool_), (None, 5)), TensorSpec("h", np.dtype(np.float16), (0, 2))]
    data = _open("synthetic", specs)
    samples = list(data)
    assert data.synthetic and data.kind == "synthetic" and data.to_dict()["synthetic"] is True
    assert len(samples) == 8  # the default count
    first = samples[0]
    assert first["img"].shape == (1, 3, 4, 4) and first["img"].dtype == F32
    assert first["ids"].shape == (2, 5) and first["ids"].dtype == I64
    assert first["mask"].shape == (1, 5) and first["mask"].dtype == np.bool_
    assert first["h"].shape == (1, 2) and first["h"].dtype == np.float16
    ids = np.concatenate([s["ids"] for s in samples])
    assert ids.min() >= 0 and ids.max() < 100 and len(np.unique(ids)) > 10
    img = np.concatenate([s["img"] for s in samples])
    assert abs(float(img.mean())) < 0.2 and 0.8 < float(img.std()) < 1.2  # standard normal


def test_synthetic_count_and_seed_are_reproducible() -> None:
    data = _open("synthetic", VEC, max_samples=3, seed=7)
    first, again = list(data), list(data)
    assert len(first) == 3 and "3 samples, seed 7" in data.description
    other_open = list(_open("synthetic", VEC, max_samples=3, seed=7))
    other_seed = list(_open("synthetic", VEC, max_samples=3, seed=8))
    for a, b, c in zip(first, again, other_open, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["x"], c["x"])
        np.testing.assert_array_equal(a["ids"], c["ids"])
    assert not np.array_equal(first[0]["x"], other_seed[0]["x"])
    assert not np.array_equal(first[0]["x"], first[1]["x"])


def test_synthetic_shape_overrides() -> None:
    specs = [TensorSpec("tokens", I64, ("batch", "seq")), TensorSpec("x", F32, None)]
    with pytest.raises(UsageError, match=r"input 'tokens' has dynamic dim 1 \(seq\)") as info:
        _open("synthetic", specs, shapes=(("x", (2,)),))
    assert info.value.hint == "pass --shape tokens=N,N"
    with pytest.raises(UsageError, match="input 'x' has unknown rank"):
        _open("synthetic", specs, shapes=(("tokens", (1, 3)),))
    data = _open("synthetic", specs, shapes=(("tokens", (2, 7)), ("x", (3, 1, 2))))
    sample = next(iter(data))
    assert sample["tokens"].shape == (2, 7) and sample["x"].shape == (3, 1, 2)


def test_synthetic_override_must_match_rank_and_static_dims() -> None:
    specs = [TensorSpec("x", F32, (1, 4))]
    with pytest.raises(UsageError, match=r"--shape x has rank 3, the model's input has rank 2"):
        _open("synthetic", specs, shapes=(("x", (1, 4, 1)),))
    with pytest.raises(DataError) as info:
        _open("synthetic", specs, shapes=(("x", (1, 5)),))
    assert info.value.details == ("'x': dim 1 is 5, model expects 4 (shape [1, 5] vs [1, 4])",)


def test_synthetic_refuses_dtypes_it_cannot_make() -> None:
    with pytest.raises(UsageError, match="cannot synthesise input 's' of dtype <U"):
        _open("synthetic", [TensorSpec("s", np.dtype(np.str_), (1,))])


# --- sources that are not data --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing-path", "missing-npz", "empty-folder", "text-file", "single-npy"])
def test_unusable_sources(tmp_path: Path, kind: str) -> None:
    messages = {"missing-path": "calibration data not found", "missing-npz": "calibration data not found",
                "empty-folder": "no calibration data found in folder", "text-file": "unsupported data file",
                "single-npy": "unsupported data file"}
    target = tmp_path / "nothing"
    if kind == "missing-npz":
        target = tmp_path / "calib.npz"
    elif kind == "empty-folder":
        target.mkdir()
        (target / "sub").mkdir()
    elif kind == "text-file":
        target = tmp_path / "notes.txt"
        target.write_text("1,2,3")
    elif kind == "single-npy":
        target = tmp_path / "x.npy"
        np.save(target, np.zeros((2, 4), np.float32))
    with pytest.raises(DataError, match=messages[kind]) as info:
        _open(target, VEC)
    assert info.value.hint


# --- every reader is re-iterable ------------------------------------------------------------------------


def _source_npz(tmp: Path) -> tuple[str, list[TensorSpec]]:
    return str(_npz(tmp / "d.npz", **_arrays(3))), VEC


def _source_npz_folder(tmp: Path) -> tuple[str, list[TensorSpec]]:
    for i in range(3):
        _npz(tmp / f"s{i}.npz", **_arrays(1, seed=i))
    return str(tmp), VEC


def _source_npy_folder(tmp: Path) -> tuple[str, list[TensorSpec]]:
    for name, value in _arrays(3).items():
        np.save(tmp / f"{name}.npy", value)
    return str(tmp), VEC


def _source_test_data(tmp: Path) -> tuple[str, list[TensorSpec]]:
    for i in range(3):
        for position, (name, value) in enumerate(_arrays(1, seed=i).items()):
            _write_tensor(tmp / f"test_data_set_{i}" / f"input_{position}.pb", value, name)
    return str(tmp), VEC


def _source_images(tmp: Path) -> tuple[str, list[TensorSpec]]:
    rng = np.random.default_rng(0)
    for i in range(3):
        _image(tmp / f"{i}.png", rng.integers(0, 256, (5, 5, 3)))
    return str(tmp), [TensorSpec("in", F32, (1, 3, 4, 4))]


def _source_plugin(tmp: Path) -> tuple[str, list[TensorSpec]]:
    (tmp / "reiter_plugin.py").write_text(PLUGIN_SOURCE)
    return f"{tmp / 'reiter_plugin.py'}:samples", VEC


def _source_synthetic(tmp: Path) -> tuple[str, list[TensorSpec]]:
    return "synthetic", VEC


SOURCES: dict[str, Callable[[Path], tuple[str, list[TensorSpec]]]] = {
    "npz": _source_npz, "npz-folder": _source_npz_folder, "npy-folder": _source_npy_folder,
    "onnx-test-data": _source_test_data, "images": _source_images, "plugin": _source_plugin,
    "synthetic": _source_synthetic,
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_iterating_twice_yields_the_same_samples(tmp_path: Path, kind: str) -> None:
    source, specs = SOURCES[kind](tmp_path)
    try:
        data = _open(source, specs)
        first, second = list(data), list(data)
    finally:
        sys.modules.pop("qconvert_plugin_reiter_plugin", None)
    assert data.kind == kind and len(first) == len(second) > 1
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys() == {s.name for s in specs}
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(first[0][specs[0].name], first[1][specs[0].name])


def test_labels_ride_beside_the_inputs_and_are_never_fed(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, x=np.zeros((3, 4), np.float32), labels=np.array([2, 0, 1]))
    spec = [TensorSpec("x", np.dtype(np.float32), ("batch", 4))]
    data = open_data(DataConfig(str(path), labels="labels"), spec)
    pairs = list(data.labelled())
    assert [int(label[0]) for _, label in pairs] == [2, 0, 1]  # type: ignore[index]
    assert all(set(sample) == {"x"} for sample, _ in pairs) and all(set(s) == {"x"} for s in data)
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=np.zeros((3, 4), np.float32))
    with pytest.raises(DataError, match="no labels 'labels'"):
        open_data(DataConfig(str(unlabelled), labels="labels"), spec)
