"""Enhanced MR Image Storage: a whole MR series as one multi-frame instance.

Modern scanners send MR as Enhanced MR (one object, per-frame functional
groups) instead of one file per slice, so the node's volume loader must read
geometry from PlanePositionSequence / PlaneOrientationSequence /
PixelMeasuresSequence rather than top-level tags. Orientation and pixel
measures do not vary within a phantom series, so they live in the shared
functional groups; position, stack membership and b-value are per frame.
Frames are indexed by (StackID, InStackPositionNumber[, b-value]) through the
Multi-frame Dimension module, which is how a reader splits DWI stacks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from models.phantom.dicom import (
    ENHANCED_MR_IMAGE_STORAGE,
    Frame,
    SeriesHeader,
    StudyContext,
    _common,
    _pixels,
    put,
    tm,
    uid,
)

__all__ = ["ENHANCED_MR_IMAGE_STORAGE", "enhanced_mr_dataset"]

# Acquisition contrast and image flavour (ImageType value 3) per sequence.
_FLAVOUR = {"SE": "T2", "IR": "FLUID_ATTENUATED", "EP": "DIFFUSION", "GR": "T1"}


def _item(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        put(ds, keyword, value)
    return ds


def _seq(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _flavour(header: SeriesHeader) -> tuple[str, str, str]:
    """(image flavour, acquisition contrast, derived pixel contrast)."""
    attrs = header.attributes
    if "ADC" in header.image_type:
        return "DIFFUSION", "DIFFUSION", "ADC"
    scanning = attrs.get("ScanningSequence", "SE")
    scanning = scanning[-1] if isinstance(scanning, list) else scanning
    flavour = _FLAVOUR.get(str(scanning), "MIXED")
    if flavour == "T2" and float(attrs.get("RepetitionTime", 0)) < 1000:
        flavour = "T1"
    return flavour, flavour, "NONE"


def _anatomy(body_part: str) -> Dataset:
    """Frame anatomy: the imaged region as a SNOMED code (pelvis for the MR phantom)."""
    region = _item(CodeValue="12921003", CodingSchemeDesignator="SCT", CodeMeaning="Pelvis")
    if body_part != "PELVIS":
        region = _item(CodeValue="818981001", CodingSchemeDesignator="SCT", CodeMeaning="Abdomen")
    anatomy = _item(FrameLaterality="U")
    anatomy.AnatomicRegionSequence = _seq(region)
    return anatomy


def _dimension(org_uid: str, keyword: str, group: str, label: str) -> Dataset:
    return _item(
        DimensionOrganizationUID=org_uid,
        DimensionIndexPointer=tag_for_keyword(keyword),
        FunctionalGroupPointer=tag_for_keyword(group),
        DimensionDescriptionLabel=label,
    )


def enhanced_mr_dataset(
    ctx: StudyContext, header: SeriesHeader, frames: Sequence[Frame], *, stacks: int = 1
) -> Dataset:
    """One Enhanced MR instance holding ``frames`` (``stacks`` equal-length stacks in order)."""
    attrs = dict(header.attributes)
    ds = _common(ctx, header, uid(header.uid, "instance", 1))
    del ds.AcquisitionDate
    flavour, contrast, derived = _flavour(header)
    original = header.image_type[0]
    frame_type = [original, "PRIMARY", flavour, derived]
    ds.ImageType = frame_type
    acq_dt = ctx.study_date + tm(ctx.study_start_s + header.time_s)
    put(ds, "InstanceNumber", 1)
    ds.ContentTime = tm(ctx.study_start_s + header.time_s + 20.0)
    ds.AcquisitionDateTime = acq_dt
    put(ds, "AcquisitionDuration", 120.0)
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    put(ds, "MagneticFieldStrength", attrs.get("MagneticFieldStrength", 3.0))
    ds.ImageComments = "Synthetic phantom"
    ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
    ds.VolumeBasedCalculationTechnique, ds.ComplexImageComponent = "NONE", "MAGNITUDE"
    ds.AcquisitionContrast = contrast
    ds.AcquisitionContextSequence = _seq()
    ds.BurnedInAnnotation = "NO"
    ds.PatientPosition = "HFS"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.ApplicableSafetyStandardAgency = "IEC"
    for keyword in (
        "ContrastBolusAgent",
        "ContrastBolusRoute",
        "ContrastBolusVolume",
        "ContrastBolusStartTime",
        "ContrastBolusIngredient",
    ):
        if keyword in attrs:
            put(ds, keyword, attrs[keyword])
    if original == "ORIGINAL":
        echo_planar = attrs.get("ScanningSequence") == "EP"
        gradient = attrs.get("ScanningSequence") == "GR"
        ds.PulseSequenceName = str(attrs.get("SequenceName", "*phantom")).lstrip("*")[:16]
        ds.MRAcquisitionType = attrs.get("MRAcquisitionType", "2D")
        ds.EchoPulseSequence = "GRADIENT" if gradient else "SPIN"
        if not gradient:
            ds.MultipleSpinEcho = "NO"
        ds.MultiPlanarExcitation = "NO"
        ds.PhaseContrast = "NO"
        ds.TimeOfFlightContrast = "NO"
        ds.SteadyStatePulseSequence = "NONE"
        ds.EchoPlanarPulseSequence = "YES" if echo_planar else "NO"
        ds.SaturationRecovery = "NO"
        ds.SpectrallySelectedSuppression = "FAT" if "FS" in str(attrs.get("ScanOptions")) else "NONE"
        ds.OversamplingPhase = "NONE"
        ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
        ds.SegmentedKSpaceTraversal = "SINGLE" if echo_planar else "PARTIAL"
        ds.RectilinearPhaseEncodeReordering = "LINEAR"
        put(ds, "NumberOfKSpaceTrajectories", 1)
        if ds.MRAcquisitionType == "3D":
            ds.CoverageOfKSpace = "FULL"

    first = frames[0]
    shared = _item()
    shared.PixelMeasuresSequence = _seq(
        _item(
            PixelSpacing=[first.pixel_spacing, first.pixel_spacing],
            SliceThickness=first.slice_thickness,
            SpacingBetweenSlices=first.spacing_between_slices or first.slice_thickness,
        )
    )
    shared.PlaneOrientationSequence = _seq(_item(ImageOrientationPatient=list(first.orientation or ())))
    shared.MRImageFrameTypeSequence = _seq(
        _item(
            FrameType=frame_type,
            PixelPresentation="MONOCHROME",
            VolumetricProperties="VOLUME",
            VolumeBasedCalculationTechnique="NONE",
            ComplexImageComponent="MAGNITUDE",
            AcquisitionContrast=contrast,
        )
    )
    shared.FrameVOILUTSequence = _seq(
        _item(WindowCenter=attrs.get("WindowCenter", 500.0), WindowWidth=attrs.get("WindowWidth", 1000.0))
    )
    shared.FrameAnatomySequence = _seq(_anatomy(ctx.body_part))
    shared.PixelValueTransformationSequence = _seq(
        _item(RescaleIntercept=0.0, RescaleSlope=1.0, RescaleType="US")
    )
    if original == "ORIGINAL":
        shared.MRTimingAndRelatedParametersSequence = _seq(
            _item(
                RepetitionTime=attrs.get("RepetitionTime", 500.0),
                FlipAngle=attrs.get("FlipAngle", 90.0),
                EchoTrainLength=attrs.get("EchoTrainLength", 1),
                RFEchoTrainLength=attrs.get("EchoTrainLength", 1),
                GradientEchoTrainLength=0,
                GradientOutputType="DB_DT",
                GradientOutput=10.0,
            )
        )
        shared.MREchoSequence = _seq(_item(EffectiveEchoTime=attrs.get("EchoTime", 10.0)))
        matrix = int(first.pixels.shape[0])
        shared.MRFOVGeometrySequence = _seq(
            _item(
                InPlanePhaseEncodingDirection="ROW",
                MRAcquisitionFrequencyEncodingSteps=matrix,
                MRAcquisitionPhaseEncodingStepsInPlane=matrix,
                PercentSampling=100.0,
                PercentPhaseFieldOfView=100.0,
            )
        )
        shared.MRModifierSequence = _seq(
            _item(
                InversionRecovery="YES" if "InversionTime" in attrs else "NO",
                FlowCompensation="NONE",
                Spoiling="NONE",
                T2Preparation="NO",
                SpectrallySelectedExcitation="NONE",
                SpatialPresaturation="NONE",
                PartialFourier="NO",
                ParallelAcquisition="NO",
            )
        )
        if "InversionTime" in attrs:
            shared.MRModifierSequence[0].InversionTimes = [attrs["InversionTime"]]
        coil = _item(
            ReceiveCoilName="Body18",
            ReceiveCoilManufacturerName="",
            ReceiveCoilType="MULTICOIL",
            QuadratureReceiveCoil="NO",
        )
        coil.MultiCoilDefinitionSequence = _seq(
            _item(MultiCoilElementName="BO1", MultiCoilElementUsed="YES"),
            _item(MultiCoilElementName="BO2", MultiCoilElementUsed="YES"),
        )
        shared.MRReceiveCoilSequence = _seq(coil)
        shared.MRTransmitCoilSequence = _seq(
            _item(TransmitCoilName="Body", TransmitCoilManufacturerName="", TransmitCoilType="BODY")
        )
        shared.MRImagingModifierSequence = _seq(
            _item(
                PixelBandwidth=attrs.get("PixelBandwidth", 250.0),
                MagnetizationTransfer="NONE",
                BloodSignalNulling="NO",
                Tagging="NONE",
                TransmitterFrequency=attrs.get("ImagingFrequency", 123.25),
            )
        )
        timing = shared.MRTimingAndRelatedParametersSequence[0]
        timing.SpecificAbsorptionRateSequence = _seq(
            _item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=0.9)
        )
        timing.OperatingModeSequence = _seq(
            *(
                _item(OperatingModeType=kind, OperatingMode="IEC_NORMAL")
                for kind in ("STATIC FIELD", "RF", "GRADIENT")
            )
        )
        shared.MRAveragesSequence = _seq(_item(NumberOfAverages=1.0))
    ds.SharedFunctionalGroupsSequence = _seq(shared)

    org_uid = str(uid(header.uid, "dimension-organization"))
    ds.DimensionOrganizationSequence = _seq(_item(DimensionOrganizationUID=org_uid))
    dims = [
        _dimension(org_uid, "StackID", "FrameContentSequence", "Stack"),
        _dimension(org_uid, "InStackPositionNumber", "FrameContentSequence", "Position"),
    ]
    diffusion = any("DiffusionBValue" in f.attributes for f in frames)
    if diffusion:
        dims.append(_dimension(org_uid, "DiffusionBValue", "MRDiffusionSequence", "b-value"))
    ds.DimensionIndexSequence = _seq(*dims)

    per_stack = len(frames) // stacks
    per_frame = []
    for n, frame in enumerate(frames):
        stack, pos = divmod(n, per_stack)
        content = _item(StackID=str(stack + 1), InStackPositionNumber=pos + 1, FrameAcquisitionNumber=1)
        content.DimensionIndexValues = [stack + 1, pos + 1] + ([stack + 1] if diffusion else [])
        if original == "ORIGINAL":
            content.FrameAcquisitionDateTime = acq_dt
            content.FrameReferenceDateTime = acq_dt
            put(content, "FrameAcquisitionDuration", 120.0)
        item = _item()
        item.FrameContentSequence = _seq(content)
        item.PlanePositionSequence = _seq(_item(ImagePositionPatient=list(frame.position or ())))
        if diffusion:
            b = float(frame.attributes.get("DiffusionBValue", 0.0))  # type: ignore[arg-type]
            item.MRDiffusionSequence = _seq(
                _item(DiffusionBValue=b, DiffusionDirectionality="NONE" if b == 0 else "ISOTROPIC")
            )
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = _seq(*per_frame)
    put(ds, "NumberOfFrames", len(frames))
    bits = int(attrs.get("BitsStored", 12))
    _pixels(ds, np.stack([f.pixels for f in frames]), bits)
    return ds
