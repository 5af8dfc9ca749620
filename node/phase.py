"""CT contrast phase of each stack: non_contrast, arterial, venous, delayed.

The evidence is ranked by how much it can be trusted, and the strongest one
available decides (the runner-up is never mixed in):

1. **Timing**: ContrastBolusStartTime against the stack's AcquisitionTime (else
   SeriesTime, else ContentTime). Delay < ``arterial_max_delay_s`` -> arterial,
   < ``venous_max_delay_s`` -> venous, else delayed; acquired before the start ->
   non_contrast. A stack without contrast tags in a study where another series
   carries the start time is timed against that study-wide injection time.
2. **Contrast tags without timing**: ContrastBolusAgent/Route/Volume say "after
   contrast" but not when; the post-contrast acquisitions are ranked by time (else
   SeriesNumber) and take ``order_phases`` in turn (one acquisition alone takes
   ``single_post_contrast_phase``). Reformats of one acquisition share its rank.
   Stacks without tags in a study where others have them are non_contrast.
3. **SeriesDescription keywords**, only when the study carries no contrast tags at
   all: free text is the least reliable evidence (site-specific, often blank).
4. Nothing at all: ``non_contrast`` when ``assume_non_contrast`` (with a warning),
   else ``unknown`` (which no default wanted view matches).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from node.stacks import Stack

PHASES = ("non_contrast", "arterial", "venous", "delayed")
UNKNOWN = "unknown"
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Label:
    """A classification result: the label, why, and any caveat worth a warning."""

    value: str
    evidence: str
    warning: str | None = None


def description_tokens(text: str) -> set[str]:
    """Upper-case tokens of a description, split on blanks and punctuation except / and +."""
    return {t for t in re.split(r"[\s_\-.,;:()\[\]]+", text.upper()) if t}


def match_keywords(text: str, keywords: Mapping[str, Sequence[str]]) -> tuple[str, str] | None:
    """(label, keyword) of the first label whose keyword occurs in ``text``.

    Alphanumeric keywords must equal a whole token (so ``ART`` does not hit
    ``PARTIAL``); keywords with symbols (``W/O``, ``+C``) match as substrings.
    Labels are tried in mapping order, so more specific ones go first.
    """
    if not text.strip():
        return None
    upper = " ".join(text.upper().split())
    tokens = description_tokens(text)
    for label, words in keywords.items():
        for word in words:
            word_u = word.upper()
            hit = (
                word_u in upper
                if not word_u.replace(" ", "").isalnum()
                else (word_u in tokens or (" " in word_u and f" {word_u} " in f" {upper} "))
            )
            if hit:
                return label, word
    return None


def stack_time(stack: Stack) -> tuple[float | None, str]:
    """The stack's acquisition time in seconds since midnight and which tag gave it."""
    header = stack.header
    times = [i.acquisition_time for i in stack.items if i.acquisition_time is not None]
    if times:
        return min(times), "AcquisitionTime"
    if header.series_time is not None:
        return header.series_time, "SeriesTime"
    if header.content_time is not None:
        return header.content_time, "ContentTime"
    return None, ""


def _delay(time: float, start: float) -> float:
    """Seconds from ``start`` to ``time``, assuming they are within 12 h (midnight wrap)."""
    delay = time - start
    if delay < -_DAY / 2:
        delay += _DAY
    elif delay > _DAY / 2:
        delay -= _DAY
    return delay


def phase_from_delay(delay: float, arterial_max: float, venous_max: float) -> str:
    """Map a post-injection delay in seconds to a phase (negative -> non_contrast)."""
    if delay < 0:
        return "non_contrast"
    if delay < arterial_max:
        return "arterial"
    if delay < venous_max:
        return "venous"
    return "delayed"


