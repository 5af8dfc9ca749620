"""Tissue labels and what each looks like per CT phase and MR contrast.

The anatomy only says *which tissue* is where; this table says *how bright* it
is, so one rasterised label volume serves every phase of a plane (the four CT
phases differ only in this lookup). Values are textbook-typical, chosen so the
findings behave as a radiologist expects: the liver lesion is hyperenhancing
in the arterial phase and washes out later, the rectal tumour is intermediate
on T2, bright on DWI b800 and dark on ADC, and enhances with gadolinium.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from models.phantom.errors import PhantomSpecError

CT_PHASES = ("non_contrast", "arterial", "venous", "delayed")
MR_SEQUENCES = ("t1", "t1_post", "t2", "flair", "dwi", "adc", "other")
# Contrasts the MR table defines directly; "dwi" is derived from s0 and adc.
_MR_CONTRASTS = ("t1", "t2", "flair", "t1_post", "s0", "adc")


class Tissue(IntEnum):
    """Label values painted into the raster (uint8)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    LUNG = 3
    AIRWAY = 4
    MYOCARDIUM = 5
    BLOOD_ART = 6
    BLOOD_RIGHT = 7
    BLOOD_VEN = 8
    LIVER = 9
    SPLEEN = 10
    KIDNEY = 11
    STOMACH = 12
    BONE = 13
    CORTEX = 14
    DISC = 15
    CSF = 16
    EFFUSION = 17
    NODULE = 18
    LIVER_LESION = 19
    LYMPH_NODE = 20
    URINE = 21
    RECTAL_WALL = 22
    RECTAL_LUMEN = 23
    GLAND = 24
    MARROW = 25
    RECTAL_LESION = 26


#: the solids that make each focal finding (its soft solids carry this tissue label); a diffuse
#: finding such as cardiomegaly or an effusion is large by construction and has none
FOCAL_TISSUES: dict[str, Tissue] = {
    "lung_nodule": Tissue.NODULE,
    "liver_lesion": Tissue.LIVER_LESION,
    "lymphadenopathy": Tissue.LYMPH_NODE,
    "rectal_lesion": Tissue.RECTAL_LESION,
}

#: diffuse findings drawn as a tissue of their own, so the answer key can list the slices that
#: cut them (`StudyBuilder.finding_slices`): the effusion lies at the lung bases, not on every
#: slice of a study that has one
PLACED_TISSUES: dict[str, Tissue] = {"pleural_effusion": Tissue.EFFUSION}

# Hounsfield units: non-contrast, arterial (~30 s), portal venous (~70 s), delayed (>=180 s).
_CT_HU: dict[Tissue, tuple[float, float, float, float]] = {
    Tissue.AIR: (-1000, -1000, -1000, -1000),
    Tissue.FAT: (-100, -100, -98, -98),
    Tissue.MUSCLE: (50, 58, 65, 62),
    Tissue.LUNG: (-860, -855, -855, -858),
    Tissue.AIRWAY: (-990, -990, -990, -990),
    Tissue.MYOCARDIUM: (42, 115, 120, 95),
    Tissue.BLOOD_ART: (40, 320, 150, 100),
    Tissue.BLOOD_RIGHT: (40, 230, 160, 102),
    Tissue.BLOOD_VEN: (40, 95, 165, 105),
    Tissue.LIVER: (55, 68, 110, 92),
    Tissue.SPLEEN: (48, 125, 120, 98),
    Tissue.KIDNEY: (32, 190, 175, 140),
    Tissue.STOMACH: (12, 12, 14, 14),
    Tissue.BONE: (260, 265, 270, 268),
    Tissue.CORTEX: (750, 750, 750, 750),
    Tissue.DISC: (85, 88, 92, 90),
    Tissue.CSF: (10, 10, 10, 10),
    Tissue.EFFUSION: (14, 14, 15, 16),
    Tissue.NODULE: (28, 40, 55, 50),
    Tissue.LIVER_LESION: (45, 150, 98, 78),
    Tissue.LYMPH_NODE: (40, 62, 85, 78),
    Tissue.URINE: (8, 8, 10, 60),
    Tissue.RECTAL_WALL: (40, 80, 90, 85),
    Tissue.RECTAL_LUMEN: (-900, -900, -900, -900),
    Tissue.GLAND: (40, 60, 80, 75),
    Tissue.MARROW: (180, 182, 185, 184),
    Tissue.RECTAL_LESION: (42, 95, 100, 90),
}

