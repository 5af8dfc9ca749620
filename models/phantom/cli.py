"""Command line: ``python -m models.phantom OUT_DIR [options]``.

The node's ``msvlm-node phantom`` delegates here (``build_parser`` to embed the
options, ``main`` to run), so the options live in one place. Every option
that has a sensible single value has an environment-variable mirror
(MSVLM_PHANTOM_<NAME>). Errors are handled once, in :func:`main`: the cause is
printed and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from models.phantom.dataset import write_dataset
from models.phantom.errors import PhantomError, PhantomSpecError
from models.phantom.findings import FINDINGS, Finding
from models.phantom.geometry import PLANES
from models.phantom.spec import DEFAULT_SEQUENCES, PhantomSpec
from models.phantom.study import write_study
from models.phantom.tissues import CT_PHASES, MR_SEQUENCES
from models.phantom.truth import StudyTruth

ENV_PREFIX = "MSVLM_PHANTOM_"


def _env(name: str, default: Any) -> Any:
    return os.environ.get(ENV_PREFIX + name, default)


def parse_finding(text: str) -> Finding:
    """``key`` or ``key:attr=value,attr=value``; underscores in text values become spaces
    (``lobe=right_upper_lobe``)."""
    key, _, rest = text.partition(":")
    attrs: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        name, sep, value = part.partition("=")
        if not sep:
            raise PhantomSpecError(f"finding attribute {part!r} is not name=value")
        try:
            attrs[name.strip()] = float(value)
        except ValueError:
            attrs[name.strip()] = value.strip().replace("_", " ")
    return Finding(key.strip(), attrs)


def build_parser() -> argparse.ArgumentParser:
    """The phantom options (also embedded by ``msvlm-node phantom``)."""
    p = argparse.ArgumentParser(
        prog="python -m models.phantom",
        description="Write a synthetic DICOM phantom study (or a dataset of studies) with "
        "ground truth (truth.json) and a reference report (report.txt).",
    )
    p.add_argument("out_dir", help="output folder")
    p.add_argument(
        "--modality",
        type=str.upper,
        choices=("CT", "MR"),
        default=_env("MODALITY", None),
        help="CT chest/abdomen or MR pelvis (default CT; a dataset alternates both)",
    )
    p.add_argument("--planes", nargs="+", choices=PLANES, default=["axial", "coronal", "sagittal"])
    p.add_argument(
        "--phases", nargs="+", choices=CT_PHASES, default=list(CT_PHASES), help="CT contrast phases"
    )
    p.add_argument(
        "--sequences", nargs="+", choices=MR_SEQUENCES, default=list(DEFAULT_SEQUENCES), help="MR sequences"
    )
    p.add_argument(
        "--b-values", nargs="+", type=int, default=[0, 800], help="DWI b-values stored in the one DWI series"
    )
    p.add_argument(
        "--findings",
        nargs="*",
        default=[],
        metavar="KEY[:ATTR=VALUE,...]",
        help="findings to plant; keys: " + ", ".join(f.key for f in FINDINGS),
    )
    p.add_argument("--seed", type=int, default=int(_env("SEED", 0)))
    p.add_argument("--matrix", type=int, default=int(_env("MATRIX", 64)))
    p.add_argument("--slices", type=int, default=int(_env("SLICES", 32)))
    p.add_argument(
        "--slice-spacing",
        type=float,
        default=None,
        metavar="MM",
        help="slice spacing in mm (default: spread over the anatomy)",
    )
    p.add_argument(
        "--position-jitter",
        type=float,
        default=float(_env("POSITION_JITTER", 0.0)),
        metavar="MM",
        help="place the patient up to MM off the isocentre along each axis (default 0)",
    )
    p.add_argument(
        "--noise", type=float, default=float(_env("NOISE", 1.0)), help="noise scale, 0 for noiseless"
    )
    p.add_argument("--no-localizer", action="store_true", help="omit the localizer series")
    p.add_argument(
        "--no-dose-report", action="store_true", help="omit the dose report / exam summary screen capture"
    )
    p.add_argument("--no-oblique", action="store_true", help="omit the oblique reformat")
    p.add_argument("--mip", action="store_true", help="add a thick-slab MIP (derived) series")
    p.add_argument(
        "--blank-descriptions",
        type=int,
        default=1,
        metavar="N",
        help="view series written without SeriesDescription",
    )
    p.add_argument("--strip-descriptions", action="store_true", help="write no SeriesDescription at all")
    p.add_argument(
        "--enhanced-mr", action="store_true", help="write MR views as Enhanced MR multi-frame instances"
    )
    p.add_argument(
        "--dataset",
        type=int,
        default=None,
        metavar="N",
        help="write N varied studies and dataset.jsonl instead of one study",
    )
    p.add_argument(
        "--finding-probability", type=float, default=0.4, help="dataset: chance of each finding per study"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def _summary(truth: StudyTruth) -> dict[str, Any]:
    return {
        "study_instance_uid": truth.study_instance_uid,
        "modality": truth.modality,
        "series": [
            {
                "folder": s.folder,
                "role": s.role,
                "reason": s.exclusion_reason,
                "description": s.series_description,
                "instances": s.n_instances,
            }
            for s in truth.series
        ],
        "findings": [f.key for f in truth.findings if f.present],
    }


def run(args: argparse.Namespace) -> int:
    """Execute parsed arguments; raises :class:`PhantomError` on a bad request."""
    if args.dataset is not None:
        modalities = (args.modality,) if args.modality else ("CT", "MR")
        truths = write_dataset(
            args.out_dir,
            args.dataset,
            seed=args.seed,
            modalities=modalities,
            matrix=args.matrix,
            slices=args.slices,
            finding_probability=args.finding_probability,
            planes=args.planes,
            phases=args.phases,
            sequences=args.sequences,
            position_jitter_mm=args.position_jitter,
        )
        if args.json:
            print(json.dumps({"studies": len(truths), "out_dir": args.out_dir}))
        else:
            positives = sum(sum(t.labels.values()) for t in truths)
            print(f"wrote {len(truths)} studies ({positives} findings) and dataset.jsonl to {args.out_dir}")
        return 0
    spec = PhantomSpec(
        modality=args.modality or "CT",
        planes=tuple(args.planes),
        phases=tuple(args.phases),
        sequences=tuple(args.sequences),
        b_values=tuple(args.b_values),
        findings=tuple(parse_finding(f) for f in args.findings),
        seed=args.seed,
        matrix=args.matrix,
        slices=args.slices,
        slice_spacing_mm=args.slice_spacing,
        position_jitter_mm=args.position_jitter,
        noise=args.noise,
        include_localizer=not args.no_localizer,
        include_dose_report=not args.no_dose_report,
        include_oblique=not args.no_oblique,
        include_mip=args.mip,
        blank_description_series=args.blank_descriptions,
        strip_descriptions=args.strip_descriptions,
        enhanced_mr=args.enhanced_mr,
    )
    truth = write_study(spec, args.out_dir)
    summary = _summary(truth)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    instances = sum(s.n_instances for s in truth.series)
    print(f"wrote {len(truth.series)} series ({instances} instances) to {args.out_dir}")
    for s in truth.series:
        why = f" ({s.exclusion_reason})" if s.exclusion_reason else ""
        print(f"  {s.folder:<28} {s.role}{why:<17} {s.series_description or '-'}")
    print("findings: " + (", ".join(summary["findings"]) or "none"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad request, 1 I/O failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PhantomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out_dir}: {exc}", file=sys.stderr)
        return 1