def assign_phases(
    stacks: Sequence[Stack],
    *,
    arterial_max_delay_s: float,
    venous_max_delay_s: float,
    same_acquisition_window_s: float,
    order_phases: Sequence[str],
    single_post_contrast_phase: str,
    keywords: Mapping[str, Sequence[str]],
    assume_non_contrast: bool,
) -> dict[str, Label]:
    """Label every CT stack of one study (keyed by stack_key); see the module doc."""
    labels: dict[str, Label] = {}
    starts = sorted(
        (s.header.contrast_start_time, s.series_instance_uid)
        for s in stacks
        if s.header.contrast_start_time is not None
    )
    study_start, start_series = starts[0] if starts else (None, "")
    study_tagged = any(s.header.has_contrast_tags for s in stacks)
    untimed_post: list[Stack] = []
    limits = f"(<{arterial_max_delay_s:g} s arterial, <{venous_max_delay_s:g} s venous)"
    for stack in stacks:
        header = stack.header
        time, source = stack_time(stack)
        own_start = header.contrast_start_time
        start = own_start if own_start is not None else study_start
        if time is not None and start is not None:
            delay = _delay(time, start)
            phase = phase_from_delay(delay, arterial_max_delay_s, venous_max_delay_s)
            whose = (
                "its ContrastBolusStartTime"
                if own_start is not None
                else f"the study's contrast start (series {start_series})"
            )
            if delay < 0:
                text = f"{source} is {-delay:.0f} s before {whose} -> non_contrast"
            else:
                text = f"{source} is {delay:.0f} s after {whose} {limits} -> {phase}"
            labels[stack.stack_key] = Label(phase, "timing: " + text)
        elif header.has_contrast_tags:
            untimed_post.append(stack)
        elif study_tagged:
            labels[stack.stack_key] = Label(
                "non_contrast",
                "contrast tags: none on this series while other series of the study have them",
            )
        elif hit := match_keywords(header.series_description, keywords):
            labels[stack.stack_key] = Label(
                hit[0],
                f"description (last resort, no contrast tags in the study): "
                f"{header.series_description!r} contains {hit[1]!r}",
            )
        elif assume_non_contrast:
            labels[stack.stack_key] = Label(
                "non_contrast",
                "assumed: no contrast tags, timing or description keyword in the study",
                warning="contrast phase assumed non_contrast: no evidence in the headers",
            )
        else:
            labels[stack.stack_key] = Label(UNKNOWN, "no contrast tags, timing or keyword")
    labels.update(
        _by_order(untimed_post, same_acquisition_window_s, order_phases, single_post_contrast_phase)
    )
    return labels


def _by_order(
    stacks: Sequence[Stack],
    window_s: float,
    order_phases: Sequence[str],
    single_phase: str,
) -> dict[str, Label]:
    """Rank post-contrast acquisitions without timing; reformats share a rank."""
    keyed: list[tuple[tuple[float, float], str, Stack]] = []
    for stack in stacks:
        time, source = stack_time(stack)
        number = stack.header.series_number if stack.header.series_number is not None else 0
        if time is not None:
            keyed.append(((0.0, time), source, stack))
        else:
            keyed.append(((1.0, float(number)), "SeriesNumber", stack))
    keyed.sort(key=lambda k: (k[0], k[2].stack_key))
    ranks: list[int] = []
    for index, (key, _, _) in enumerate(keyed):
        if index == 0:
            ranks.append(0)
            continue
        previous = keyed[index - 1][0]
        same = key[0] == previous[0] == 0.0 and key[1] - previous[1] <= window_s
        same = same or (key[0] == previous[0] == 1.0 and key[1] == previous[1])
        ranks.append(ranks[-1] if same else ranks[-1] + 1)
    total = (ranks[-1] + 1) if ranks else 0
    labels: dict[str, Label] = {}
    for rank, (_, source, stack) in zip(ranks, keyed, strict=True):
        phase = single_phase if total == 1 else order_phases[min(rank, len(order_phases) - 1)]
        labels[stack.stack_key] = Label(
            phase,
            f"order: contrast tags but no start time; post-contrast acquisition "
            f"{rank + 1} of {total} by {source} -> {phase}",
            warning=None if total > 1 else f"single post-contrast acquisition taken as {phase}",
        )
    return labels
