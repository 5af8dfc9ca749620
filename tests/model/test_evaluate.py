"""models.evaluate and its metrics: BLEU, ROUGE-L, METEOR, clinical efficacy, AUC, the labeller."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from models import evaluate
from models.evaluate import (
    head_f1_by_threshold,
    narrative_agreement,
    narrative_sites,
    site_agreement,
    truth_sites,
)
from models.msvlm import MsVlmForReportGeneration, MsVlmProcessor, Placement, ReportGenerator, msvlm_preset
from models.training.data import make_phantoms, read_index
from models.training.labeller import extract_findings, stated_site
from models.training.metrics import (
    clinical_efficacy,
    corpus_bleu,
    macro_auc,
    meteor,
    meteor_jar,
    roc_auc,
    rouge_l,
)

pytestmark = pytest.mark.model

REPORT = "FINDINGS:\nThere is a 6 mm solid nodule in the right upper lobe.\nNo pleural effusion.\n"


def test_bleu_of_identical_text_is_one_and_of_disjoint_text_is_zero() -> None:
    assert corpus_bleu([REPORT], [[REPORT]]) == pytest.approx([1.0] * 4)
    assert corpus_bleu(["alpha beta gamma delta"], [["one two three four"]])[0] == pytest.approx(
        0.0, abs=1e-6
    )


def test_bleu_known_value() -> None:
    # 3 of 4 unigrams match, 1 of 3 bigrams ("the cat"), no trigram; same length: no brevity penalty.
    scores = corpus_bleu(["the cat sat down"], [["the cat is down"]])
    assert scores[0] == pytest.approx(0.75)
    assert scores[1] == pytest.approx((0.75 * (1 / 3)) ** 0.5)
    # a shorter hypothesis is penalised: exp(1 - 4/2)
    assert corpus_bleu(["the cat"], [["the cat is down"]])[0] == pytest.approx(
        pytest.approx(2.718281828 ** (1 - 2))
    )


def test_rouge_l() -> None:
    assert rouge_l([REPORT], [[REPORT]]) == pytest.approx(1.0)
    # LCS("a b c d", "a c d") = 3: P = 1, R = 3/4, F_beta with beta = 1.2
    p, r, beta = 1.0, 0.75, 1.2
    expected = (1 + beta**2) * p * r / (r + beta**2 * p)
    assert rouge_l(["a c d"], [["a b c d"]]) == pytest.approx(expected)


@pytest.mark.slow
@pytest.mark.skipif(meteor_jar() is None, reason="METEOR needs java and the pycocoevalcap package")
def test_meteor_runs_the_jar() -> None:
    same = meteor([REPORT, "no pleural effusion ."], [[REPORT], ["no pleural effusion ."]])
    other = meteor(["the heart is enlarged ."], [["no pleural effusion ."]])
    assert same is not None and other is not None
    assert same > 0.9 and other < 0.3


def test_labeller_handles_negation() -> None:
    labels = extract_findings(
        "The lungs are clear without nodules. No pleural effusion. There is moderate cardiomegaly. "
        "No focal liver lesion, but there is mediastinal lymphadenopathy."
    )
    assert labels == {
        "lung_nodule": 0,
        "pleural_effusion": 0,
        "cardiomegaly": 1,
        "liver_lesion": 0,
        "lymphadenopathy": 1,
        "rectal_lesion": 0,
    }
    assert extract_findings("A 29 mm high rectal mass is seen along the right wall.", ["rectal_lesion"]) == {
        "rectal_lesion": 1
    }
    assert extract_findings("The rectal wall is normal in thickness without a mass.", ["rectal_lesion"]) == {
        "rectal_lesion": 0
    }
    # generated text comes lower-cased on one line, with the impression numbered inline
    generated = (
        "findings: there is a small left pleural effusion. impression: 1. small left pleural effusion."
    )
    assert extract_findings(generated, ["pleural_effusion", "lung_nodule"]) == {
        "pleural_effusion": 1,
        "lung_nodule": 0,
    }


def test_labeller_reads_every_phantom_report_correctly(tmp_path: Path) -> None:
    make_phantoms(tmp_path, 4, seed=7, matrix=16, slices=8)
    for line in (tmp_path / "dataset.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert extract_findings(record["report"], record["labels"]) == record["labels"]


def test_every_phantom_report_names_each_finding_at_its_planted_site(tmp_path: Path) -> None:
    # 64 pixels: at 16 the phantoms leave out nodules and liver lesions no one could see
    make_phantoms(tmp_path, 24, seed=7, matrix=64, slices=8)
    entries = read_index(tmp_path)
    sites = [truth_sites(e) for e in entries]
    overall, per_label = site_agreement(sites, narrative_sites(sites, [e.report for e in entries]))
    assert overall == 1.0
    named = sum(int(v["named"]) for v in per_label.values())
    assert named == sum(len(s) for s in sites)  # every planted finding with a site was named
    # every finding with a site is among them (cardiomegaly has none)
    assert set(per_label) == {
        "lung_nodule",
        "pleural_effusion",
        "liver_lesion",
        "lymphadenopathy",
        "rectal_lesion",
    }


def test_site_agreement_counts_a_wrong_or_missing_site_as_wrong() -> None:
    lobes = ("right upper lobe", "right lower lobe", "left lower lobe")
    assert (
        stated_site("There is an 8 mm nodule in the left lower lobe.", "lung_nodule", lobes)
        == "left lower lobe"
    )
    assert stated_site("No pulmonary nodules. The right lower lobe is clear.", "lung_nodule", lobes) is None
    sides = ("right", "left", "bilateral")
    assert (
        stated_site("Small bilateral pleural effusions, left more than right.", "pleural_effusion", sides)
        == "bilateral"
    )
    truth = [
        {"lung_nodule": "right upper lobe"},
        {"lung_nodule": "right upper lobe", "pleural_effusion": "left"},
        {"pleural_effusion": "right"},
        {"lung_nodule": "left lower lobe"},
    ]
    texts = [
        "There is an 8 mm nodule in the right upper lobe.",
        "8 mm nodule in the left lower lobe. Small left pleural effusion.",
        "There is a pulmonary nodule.",  # effusion not named: not counted
        "A 5 mm pulmonary nodule.",  # named without a site: wrong
    ]
    overall, per_label = site_agreement(truth, narrative_sites(truth, texts))
    assert overall == pytest.approx(2 / 4)
    assert per_label["lung_nodule"] == {"named": 3, "right_site": 1, "agreement": pytest.approx(1 / 3)}
    assert per_label["pleural_effusion"] == {"named": 1, "right_site": 1, "agreement": 1.0}
    assert site_agreement([{}], narrative_sites([{}], ["Nothing."])) == (None, {})
    # the site head's calls count the same way: only findings it called present are named
    head = [
        {"lung_nodule": "right upper lobe"},
        {"lung_nodule": "left lower lobe"},
        {},
        {"lung_nodule": "left lower lobe"},
    ]
    overall, per_label = site_agreement(truth, head)
    assert overall == pytest.approx(2 / 3)
    assert per_label == {"lung_nodule": {"named": 3, "right_site": 2, "agreement": pytest.approx(2 / 3)}}


def test_head_f1_by_threshold_finds_the_operating_point() -> None:
    truths = [{"a": 1, "b": 0}, {"a": 1, "b": 1}, {"a": 0, "b": 0}]
    probabilities = [{"a": 0.4, "b": 0.1}, {"a": 0.8, "b": 0.35}, {"a": 0.2, "b": 0.3}]
    by_threshold = head_f1_by_threshold(truths, probabilities)
    assert by_threshold["0.50"] == pytest.approx(2 / 4)  # one of three positives found, no false call
    # at 0.35 all three positives are called and no negative; at 0.40 the "b" at 0.35 is lost
    assert by_threshold["0.35"] == 1.0
    assert by_threshold["0.40"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert max(by_threshold, key=by_threshold.__getitem__) == "0.35"
    assert by_threshold["0.05"] == pytest.approx(2 * 3 / (2 * 3 + 3))  # everything called


def test_clinical_efficacy_on_hand_made_labels() -> None:
    truth = [{"a": 1, "b": 0}, {"a": 0, "b": 1}, {"a": 1}]
    predicted = [{"a": 1, "b": 1}, {"a": 0, "b": 0}, {"a": 1, "c": 1}]
    ce = clinical_efficacy(truth, predicted)
    # tp = 2 (a, a), fp = 1 (b in study 0), fn = 1 (b in study 1); "c" is not defined for study 2
    assert ce.precision == pytest.approx(2 / 3)
    assert ce.recall == pytest.approx(2 / 3)
    assert ce.f1 == pytest.approx(2 / 3)
    assert ce.per_label["a"]["f1"] == pytest.approx(1.0) and ce.per_label["b"]["f1"] == 0.0
    assert ce.macro_f1 == pytest.approx(0.5)
    perfect = clinical_efficacy(truth, truth)
    assert (perfect.precision, perfect.recall, perfect.f1) == (1.0, 1.0, 1.0)


def test_narrative_agreement_counts_pairs_both_state() -> None:
    coded = [{"a": 1, "b": 0}, {"a": 0, "b": 1}]
    narrative = [{"a": 1, "b": 1}, {"a": 0}]  # study 1 does not state "b": not counted
    assert narrative_agreement(coded, narrative) == pytest.approx(2 / 3)
    assert narrative_agreement(coded, coded) == 1.0
    assert narrative_agreement(coded, [{}, {}]) is None


def test_auc() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 1, 1], [0.3, 0.2, 0.4]) == pytest.approx(0.5)
    assert roc_auc([1, 1], [0.3, 0.4]) is None
    mean, per_label = macro_auc(
        [{"a": 0, "b": 1}, {"a": 1, "b": 1}], [{"a": 0.2, "b": 0.1}, {"a": 0.7, "b": 0.9}]
    )
    assert per_label == {"a": 1.0} and mean == 1.0  # "b" has one class only: left out


def test_evaluate_cli_prints_one_json_object(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    config = msvlm_preset("tiny", vocab_size=len(tokenizer))
    torch.manual_seed(0)
    generator = ReportGenerator(
        model=MsVlmForReportGeneration(config),
        processor=MsVlmProcessor.from_model_config(config, tokenizer),
        placement=Placement.for_device("cpu"),
    )
    generator.save_pretrained(tmp_path / "model")
    make_phantoms(tmp_path / "data", 2, seed=3, matrix=16, slices=8)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaluate.main(
            [
                "--model",
                str(tmp_path / "model"),
                "--data",
                str(tmp_path / "data"),
                "--json",
                "--no-meteor",
                "--max-new-tokens",
                "4",
            ]
        )
    assert code == 0
    result = json.loads(out.getvalue())
    for key in (
        "bleu4",
        "meteor",
        "rouge_l",
        "ce_precision",
        "ce_recall",
        "ce_f1",
        "findings_auc",
        "narrative_agreement",
        "site_agreement",
        "n",
    ):
        assert key in result
    assert result["n"] == 2


@pytest.mark.parametrize("jitter", [0.0, 20.0])
def test_recall_ceiling_counts_the_planted_focal_findings(tmp_path: Path, jitter: float) -> None:
    make_phantoms(tmp_path, 6, seed=4, matrix=32, slices=12, position_jitter_mm=jitter)
    written = [json.loads((folder / "truth.json").read_text()) for folder in sorted(tmp_path.glob("0*"))]
    assert {truth["spec"]["position_jitter_mm"] for truth in written} == {jitter}
    truths = [truth["labels"] for truth in written]
    ceiling = evaluate.recall_ceiling(6, seed=4, matrix=32, slices=12, position_jitter_mm=jitter)
    assert ceiling, "six studies plant at least one focal finding"
    for key, row in ceiling.items():
        assert row["positives"] == sum(t.get(key) == 1 for t in truths)
        assert 0 <= row["detectable"] <= row["positives"]
        assert row["recall_ceiling"] == row["detectable"] / row["positives"]
        assert row["recall_ceiling"] == 1.0  # make_phantoms keeps only the findings its views show
