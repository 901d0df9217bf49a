"""The cache's file formats: lossless round trips, reading by suffix, the format in the cache folder's key."""

import numpy as np
import pytest

from mvmlm.config import ConfigError
from mvmlm.data.cache import CACHE_FORMATS, cache_suffix, load_cached, read_cache_values, save_cached, to_cache_values
from mvmlm.data.preprocess import PreprocessParams, cache_file


def _image() -> np.ndarray:
    """Every 16-bit value once (and again), plus the ends of the range: a lossy codec cannot pass."""
    values = np.arange(1 << 16, dtype=np.float64) / 65535
    image = np.random.default_rng(0).permutation(np.concatenate([values, values[:1024]])).reshape(260, 256)
    image[0, :2] = 0.0, 1.0
    return image


@pytest.mark.parametrize("cache_format", ["npy", "png16", "blosc2"])
def test_every_format_round_trips_the_16_bit_values_exactly(tmp_path, cache_format):
    image = _image()
    path = save_cached(tmp_path / "a" / f"x{cache_suffix(cache_format)}", image)
    stored = read_cache_values(path)
    assert stored.dtype == np.uint16 and stored.shape == (260, 256)
    np.testing.assert_array_equal(stored, to_cache_values(image))
    assert np.abs(load_cached(path) - image).max() <= 0.5 / 65535 + 1e-7
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_compressed_formats_are_smaller_than_npy_on_an_image_with_background(tmp_path):
    image = np.zeros((304, 192))
    image[20:280, :120] = np.random.default_rng(1).uniform(0.3, 0.7, (260, 120))
    sizes = {name: save_cached(tmp_path / f"x{cache_suffix(name)}", image).stat().st_size for name in CACHE_FORMATS}
    assert sizes["png16"] < 0.8 * sizes["npy"] and sizes["blosc2"] < 0.8 * sizes["npy"]


def test_a_file_with_an_unknown_suffix_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"x\.tif: not a cache file .*known: \.b2nd, \.npy, \.png"):
        save_cached(tmp_path / "x.tif", np.zeros((4, 4)))
    (tmp_path / "y.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"y\.jpg"):
        read_cache_values(tmp_path / "y.jpg")


def test_an_8_bit_png_is_not_taken_for_a_cached_image(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad\.png: not a cached image .*uint8"):
        read_cache_values(tmp_path / "bad.png")


def test_the_format_keys_the_cache_folder_and_names_the_files_but_npy_keeps_old_names():
    npy, png, b2 = (PreprocessParams(48, 32, cache_format=f) for f in ("npy", "png16", "blosc2"))
    assert npy.key() == PreprocessParams(48, 32).key() == "48x32-c3233d689c"  # the name caches had before formats
    assert len({npy.key(), png.key(), b2.key()}) == 3
    assert str(cache_file("vindr", "p 1", "i1", cache_format="png16")) == "images/vindr/p_1-3d57965e/i1.png"
    assert cache_file("vindr", "p", "i1", "crops", "blosc2").as_posix() == "crops/vindr/p/i1.b2nd"


def test_an_unknown_format_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"key 'cache_format': one of blosc2, npy, png16, got 'tiff'"):
        PreprocessParams(cache_format="tiff")


def test_a_blosc2_cache_holds_the_values_of_the_npy_cache_of_the_same_table(synthetic_dataset, tmp_path):
    from mvmlm.data.preprocess import preprocess_table

    root, table = synthetic_dataset("vindr")
    table = table.head(4)
    npy = preprocess_table(table, root, tmp_path, PreprocessParams(48, 32), progress=False)
    b2 = preprocess_table(table, root, tmp_path, PreprocessParams(48, 32, cache_format="blosc2"), progress=False)
    assert all(path.endswith(".b2nd") for path in b2["cache_path"])
    for a, b in zip(npy["cache_path"], b2["cache_path"], strict=True):
        values = read_cache_values(b)
        assert values.any() and np.array_equal(values, read_cache_values(a))
