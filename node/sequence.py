"""MR sequence class of each stack: t1, t1_post, t2, flair, dwi, adc, other.

Acquisition parameters decide before free text, in this order (first hit wins):

1. ImageType ``ADC`` -> adc (a derived map, wanted even when derived images are not).
2. A b-value, ImageType ``DIFFUSION``/``TRACEW``/``TRACE`` or Enhanced MR
   AcquisitionContrast ``DIFFUSION`` -> dwi (the b-value is kept on the view).
3. InversionTime >= ``flair_min_ti_ms`` (or AcquisitionContrast FLUID_ATTENUATED)
   -> flair; ``t1_ir_ti_ms`` range with a short TE -> t1 (MPRAGE-like);
   a shorter TI (STIR) -> other.
4. A 2D gradient echo (ScanningSequence GR / EchoPulseSequence GRADIENT only,
   MRAcquisitionType 2D: in/opposed-phase, T2*, FLASH) -> other when
   ``mr_2d_gre_is_other`` (anatomical T1 views are spin echo or 3D GRE); then
   Enhanced MR AcquisitionContrast T1 / T2 -> t1 / t2.
5. TR/TE: TR <= ``t1_max_tr_ms`` and TE <= ``t1_max_te_ms`` -> t1;
   TR >= ``t2_min_tr_ms`` and TE >= ``t2_min_te_ms`` -> t2; otherwise other
   (proton density, T2*, ...).
6. Only when TR/TE are missing: SeriesDescription keywords.

A t1 becomes t1_post from contrast tags on the series, or from being acquired
after a ContrastBolusStartTime seen anywhere in the study, or - only when the study
carries no contrast tags at all - from a description keyword (POST, +C, GAD...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from node.phase import Label, match_keywords, stack_time
from node.stacks import Stack

SEQUENCES = ("t1", "t1_post", "t2", "flair", "dwi", "adc", "other")
_DIFFUSION_TYPES = {"DIFFUSION", "TRACEW", "TRACE", "ISODWI", "DWI"}


def _g(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _base_class(
    stack: Stack,
    *,
    t1_max_tr_ms: float,
    t1_max_te_ms: float,
    t2_min_tr_ms: float,
    t2_min_te_ms: float,
    flair_min_ti_ms: float,
    t1_ir_ti_ms: tuple[float, float],
    gre_2d_is_other: bool,
    keywords: Mapping[str, Sequence[str]],
) -> tuple[str, str]:
    header = stack.header
    image_type = set(header.image_type)
    contrast = header.acquisition_contrast
    b_value = stack.items[0].b_value
    if "ADC" in image_type or "EADC" in image_type:
        return "adc", "ImageType contains ADC"
    if b_value is not None or image_type & _DIFFUSION_TYPES or contrast == "DIFFUSION":
        why = f"b-value {b_value:g}" if b_value is not None else "diffusion ImageType/contrast"
        return "dwi", why
    te = stack.items[0].echo_time if stack.items[0].echo_time is not None else header.echo_time
    tr, ti = header.repetition_time, header.inversion_time
    if (ti is not None and ti >= flair_min_ti_ms) or contrast == "FLUID_ATTENUATED":
        return "flair", f"inversion time {_g(ti)} ms >= {flair_min_ti_ms:g} ms"
    if ti is not None and ti > 0:
        low, high = t1_ir_ti_ms
        if low <= ti <= high and (te is None or te <= t1_max_te_ms):
            return "t1", f"inversion-prepared T1: TI {ti:g} ms, TE {_g(te)} ms"
        if ti < low:
            return "other", f"short-TI inversion recovery (STIR-like): TI {ti:g} ms"
    gradient_only = set(header.scanning_sequence) in ({"GR"}, {"GRADIENT"})
    if gre_2d_is_other and gradient_only and header.mr_acquisition_type == "2D":
        return "other", "2D gradient echo (in/opposed-phase, T2*, FLASH): not a T1/T2 class"
    if contrast in ("T1", "T2"):
        return contrast.lower(), f"Enhanced MR AcquisitionContrast {contrast}"
    if te is not None and tr is not None:
        params = f"TR {tr:g} ms, TE {te:g} ms"
        if tr <= t1_max_tr_ms and te <= t1_max_te_ms:
            return "t1", f"{params} (TR <= {t1_max_tr_ms:g}, TE <= {t1_max_te_ms:g}) -> t1"
        if tr >= t2_min_tr_ms and te >= t2_min_te_ms:
            return "t2", f"{params} (TR >= {t2_min_tr_ms:g}, TE >= {t2_min_te_ms:g}) -> t2"
        return "other", f"{params}: neither T1- nor T2-weighted (PD, T2*...)"
    hit = match_keywords(header.series_description, keywords)
    if hit is not None:
        return hit[0], (
            f"description (last resort, no TR/TE): {header.series_description!r} contains {hit[1]!r}"
        )
    return "other", "no TR/TE, no diffusion or inversion tags and no keyword"


def assign_sequences(
    stacks: Sequence[Stack],
    *,
    t1_max_tr_ms: float,
    t1_max_te_ms: float,
    t2_min_tr_ms: float,
    t2_min_te_ms: float,
    flair_min_ti_ms: float,
    t1_ir_ti_ms: tuple[float, float],
    gre_2d_is_other: bool,
    keywords: Mapping[str, Sequence[str]],
    post_keywords: Sequence[str],
) -> dict[str, Label]:
    """Label every MR stack of one study (keyed by stack_key); see the module doc."""
    starts = [s.header.contrast_start_time for s in stacks if s.header.contrast_start_time]
    study_start = min(starts) if starts else None
    study_tagged = any(s.header.has_contrast_tags for s in stacks)
    labels: dict[str, Label] = {}
    for stack in stacks:
        label, why = _base_class(
            stack,
            t1_max_tr_ms=t1_max_tr_ms,
            t1_max_te_ms=t1_max_te_ms,
            t2_min_tr_ms=t2_min_tr_ms,
            t2_min_te_ms=t2_min_te_ms,
            flair_min_ti_ms=flair_min_ti_ms,
            t1_ir_ti_ms=t1_ir_ti_ms,
            gre_2d_is_other=gre_2d_is_other,
            keywords=keywords,
        )
        if label in ("t1", "t1_post"):
            label, post_why = _post_contrast(stack, study_start, study_tagged, post_keywords)
            why = f"{why}; {post_why}"
        labels[stack.stack_key] = Label(label, why)
    return labels


def _post_contrast(
    stack: Stack,
    study_start: float | None,
    study_tagged: bool,
    post_keywords: Sequence[str],
) -> tuple[str, str]:
    header = stack.header
    if header.has_contrast_tags:
        agent = header.contrast_agent or header.contrast_route or "present"
        return "t1_post", f"contrast tags ({agent!r}) -> t1_post"
    time, source = stack_time(stack)
    if study_start is not None and time is not None:
        if 0 <= (time - study_start) % 86400 < 43200:
            return "t1_post", f"{source} after the study's contrast start -> t1_post"
        return "t1", f"{source} before the study's contrast start -> t1"
    if not study_tagged:
        hit = match_keywords(header.series_description, {"t1_post": post_keywords})
        if hit is not None:
            return "t1_post", (
                f"description (last resort): {header.series_description!r} contains {hit[1]!r} -> t1_post"
            )
    return "t1", "no contrast evidence -> t1"