# MR signal in arbitrary units: T1 TSE, T2 TSE, FLAIR, T1 fat-saturated post
# gadolinium, DWI b=0 (fat-suppressed, T2-weighted) and ADC in 1e-6 mm^2/s.
_MR: dict[Tissue, tuple[float, float, float, float, float, float]] = {
    Tissue.AIR: (0, 0, 0, 0, 0, 0),
    Tissue.FAT: (900, 700, 650, 120, 80, 200),
    Tissue.MUSCLE: (400, 180, 200, 230, 150, 1400),
    Tissue.LUNG: (20, 20, 20, 20, 20, 0),
    Tissue.AIRWAY: (0, 0, 0, 0, 0, 0),
    Tissue.MYOCARDIUM: (420, 220, 230, 500, 180, 1500),
    Tissue.BLOOD_ART: (60, 40, 40, 950, 60, 2500),
    Tissue.BLOOD_RIGHT: (60, 40, 40, 900, 60, 2500),
    Tissue.BLOOD_VEN: (80, 50, 50, 850, 80, 2500),
    Tissue.LIVER: (550, 250, 260, 600, 220, 1300),
    Tissue.SPLEEN: (420, 450, 430, 550, 420, 900),
    Tissue.KIDNEY: (450, 600, 500, 800, 500, 2000),
    Tissue.STOMACH: (120, 1500, 80, 120, 1300, 2800),
    Tissue.BONE: (650, 400, 380, 160, 90, 400),
    Tissue.CORTEX: (20, 15, 15, 20, 10, 0),
    Tissue.DISC: (300, 800, 500, 320, 600, 1700),
    Tissue.CSF: (150, 1600, 80, 150, 1400, 3000),
    Tissue.EFFUSION: (150, 1500, 90, 150, 1300, 2900),
    Tissue.NODULE: (380, 400, 380, 550, 450, 1000),
    Tissue.LIVER_LESION: (350, 550, 500, 800, 600, 1000),
    Tissue.LYMPH_NODE: (380, 420, 400, 500, 500, 900),
    Tissue.URINE: (120, 1800, 60, 120, 1600, 3000),
    Tissue.RECTAL_WALL: (380, 300, 280, 600, 250, 1500),
    Tissue.RECTAL_LUMEN: (10, 15, 10, 10, 10, 0),
    Tissue.GLAND: (420, 700, 500, 550, 500, 1600),
    Tissue.MARROW: (750, 500, 450, 150, 90, 400),
    Tissue.RECTAL_LESION: (400, 450, 420, 750, 600, 750),
}


def ct_table(phase: str) -> np.ndarray:
    """HU of every tissue label in ``phase`` (index = label)."""
    if phase not in CT_PHASES:
        raise PhantomSpecError(f"unknown CT phase {phase!r}; known: {', '.join(CT_PHASES)}")
    col = CT_PHASES.index(phase)
    table = np.zeros(len(Tissue), dtype=np.float32)
    for tissue, values in _CT_HU.items():
        table[tissue] = values[col]
    return table


def mr_table(contrast: str, *, b_value: float = 0.0) -> np.ndarray:
    """MR signal of every tissue for ``contrast`` (index = label).

    ``contrast`` is one of t1, t2, flair, t1_post, adc, or dwi, where the
    diffusion-weighted signal is S0 * exp(-b * ADC), so lesions with low ADC
    stay bright at high b while free water fades.
    """
    table = np.zeros(len(Tissue), dtype=np.float32)
    if contrast == "dwi":
        s0 = mr_table("s0")
        adc = mr_table("adc")
        return (s0 * np.exp(-b_value * adc * 1e-6)).astype(np.float32)
    if contrast == "other":
        contrast = "t1"
    if contrast not in _MR_CONTRASTS:
        raise PhantomSpecError(f"unknown MR contrast {contrast!r}")
    col = _MR_CONTRASTS.index(contrast)
    for tissue, values in _MR.items():
        table[tissue] = values[col]
    return table
