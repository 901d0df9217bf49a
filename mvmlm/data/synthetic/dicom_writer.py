"""Write one synthetic Digital Mammography X-Ray (For Presentation) DICOM file, as real datasets store them.

Native orientation convention shared by all synthetic writers: a left breast is stored with the chest wall
on the left image edge, a right breast mirrored (chest wall on the right), matching PatientOrientation
A\\R / P\\L. :func:`mvmlm.data.dicom.read_mammogram` brings every image back to chest wall left.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import DS

from mvmlm.data.dicom import VIEW_CODES

__all__ = ["TRANSFER_SYNTAXES", "write_mammogram_dicom"]

#: transfer syntaxes the writer can produce (JPEG Lossless SV1 needs python-gdcm)
TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless)
_DEFAULT_ORIENTATION = {"L": ["A", "R"], "R": ["P", "L"]}
_VOI_FUNCTIONS = (None, "LINEAR", "LINEAR_EXACT", "SIGMOID")


def write_mammogram_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    laterality: str,
    view: str,
    patient_id: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    voi_function: str | None = None,
    window: tuple[float | list[float], float | list[float]] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    view_code_sequence: bool = False,
    view_position: bool = True,
    age: float | None = None,
    patient_orientation: str | None = None,
    extra_tags: dict[str, object] | None = None,
) -> Path:
    """Write ``pixels`` (uint16 (rows, cols) display values, high = bright, < 2**bits_stored) as an MG DICOM.

    Args:
        photometric: MONOCHROME1 stores inverted values and PresentationLUTShape INVERSE.
        window: (center(s), width(s)) over display values; default the full range (2**(bits-1), 2**bits), an
            identity window. For MONOCHROME1 the stored centers are mirrored so that both photometric
            interpretations display the same image under the standard's formulas.
        transfer_syntax: explicit VR little endian, or lossless .4.90 (J2K; at least 32 x 32 pixels), .4.80
            (JPEG-LS), .4.70 (JPEG lossless SV1, transcoded with python-gdcm), .5 (RLE).
        view_code_sequence: add ViewCodeSequence (SNOMED CT code) as CMMD does; ``view`` must be CC or MLO.
        extra_tags: further keyword -> value; a value of None deletes the element (e.g. ``WindowCenter``).

    Returns:
        The path written.
    """
    path = Path(path)
    image = _check_arguments(pixels, laterality, photometric, bits_stored, voi_function, transfer_syntax)
    if view_code_sequence and view not in VIEW_CODES:
        raise ValueError(f"{path}: no ViewCodeSequence code for view {view!r}; known: {', '.join(VIEW_CODES)}")
    maxval = (1 << bits_stored) - 1
    if photometric == "MONOCHROME1":
        image = maxval - image

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientSex = "F"
    if age is not None:
        ds.PatientAge = f"{int(age):03d}Y"
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.ImageLaterality = ds.Laterality = laterality
    ds.PatientOrientation = patient_orientation.split("\\") if patient_orientation else _DEFAULT_ORIENTATION[laterality]
    if view_position:
        ds.ViewPosition = view
    if view_code_sequence:
        code, meaning = VIEW_CODES[view]
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
        ds.ViewCodeSequence = Sequence([item])
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    center, width = window if window is not None else (1 << (bits_stored - 1), 1 << bits_stored)
    if photometric == "MONOCHROME1":  # LINEAR windows around c - 0.5, the other functions around c
        mirror = maxval + 1 if voi_function in (None, "LINEAR") else maxval
        center = [mirror - c for c in center] if isinstance(center, (list, tuple)) else mirror - center
    ds.WindowCenter, ds.WindowWidth = _decimal_string(center), _decimal_string(width)
    if voi_function:
        ds.VOILUTFunction = voi_function
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.set_pixel_data(image, photometric, bits_stored, generate_instance_uid=False)
    _apply_extra_tags(ds, extra_tags or {}, path)

    path.parent.mkdir(parents=True, exist_ok=True)
    if transfer_syntax in (ExplicitVRLittleEndian, JPEGLosslessSV1):
        ds.save_as(path, enforce_file_format=True)
        if transfer_syntax == JPEGLosslessSV1:
            _transcode_with_gdcm(path, transfer_syntax)
    else:
        ds.compress(transfer_syntax, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    return path


def _check_arguments(
    pixels: np.ndarray, laterality: str, photometric: str, bits_stored: int, voi: str | None, tsyntax: str
) -> np.ndarray:
    """Validate the arguments; return the pixels in the storage dtype (uint8 for 8 bits)."""
    if laterality not in _DEFAULT_ORIENTATION:
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if voi not in _VOI_FUNCTIONS:
        raise ValueError(f"voi_function must be one of {_VOI_FUNCTIONS}, got {voi!r}")
    if tsyntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)}, got {tsyntax!r}")
    if not 2 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in 2..16, got {bits_stored}")
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype.kind not in "ui":
        raise ValueError(f"pixels must be a 2-D integer array, got {pixels.dtype} {pixels.shape}")
    if tsyntax == JPEG2000Lossless and min(pixels.shape) < 32:
        raise ValueError(f"JPEG 2000 needs at least 32 rows and columns (openjpeg's 6 resolutions), got {pixels.shape}")
    if pixels.size and (int(pixels.min()) < 0 or int(pixels.max()) >= 1 << bits_stored):
        raise ValueError(f"pixel values must lie in [0, {(1 << bits_stored) - 1}] for bits_stored={bits_stored}")
    return pixels.astype(np.uint8 if bits_stored <= 8 else np.uint16)


def _decimal_string(value: float | list[float]) -> DS | list[DS]:
    """Numbers as DICOM decimal strings (at most 16 characters)."""
    if isinstance(value, (list, tuple)):
        return [DS(v, auto_format=True) for v in value]
    return DS(value, auto_format=True)


def _apply_extra_tags(ds: Dataset, tags: dict[str, object], path: Path) -> None:
    for keyword, value in tags.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{path}: extra_tags: {keyword!r} is not a DICOM keyword")
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _transcode_with_gdcm(path: Path, tsyntax: str) -> None:
    """Rewrite ``path`` in place with ``tsyntax`` (python-gdcm; pydicom cannot encode JPEG Lossless)."""
    try:
        import gdcm  # optional; its import fails when the working directory holds a folder named "dl"
    except ImportError as e:
        raise ModuleNotFoundError(
            f"writing {path} as JPEG Lossless SV1 ({tsyntax}) needs python-gdcm: pip install python-gdcm"
        ) from e
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"{path}: gdcm could not read the file it is to transcode")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"{path}: gdcm could not transcode to JPEG Lossless SV1")
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(path))
    if not writer.Write():
        raise RuntimeError(f"{path}: gdcm could not write the transcoded file")
