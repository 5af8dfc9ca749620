"""How visible each planted focal finding is: the ceiling any model's recall runs into.

The phantom makes findings at a 64 matrix with thick slices and realistic noise, so some are
too faint for anyone to see: a 10 mm liver lesion that differs from liver by -12 HU in the
venous phase, under 8 HU of noise, is one or two pixels of partial volume. To tell a model's
misses from misses no reader could avoid, this module measures each finding with the ideal
observer: the signal is the noise-free difference the finding makes to a view (the study
rendered with and without its solids), and its detectability is the matched-filter
signal-to-noise ratio ||difference||_2 / sigma, the best any detector can do even knowing
where and what to look for. The best view of the study counts. Below the Rose criterion (an
SNR of about 5) a finding cannot be told from noise reliably; see Barrett and Myers,
"Foundations of Image Science" (2004), ch. 13-14.

Only the focal findings are measured (the ones that are small solids); a diffuse finding such
as cardiomegaly or an effusion is large by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from models.phantom.spec import PhantomSpec
from models.phantom.study import StudyBuilder
from models.phantom.tissues import FOCAL_TISSUES

__all__ = ["FOCAL_TISSUES", "ROSE_SNR", "FindingSignal", "focal_signals", "without_invisible_findings"]

#: Rose criterion: below this matched-filter SNR a finding is not reliably told from noise
ROSE_SNR = 5.0


@dataclass(frozen=True)
class FindingSignal:
    """The ideal observer's view of one planted finding: its best view and that view's SNR."""

    key: str
    snr: float
    view: str

    @property
    def detectable(self) -> bool:
        return self.snr >= ROSE_SNR


def focal_signals(spec: PhantomSpec) -> list[FindingSignal]:
    """Each planted focal finding of `spec` with its matched-filter SNR in its best image view.

    Views are the study's image series (not localizers, screens or reformats); for DWI the
    best b-value counts. Pixels are what the phantom writes: partial volume included.
    """
    builder = StudyBuilder(spec)
    planted = {finding.key for finding in builder.anatomy.findings} & FOCAL_TISSUES.keys()
    best = {key: FindingSignal(key=key, snr=0.0, view="") for key in sorted(planted)}
    for plan in builder.plans:
        if plan.kind != "view" or not best:
            continue
        for key, snr in builder.focal_snr(plan).items():
            if snr > best[key].snr:
                view = f"{plan.plane} {plan.phase or plan.sequence}"
                best[key] = FindingSignal(key=key, snr=snr, view=view)
    return list(best.values())


def without_invisible_findings(spec: PhantomSpec) -> PhantomSpec:
    """`spec` less every focal finding that no view of the study shows (best SNR below Rose).

    Why: a report states what its reader sees. A finding planted under the noise (an 8 mm
    liver lesion in a study without an arterial phase) yet named in the report and labels
    teaches a model to guess and caps every model's recall on it below 1, so the training
    and held-out sets are made of studies whose labels are visible. Removing a finding can
    move the others (the anatomy draws their places from one random stream), so this repeats
    until every remaining one is visible.
    """
    while True:
        hidden = {signal.key for signal in focal_signals(spec) if not signal.detectable}
        if not hidden:
            return spec
        spec = replace(spec, findings=tuple(f for f in spec.findings if f.key not in hidden))
