"""read_mammogram: decoding, VOI, inversion, orientation, metadata and errors, on tiny files from the writer."""

from __future__ import annotations

import sys

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from mvmlm.data.dicom import DicomReadError, read_dicom_header, read_mammogram
from mvmlm.data.synthetic.dicom_writer import write_mammogram_dicom

ROWS, COLS = 48, 64


def phantom(bits: int = 12, seed: int = 0) -> np.ndarray:
    """A left breast: textured half-ellipse against the left edge on a black background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ROWS, :COLS]
    inside = (xx / (0.7 * COLS)) ** 2 + ((yy - ROWS / 2) / (0.45 * ROWS)) ** 2 < 1
    top = (1 << bits) - 1
    return np.where(inside, rng.integers(top // 3, top, (ROWS, COLS)), 0).astype(np.uint16)


def write(tmp_path, name: str = "img.dcm", pixels: np.ndarray | None = None, **kwargs):
    kwargs = {"laterality": "L", "view": "CC", "patient_id": "P1", "sop_uid": "1.2.3.4", **kwargs}
    return write_mammogram_dicom(tmp_path / name, phantom() if pixels is None else pixels, **kwargs)


def ramp(bits: int = 12) -> np.ndarray:
    """Every column a different stored value, decreasing left to right (bright side left: never flipped)."""
    values = np.linspace((1 << bits) - 1, 0, COLS).round().astype(np.uint16)
    return np.broadcast_to(values, (ROWS, COLS)).copy()


@pytest.mark.parametrize("tsyntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEGLosslessSV1])
def test_compressed_file_gives_the_pixels_of_the_uncompressed_one(tmp_path, tsyntax):
    if tsyntax == JPEGLosslessSV1:
        pytest.importorskip("gdcm", reason="python-gdcm writes JPEG Lossless SV1")
    raw_image, raw_meta = read_mammogram(write(tmp_path, "raw.dcm", voi_function="SIGMOID"))
    path = write(tmp_path, "compressed.dcm", voi_function="SIGMOID", transfer_syntax=tsyntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == tsyntax
    image, meta = read_mammogram(path)
    np.testing.assert_array_equal(image, raw_image)
    assert meta.transfer_syntax == tsyntax and meta.sop_uid == raw_meta.sop_uid == "1.2.3.4"


@pytest.mark.parametrize("voi_function", [None, "LINEAR", "SIGMOID"])
def test_monochrome1_reads_like_monochrome2_of_the_same_content(tmp_path, voi_function):
    mono2 = write(tmp_path, "m2.dcm", voi_function=voi_function)
    mono1 = write(tmp_path, "m1.dcm", voi_function=voi_function, photometric="MONOCHROME1")
    assert not np.array_equal(pydicom.dcmread(mono1).pixel_array, pydicom.dcmread(mono2).pixel_array)
    image1, meta1 = read_mammogram(mono1)
    image2, _ = read_mammogram(mono2)
    np.testing.assert_allclose(image1, image2, atol=1e-6)
    assert meta1.photometric == "MONOCHROME1" and not meta1.flipped
    assert image1[:, :8].mean() > image1[:, -8:].mean()  # breast bright, background dark


def test_presentation_lut_inverse_alone_inverts(tmp_path):
    plain, _ = read_mammogram(write(tmp_path, "plain.dcm", pixels=ramp()))
    inverse, meta = read_mammogram(
        write(tmp_path, "inv.dcm", pixels=ramp(), extra_tags={"PresentationLUTShape": "INVERSE"})
    )
    np.testing.assert_allclose(inverse, 1.0 - plain[:, ::-1], atol=1e-6)  # inverted, hence brighter on the right
    assert meta.flipped


def test_sigmoid_follows_the_dicom_formula_after_rescale_in_unit_range_and_monotone(tmp_path):
    center, width = 2900.0, 3600.0
    tags = {"RescaleSlope": 2, "RescaleIntercept": -100}
    path = write(tmp_path, pixels=ramp(), voi_function="SIGMOID", window=(center, width), extra_tags=tags)
    image, meta = read_mammogram(path)
    value = 2.0 * ramp()[0].astype(np.float64) - 100.0
    expected = 1.0 / (1.0 + np.exp(-4.0 * (value - center) / width))
    assert meta.voi_function == "SIGMOID"
    np.testing.assert_allclose(image[0], expected, rtol=1e-5, atol=1e-6)
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert np.all(np.diff(image[0]) < 0)  # stored values decrease along the row, strictly


def test_linear_windows_follow_the_dicom_formulas_with_rescale(tmp_path):
    stored = ramp()[0].astype(np.float64)
    value = 2.0 * stored - 100.0  # modality values
    tags = {"RescaleSlope": 2, "RescaleIntercept": -100}
    image, _ = read_mammogram(write(tmp_path, "lin.dcm", pixels=ramp(), window=(3000, 4001), extra_tags=tags))
    np.testing.assert_allclose(image[0], np.clip((value - 2999.5) / 4000 + 0.5, 0, 1), atol=1e-6)
    image, meta = read_mammogram(
        write(tmp_path, "exact.dcm", pixels=ramp(), window=(3000, 4000), voi_function="LINEAR_EXACT", extra_tags=tags)
    )
    np.testing.assert_allclose(image[0], np.clip((value - 3000) / 4000 + 0.5, 0, 1), atol=1e-6)
    assert meta.voi_function == "LINEAR_EXACT"


@pytest.mark.parametrize("voi_function", ["LINEAR_EXACT", "SIGMOID"])
def test_signed_pixels_are_windowed_like_unsigned_ones(tmp_path, voi_function):
    ds = pydicom.dcmread(write(tmp_path, voi_function=voi_function, window=(0, 4096)))
    signed = (ramp().astype(np.int32) - 2048).astype(np.int16)
    ds.set_pixel_data(signed, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.save_as(tmp_path / "signed.dcm")
    image, _ = read_mammogram(tmp_path / "signed.dcm")
    value = signed[0].astype(np.float64)
    linear = np.clip(value / 4096 + 0.5, 0, 1)
    expected = linear if voi_function == "LINEAR_EXACT" else 1.0 / (1.0 + np.exp(-4.0 * value / 4096))
    np.testing.assert_allclose(image[0], expected, rtol=1e-5, atol=1e-6)


def test_multi_valued_window_uses_the_first_pair(tmp_path):
    multi, _ = read_mammogram(write(tmp_path, "multi.dcm", voi_function="SIGMOID", window=([1200, 2500], [900, 3000])))
    first, _ = read_mammogram(write(tmp_path, "first.dcm", voi_function="SIGMOID", window=(1200, 900)))
    second, _ = read_mammogram(write(tmp_path, "second.dcm", voi_function="SIGMOID", window=(2500, 3000)))
    np.testing.assert_array_equal(multi, first)
    assert not np.allclose(multi, second)


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence_takes_precedence_over_the_window(tmp_path, vr):
    table = (4095 - np.arange(4096)).astype("<u2")  # an inverting table
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new("LUTData", vr, table.tolist() if vr == "US" else table.tobytes())
    tags = {"VOILUTSequence": pydicom.Sequence([item])}
    image, meta = read_mammogram(write(tmp_path, pixels=ramp(), extra_tags=tags))
    assert meta.voi_function == "LUT" and meta.flipped  # inverted ramp is brighter on the right
    np.testing.assert_allclose(image[0], 1.0 - ramp()[0][::-1] / 4095, atol=1e-6)  # inverted, then mirrored


def reference_display(ds: pydicom.Dataset) -> np.ndarray:
    """The DICOM display pipeline in float64 from the stored values: rescale, VOI, inversion (no flip)."""
    value = float(ds.RescaleSlope) * ds.pixel_array.astype(np.float64) + float(ds.RescaleIntercept)
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        _, first, _ = item.LUTDescriptor
        table = np.asarray(item.LUTData, dtype=np.float64)
        looked_up = table[np.clip(np.rint(value - first), 0, table.size - 1).astype(int)]
        display = (looked_up - table.min()) / (table.max() - table.min())
    elif "WindowCenter" not in ds:
        display = (value - value.min()) / (value.max() - value.min())
    else:
        center, width = float(ds.WindowCenter), float(ds.WindowWidth)
        function = ds.get("VOILUTFunction", "LINEAR")
        if function == "SIGMOID":
            display = 1.0 / (1.0 + np.exp(-4.0 * (value - center) / width))
        elif function == "LINEAR_EXACT":
            display = np.clip((value - center) / width + 0.5, 0, 1)
        else:
            display = np.clip((value - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return 1.0 - display if ds.PhotometricInterpretation == "MONOCHROME1" else display


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("voi", ["LINEAR", "LINEAR_EXACT", "SIGMOID", "NONE", "LUT"])
def test_large_16_bit_right_breast_matches_a_float64_reference(tmp_path, voi, photometric):
    """More pixels than one table-lookup block, every VOI, both photometrics, mirrored: float32 rounding only."""
    rng = np.random.default_rng(1)
    rows, cols = 600, 512
    breast = np.arange(cols) >= cols // 3  # against the right edge: read_mammogram must mirror it
    pixels = np.where(breast, rng.integers(20000, 65536, (rows, cols)), rng.integers(0, 3000, (rows, cols)))
    tags = {"RescaleSlope": 1, "RescaleIntercept": -900}
    if voi == "NONE":
        tags |= {"WindowCenter": None, "WindowWidth": None}
    if voi == "LUT":
        item = pydicom.Dataset()
        item.LUTDescriptor = [30000, 1000, 16]
        item.add_new("LUTData", "US", (65535 * np.sqrt(np.linspace(0, 1, 30000))).round().astype(np.uint16).tolist())
        tags |= {"VOILUTSequence": pydicom.Sequence([item])}
    voi_function = voi if voi in ("LINEAR_EXACT", "SIGMOID") else None
    path = write(
        tmp_path,
        pixels=pixels.astype(np.uint16),
        bits_stored=16,
        photometric=photometric,
        voi_function=voi_function,
        window=(30000, 50000),
        laterality="R",
        extra_tags=tags,
    )
    image, meta = read_mammogram(path)
    assert (meta.voi_function, meta.flipped, image.dtype, image.shape) == (voi, True, np.float32, (rows, cols))
    assert image.flags.c_contiguous
    np.testing.assert_allclose(image, reference_display(pydicom.dcmread(path))[:, ::-1], rtol=0, atol=1e-6)


def test_file_without_window_is_stretched_to_its_own_range(tmp_path):
    pixels = (ramp() // 4 + 500).astype(np.uint16)
    image, meta = read_mammogram(write(tmp_path, pixels=pixels, extra_tags={"WindowCenter": None, "WindowWidth": None}))
    assert meta.voi_function == "NONE"
    assert image.min() == 0.0 and image.max() == 1.0


@pytest.mark.parametrize("voi_function", [None, "SIGMOID"])
@pytest.mark.parametrize("window", [True, False])
def test_all_zero_image_reads_without_nan(tmp_path, voi_function, window):
    tags = None if window else {"WindowCenter": None, "WindowWidth": None}
    zeros = np.zeros((ROWS, COLS), np.uint16)
    image, meta = read_mammogram(write(tmp_path, pixels=zeros, voi_function=voi_function, extra_tags=tags))
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert len(np.unique(image)) == 1 and meta.flipped is False


def test_right_breast_is_mirrored_to_chest_wall_left(tmp_path):
    left, left_meta = read_mammogram(write(tmp_path, "l.dcm"))
    right, right_meta = read_mammogram(write(tmp_path, "r.dcm", pixels=phantom()[:, ::-1], laterality="R"))
    assert left_meta.flipped is False and right_meta.flipped is True
    assert (left_meta.laterality, right_meta.laterality) == ("L", "R")
    np.testing.assert_array_equal(right, left)
    assert right.flags.c_contiguous and right.dtype == np.float32
    assert left[:, : COLS // 4].mean() > 5 * left[:, -COLS // 4 :].mean()


def test_eight_bit_cmmd_like_file_with_view_only_in_view_code_sequence(tmp_path):
    pixels = phantom(bits=8)
    path = write(
        tmp_path,
        pixels=pixels,
        bits_stored=8,
        voi_function="SIGMOID",
        window=(128, 256),
        view="MLO",
        view_position=False,
        view_code_sequence=True,
        age=63,
        extra_tags={"Laterality": None},
    )
    image, meta = read_mammogram(path)
    assert "ViewPosition" not in pydicom.dcmread(path)
    assert (meta.view, meta.laterality, meta.bits_stored, meta.age) == ("MLO", "L", 8, 63.0)
    expected = 1.0 / (1.0 + np.exp(-4.0 * (pixels.astype(np.float64) - 128) / 256))
    np.testing.assert_allclose(image, expected, rtol=1e-5)


def test_laterality_falls_back_to_series_laterality_and_header_reads_without_pixels(tmp_path):
    path = write(
        tmp_path, laterality="R", pixels=phantom()[:, ::-1], extra_tags={"ImageLaterality": None, "PatientAge": "030M"}
    )
    meta = read_dicom_header(path)
    assert (meta.laterality, meta.view, meta.flipped, meta.age) == ("R", "CC", None, 2.5)
    assert (meta.rows, meta.cols, meta.patient_id, meta.presentation_intent) == (ROWS, COLS, "P1", "FOR PRESENTATION")


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize("tsyntax", ["1.2.840.10008.1.2.1", JPEG2000Lossless])
def test_truncated_file_is_an_error_naming_the_file(tmp_path, tsyntax):
    data = write(tmp_path, transfer_syntax=tsyntax).read_bytes()
    for name, cut in [("half.dcm", len(data) - ROWS * COLS // 2), ("head.dcm", 400)]:
        broken = tmp_path / name
        broken.write_bytes(data[:cut])
        with pytest.raises(DicomReadError, match=name) as err:
            read_mammogram(broken)
        assert "truncated" in str(err.value)


def test_non_dicom_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not an image\n" * 20)
    with pytest.raises(DicomReadError, match=r"notes\.dcm: not a DICOM file"):
        read_mammogram(path)


def test_dicom_without_pixel_data_is_an_error(tmp_path):
    path = write(tmp_path, "nopix.dcm", extra_tags={"PixelData": None})
    with pytest.raises(DicomReadError, match=r"nopix\.dcm: no Pixel Data"):
        read_mammogram(path)


@pytest.mark.parametrize(
    "tags",
    [{"PresentationIntentType": "FOR PROCESSING"}, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2.1"}],
)
def test_for_processing_image_is_rejected(tmp_path, tags):
    path = write(tmp_path, "raw_detector.dcm", extra_tags=tags)
    with pytest.raises(DicomReadError, match=r"raw_detector\.dcm: a FOR PROCESSING"):
        read_mammogram(path)


def test_missing_decoder_plugin_names_the_package(tmp_path, monkeypatch):
    path = write(tmp_path, "j2k.dcm", transfer_syntax=JPEG2000Lossless)
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    with pytest.raises(DicomReadError, match=r"j2k\.dcm: .*no decoder is installed; pip install .*pylibjpeg-openjpeg"):
        read_mammogram(path)


def test_corrupt_compressed_stream_is_an_error(tmp_path):
    ds = pydicom.dcmread(write(tmp_path, "ok.dcm", transfer_syntax=JPEG2000Lossless))
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(tmp_path / "corrupt.dcm")
    with pytest.raises(DicomReadError, match=r"corrupt\.dcm: the JPEG 2000 .* bitstream has no readable image header"):
        read_mammogram(tmp_path / "corrupt.dcm")


COMPRESSED = [JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEGLosslessSV1]


def _compressed(tmp_path, tsyntax, name: str = "ok.dcm") -> pydicom.Dataset:
    if tsyntax == JPEGLosslessSV1:
        pytest.importorskip("gdcm", reason="python-gdcm writes JPEG Lossless SV1")
    return pydicom.dcmread(write(tmp_path, name, transfer_syntax=tsyntax))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("tsyntax", COMPRESSED)
@pytest.mark.parametrize(
    "change", [{"Rows": ROWS * 2}, {"Rows": ROWS // 2}, {"Columns": COLS + 8}, {"BitsAllocated": 8}]
)
def test_header_disagreeing_with_the_bitstream_is_an_error_not_a_crash_or_a_wrong_image(tmp_path, tsyntax, change):
    ds = _compressed(tmp_path, tsyntax)
    for key, value in change.items():
        setattr(ds, key, value)
    ds.save_as(tmp_path / "damaged.dcm")
    with pytest.raises(DicomReadError, match=r"damaged\.dcm: .*(damaged file|cannot decode)"):
        read_mammogram(tmp_path / "damaged.dcm")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("tsyntax", COMPRESSED)
@pytest.mark.parametrize("end_marker", [False, True])
def test_bitstream_cut_in_half_is_an_error(tmp_path, tsyntax, end_marker):
    ds = _compressed(tmp_path, tsyntax)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    cut = frame[: len(frame) // 2] + (b"\xff\xd9" if end_marker else b"")
    ds.PixelData = pydicom.encaps.encapsulate([cut + b"\x00" * (len(cut) % 2)])
    ds.save_as(tmp_path / "cut.dcm")
    with pytest.raises(DicomReadError, match=r"cut\.dcm: .*(cut short|cannot decode)"):
        read_mammogram(tmp_path / "cut.dcm")


def test_native_pixel_data_longer_than_the_header_says_is_an_error(tmp_path):
    ds = pydicom.dcmread(write(tmp_path))
    ds.Rows = ROWS // 2
    ds.save_as(tmp_path / "long.dcm")
    with pytest.raises(DicomReadError, match=r"long\.dcm: 6144 bytes of pixel data, but the header's 24 x 64 pixels"):
        read_mammogram(tmp_path / "long.dcm")


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [("CT", "1.2.840.10008.5.1.4.1.1.2"), ("MR", "1.2.840.10008.5.1.4.1.1.4"), (None, "1.2.840.10008.5.1.4.1.1.7")],
)
def test_other_modalities_are_rejected(tmp_path, modality, sop_class):
    path = write(tmp_path, "ct.dcm", extra_tags={"Modality": modality, "SOPClassUID": sop_class})
    with pytest.raises(DicomReadError, match=r"ct\.dcm: not a mammogram \(Modality"):
        read_mammogram(path)


def test_mammography_sop_class_without_modality_is_read(tmp_path):
    image, _ = read_mammogram(write(tmp_path, extra_tags={"Modality": None}))
    assert image.shape == (ROWS, COLS)


def test_for_processing_images_are_read_when_asked(tmp_path):
    path = write(tmp_path, "raw_detector.dcm", extra_tags={"PresentationIntentType": "FOR PROCESSING"})
    image, meta = read_mammogram(path, for_processing=True)
    assert image.shape == (ROWS, COLS) and meta.presentation_intent == "FOR PROCESSING"


def test_writer_without_gdcm_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdcm", None)  # import gdcm -> ImportError
    with pytest.raises(ModuleNotFoundError, match="pip install python-gdcm"):
        write(tmp_path, transfer_syntax=JPEGLosslessSV1)


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="laterality"):
        write(tmp_path, laterality="B")
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        write(tmp_path, bits_stored=8)  # 12-bit phantom values
    with pytest.raises(ValueError, match="NotAKeyword"):
        write(tmp_path, extra_tags={"NotAKeyword": 1})
    with pytest.raises(ValueError, match="ViewCodeSequence"):
        write(tmp_path, view="XCCL", view_code_sequence=True)
    with pytest.raises(ValueError, match="at least 32"):
        write(tmp_path, pixels=phantom()[:, :31], transfer_syntax=JPEG2000Lossless)
