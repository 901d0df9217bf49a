"""Lossless JPEG (.57 / .70) scans cut short but ending with EOI, which libjpeg and gdcm decode without an error."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLosslessSV1

from mvmlm.data.dicom import DicomReadError, read_mammogram
from mvmlm.data.lossless_jpeg import lossless_jpeg_shortfall
from mvmlm.data.synthetic.dicom_writer import write_mammogram_dicom

pytest.importorskip("gdcm", reason="python-gdcm writes JPEG Lossless SV1")


@pytest.fixture(params=[12, 16], ids=["12-bit", "16-bit"])
def lossless(request, tmp_path) -> tuple[pydicom.Dataset, bytes, np.ndarray]:
    """A JPEG Lossless SV1 file of noise with a black band, its frame and its pixels."""
    bits = request.param
    pixels = np.random.default_rng(bits).integers(0, 1 << bits, (48, 64)).astype(np.uint16)
    pixels[:, :20] = 0
    path = write_mammogram_dicom(
        tmp_path / "ok.dcm", pixels, laterality="L", view="CC", patient_id="P1", sop_uid="1.2.3",
        bits_stored=bits, transfer_syntax=JPEGLosslessSV1,
    )  # fmt: skip
    ds = pydicom.dcmread(path)
    return ds, next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)), pixels


def test_a_whole_scan_passes_and_one_byte_less_does_not(lossless):
    ds, frame, pixels = lossless
    assert lossless_jpeg_shortfall(frame, pixels) is None
    end = frame.rstrip(b"\x00").rfind(b"\xff\xd9")
    short = lossless_jpeg_shortfall(frame[: end - 1] + frame[end:], pixels)
    assert short is not None and "bytes of scan data, the image needs" in short


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_scan_cut_short_before_its_eoi_is_a_failure_row_reason(lossless, tmp_path):
    ds, frame, _ = lossless
    cut = frame[: len(frame) * 3 // 4] + b"\xff\xd9"
    ds.PixelData = pydicom.encaps.encapsulate([cut + b"\x00" * (len(cut) % 2)])
    ds.save_as(tmp_path / "cut.dcm")
    with pytest.raises(DicomReadError, match=r"cut\.dcm: the JPEG Lossless.* bitstream is cut short \(\d+ bytes"):
        read_mammogram(tmp_path / "cut.dcm")


def test_with_restart_intervals_the_restart_markers_are_counted(lossless):
    _, frame, pixels = lossless
    sos = frame.find(b"\xff\xda")
    dri = b"\xff\xdd\x00\x04\x00\x40"  # an interval of 64 samples (one row): 47 RST markers expected, none found
    assert lossless_jpeg_shortfall(frame[:sos] + dri + frame[sos:], pixels) == "0 of 47 restart markers"
