"""Reference radiology reports for phantom studies.

The report is the training target of the model's text head, so its wording
varies with the seed (a few templates and synonyms per statement) while the
vocabulary stays small enough for a word-level tokenizer. Every applicable
finding gets a sentence, positive with its attributes rendered, or a normal
statement; the impression lists the positives (or says the study is normal).
Descriptions follow what was acquired: an arterially enhancing liver lesion
is only called that when an arterial phase exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.phantom.findings import Finding


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _mm(value: object) -> str:
    return f"{float(value):.0f}"  # type: ignore[arg-type]


def _a(number: str) -> str:
    """The article before a spoken number: "an 8 mm", "an 11 mm", "a 20 mm"."""
    return "an" if number.startswith("8") or number in ("11", "18") else "a"


def _numbered(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return "\n".join(f"{n}. {item}" for n, item in enumerate(items, start=1))


def _liver(f: Finding, phases: Sequence[str], rng: np.random.Generator) -> tuple[str, str]:
    size, loc = _mm(f.attributes["size_mm"]), f.attributes["location"]
    late = "venous" in phases or "delayed" in phases
    if "arterial" in phases and late:
        text = _pick(
            rng,
            [
                f"There is {_a(size)} {size} mm lesion in the {loc} of the liver that enhances in the "
                "arterial phase with washout on later phases.",
                f"{_cap(_a(size))} {size} mm arterially enhancing lesion is seen in the {loc} of the liver, "
                "with washout on the later phases.",
            ],
        )
        imp = f"{size} mm arterially enhancing liver lesion with washout, suspicious for malignancy."
    elif "arterial" in phases:
        text = f"There is {_a(size)} {size} mm hyperenhancing lesion in the {loc} of the liver."
        imp = f"{size} mm hyperenhancing liver lesion."
    else:
        text = f"There is {_a(size)} {size} mm lesion in the {loc} of the liver."
        imp = f"{size} mm liver lesion, further characterization recommended."
    return text, imp


def ct_report(
    findings: Sequence[Finding], phases: Sequence[str], rng: np.random.Generator
) -> tuple[str, str]:
    """(Findings text, Impression text) for a chest/abdomen CT."""
    by_key = {f.key: f for f in findings}
    lines: list[str] = []
    impression: list[str] = []
    f = by_key.get("lung_nodule")
    if f is not None:
        size, lobe = _mm(f.attributes["size_mm"]), f.attributes["lobe"]
        lines.append(
            _pick(
                rng,
                [
                    f"There is {_a(size)} {size} mm solid nodule in the {lobe}.",
                    f"{_cap(_a(size))} {size} mm pulmonary nodule is seen in the {lobe}.",
                    f"{size} mm nodule in the {lobe}.",
                ],
            )
        )
        impression.append(f"{size} mm pulmonary nodule in the {lobe}.")
    else:
        lines.append(
            _pick(
                rng,
                [
                    "No pulmonary nodules.",
                    "The lungs are clear without nodules.",
                    "No suspicious pulmonary nodule.",
                ],
            )
        )
    f = by_key.get("pleural_effusion")
    if f is not None:
        size, side = f.attributes["size"], f.attributes["side"]
        if side == "bilateral":
            lines.append(
                _pick(
                    rng,
                    [
                        f"There are {size} bilateral pleural effusions.",
                        f"{_cap(str(size))} bilateral pleural effusions.",
                    ],
                )
            )
            impression.append(f"{_cap(str(size))} bilateral pleural effusions.")
        else:
            lines.append(
                _pick(
                    rng,
                    [
                        f"There is a {size} {side} pleural effusion.",
                        f"{_cap(str(size))} {side} pleural effusion.",
                    ],
                )
            )
            impression.append(f"{_cap(str(size))} {side} pleural effusion.")
    else:
        lines.append(
            _pick(
                rng,
                ["No pleural effusion.", "There is no pleural effusion.", "The pleural spaces are clear."],
            )
        )
    f = by_key.get("cardiomegaly")
    if f is not None:
        sev = str(f.attributes["severity"])
        lines.append(
            _pick(
                rng,
                [
                    f"The heart is {sev}ly enlarged.",
                    f"There is {sev} cardiomegaly.",
                    f"{_cap(sev)} cardiomegaly.",
                ],
            )
        )
        impression.append(f"{_cap(sev)} cardiomegaly.")
    else:
        lines.append(_pick(rng, ["The heart is normal in size.", "Normal heart size.", "No cardiomegaly."]))
    f = by_key.get("lymphadenopathy")
    if f is not None:
        station, size = f.attributes["station"], _mm(f.attributes["short_axis_mm"])
        lines.append(
            _pick(
                rng,
                [
                    f"There is {station} lymphadenopathy, "
                    f"the largest node measuring {size} mm in short axis.",
                    f"Enlarged {station} lymph nodes are present, measuring up to {size} mm in short axis.",
                ],
            )
        )
        impression.append(f"{_cap(str(station))} lymphadenopathy.")
    else:
        lines.append(
            _pick(
                rng,
                [
                    "No enlarged lymph nodes.",
                    "There is no lymphadenopathy.",
                    "No mediastinal or abdominal lymphadenopathy.",
                ],
            )
        )
    f = by_key.get("liver_lesion")
    if f is not None:
        text, imp = _liver(f, phases, rng)
        lines.append(text)
        impression.append(imp)
    else:
        lines.append(
            _pick(
                rng,
                [
                    "The liver is normal without focal lesion.",
                    "No focal liver lesion.",
                    "The liver is unremarkable.",
                ],
            )
        )
    for options in (
        ["The spleen is normal.", "The spleen is unremarkable."],
        ["The kidneys are unremarkable.", "The kidneys are normal."],
        ["No acute osseous abnormality.", "The bones are unremarkable."],
    ):
        if rng.random() < 0.6:
            lines.append(_pick(rng, options))
    if not impression:
        impression.append(
            _pick(
                rng,
                [
                    "No acute abnormality.",
                    "Normal CT of the chest and abdomen.",
                    "No significant abnormality.",
                ],
            )
        )
    return "\n".join(lines), _numbered(impression)


def _height(distance_cm: float) -> str:
    return "low" if distance_cm < 5 else ("mid" if distance_cm <= 10 else "high")


def mr_report(
    findings: Sequence[Finding], sequences: Sequence[str], sex: str, rng: np.random.Generator
) -> tuple[str, str]:
    """(Findings text, Impression text) for a pelvis MR."""
    by_key = {f.key: f for f in findings}
    lines: list[str] = []
    impression: list[str] = []
    f = by_key.get("rectal_lesion")
    if f is not None:
        size, wall = _mm(f.attributes["size_mm"]), f.attributes["wall"]
        dist = float(f.attributes["distance_cm"])
        height = _height(dist)
        lines.append(
            _pick(
                rng,
                [
                    f"There is {_a(size)} {size} mm mass arising from the {wall} wall "
                    f"of the {height} rectum, {dist:.0f} cm from the anal verge.",
                    f"{_cap(_a(size))} {size} mm {height} rectal mass is seen along the {wall} wall, "
                    f"{dist:.0f} cm from the anal verge.",
                ],
            )
        )
        traits = []
        if "t2" in sequences:
            traits.append("is of intermediate T2 signal")
        if "dwi" in sequences or "adc" in sequences:
            traits.append("shows restricted diffusion")
        if "t1_post" in sequences:
            traits.append("enhances after contrast")
        if traits:
            joined = traits[0] if len(traits) == 1 else ", ".join(traits[:-1]) + " and " + traits[-1]
            lines.append(f"The mass {joined}.")
        impression.append(f"{size} mm {height} rectal mass, suspicious for rectal cancer.")
    else:
        lines.append(
            _pick(
                rng,
                [
                    "The rectal wall is normal in thickness without a mass.",
                    "No rectal mass.",
                    "The rectum is unremarkable.",
                ],
            )
        )
    f = by_key.get("lymphadenopathy")
    if f is not None:
        station, size = f.attributes["station"], _mm(f.attributes["short_axis_mm"])
        lines.append(
            _pick(
                rng,
                [
                    f"There is an enlarged {station} lymph node measuring {size} mm in short axis.",
                    f"Enlarged {station} lymph node, {size} mm in short axis.",
                ],
            )
        )
        impression.append(f"Enlarged {station} lymph node.")
    else:
        lines.append(
            _pick(
                rng, ["No enlarged pelvic lymph nodes.", "No mesorectal or pelvic sidewall lymphadenopathy."]
            )
        )
    organ = "The prostate is normal in size." if sex == "M" else "The uterus and ovaries are unremarkable."
    for options in (
        ["The bladder is unremarkable.", "The bladder is normal."],
        [organ],
        ["No free pelvic fluid.", "There is no free fluid."],
        ["The pelvic bones are normal.", "No osseous abnormality."],
    ):
        if rng.random() < 0.6:
            lines.append(_pick(rng, options))
    if not impression:
        impression.append(
            _pick(rng, ["No pelvic abnormality.", "Normal MRI of the pelvis.", "No significant abnormality."])
        )
    return "\n".join(lines), _numbered(impression)
