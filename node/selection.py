"""Choose the views among labelled stacks, order them, and cut them to size.

Selection is policy, not fact: which keys the model wants (``wanted_views``, fnmatch
patterns in order of preference), how many views it takes, and which stack wins
when several give the same key (DWI: the b-value closest to the preferred one;
otherwise thinner slices, then more slices, then the lower series number). Every
stack that loses is recorded as an exclusion that says which stack won and why.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from node.manifest import Exclusion, ExclusionReason, SliceRef, View
from node.phase import Label
from node.stacks import Stack


@dataclass(frozen=True, slots=True)
class _Rules:
    wanted_views: tuple[str, ...]
    max_views: int
    max_slices_per_view: int
    preferred_b_value: float


@dataclass(frozen=True, slots=True)
class Candidate:
    """A labelled stack that may become a view."""

    stack: Stack
    modality: str
    plane: str
    plane_evidence: str
    label: Label | None = None

    @property
    def key(self) -> str:
        return f"{self.modality}:{self.plane}:{self.label.value if self.label else 'unknown'}"


def _preference(key: str, settings: _Rules) -> int | None:
    for index, pattern in enumerate(settings.wanted_views):
        if fnmatch.fnmatchcase(key, pattern):
            return index
    return None


def _rank(candidate: Candidate, settings: _Rules) -> tuple[float, ...]:
    """Sort key among stacks competing for one view key: best first."""
    stack = candidate.stack
    b_value = stack.items[0].b_value
    b_distance = abs(b_value - settings.preferred_b_value) if b_value is not None else 0.0
    number = stack.header.series_number
    return (
        b_distance,
        round(stack.thickness, 3),
        -len(stack.items),
        float(number) if number is not None else 1e9,
    )


def _why_dropped(loser: Candidate, winner: Candidate) -> str:
    lb, wb = loser.stack.items[0].b_value, winner.stack.items[0].b_value
    if lb is not None and wb is not None and lb != wb:
        why = f"b-value {wb:g} is closer to the preferred one than {lb:g}"
    elif round(loser.stack.thickness, 3) != round(winner.stack.thickness, 3):
        why = f"thinner slices ({winner.stack.thickness:g} mm vs {loser.stack.thickness:g} mm)"
    elif len(loser.stack.items) != len(winner.stack.items):
        why = f"more slices ({len(winner.stack.items)} vs {len(loser.stack.items)})"
    else:
        why = "lower series number"
    return f"{loser.key} also provided by stack {winner.stack.stack_key}, kept for {why}"


def _make_view(candidate: Candidate, settings: _Rules, selection: str) -> View:
    stack = candidate.stack
    indices = list(range(len(stack.items)))
    warnings = list(stack.warnings)
    if len(indices) > settings.max_slices_per_view:
        n, m = len(indices), settings.max_slices_per_view
        indices = sorted({round(i * (n - 1) / (m - 1)) for i in range(m)}) if m > 1 else [n // 2]
        warnings.append(f"subsampled uniformly from {n} to {len(indices)} slices")
    positions = [stack.positions[i] for i in indices]
    steps = sorted(b - a for a, b in zip(positions, positions[1:], strict=False))
    label = candidate.label or Label("unknown", "")
    if label.warning:
        warnings.append(label.warning)
    first = stack.items[0]
    is_ct = candidate.modality == "CT"
    return View(
        key=candidate.key,
        series_instance_uid=stack.series_instance_uid,
        stack_key=stack.stack_key,
        modality=candidate.modality,
        plane=candidate.plane,
        phase=label.value if is_ct else None,
        sequence=None if is_ct else label.value,
        b_value=first.b_value if label.value == "dwi" else None,
        slice_count=len(indices),
        spacing_mm=steps[len(steps) // 2] if steps else 0.0,
        pixel_spacing=first.pixel_spacing,
        evidence={
            "plane": candidate.plane_evidence,
            "phase" if is_ct else "sequence": label.evidence,
            "stack": f"{stack.split}; {len(stack.items)} slices",
            "selection": selection,
        },
        warnings=warnings,
        slices=[
            SliceRef(
                sop_instance_uid=stack.items[i].header.sop_instance_uid,
                frame=stack.items[i].frame,
                path=stack.items[i].header.path,
                position=stack.positions[i],
            )
            for i in indices
        ],
    )


def select_views(
    candidates: list[Candidate],
    *,
    wanted_views: Sequence[str],
    max_views: int,
    max_slices_per_view: int,
    preferred_b_value: float,
) -> tuple[list[View], list[Exclusion]]:
    """Views in preference order, one stack per key, and why every other stack was dropped."""
    settings = _Rules(tuple(wanted_views), max_views, max_slices_per_view, preferred_b_value)
    excluded: list[Exclusion] = []
    by_key: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        if _preference(candidate.key, settings) is None:
            oblique = candidate.plane == "oblique"
            code = ExclusionReason.OBLIQUE if oblique else ExclusionReason.UNWANTED_VIEW
            why = f"view {candidate.key} is not in wanted_views"
            excluded.append(_exclusion(candidate, code, why))
        else:
            by_key[candidate.key].append(candidate)
    winners: list[Candidate] = []
    for group in by_key.values():
        group.sort(key=lambda c: (_rank(c, settings), c.stack.stack_key))
        winners.append(group[0])
        excluded.extend(
            _exclusion(loser, ExclusionReason.DUPLICATE_VIEW, _why_dropped(loser, group[0]))
            for loser in group[1:]
        )
    winners.sort(key=lambda c: (_preference(c.key, settings), c.key))
    for dropped in winners[settings.max_views :]:
        excluded.append(
            _exclusion(
                dropped, ExclusionReason.MAX_VIEWS, f"{dropped.key} is beyond max_views {settings.max_views}"
            )
        )
    views = []
    for chosen in winners[: settings.max_views]:
        selection = (
            f"wanted_views rank {_preference(chosen.key, settings)}; "
            f"{len(by_key[chosen.key])} candidate(s) for {chosen.key}"
        )
        views.append(_make_view(chosen, settings, selection))
    return views, excluded


def _exclusion(candidate: Candidate, code: ExclusionReason, reason: str) -> Exclusion:
    return Exclusion(
        series_instance_uid=candidate.stack.series_instance_uid,
        stack_key=candidate.stack.stack_key,
        reason_code=code,
        reason=reason,
    )
