"""Fixtures for the model tests: tiny configs, a word-level tokenizer, synthetic studies."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from models.msvlm import (
    MsVlmConfig,
    MsVlmForReportGeneration,
    MsVlmProcessor,
    ProcessorSettings,
    ViewInput,
    build_word_tokenizer,
    msvlm_preset,
)

REPORTS = (
    "a 6 mm nodule in the right upper lobe .",
    "small left pleural effusion . heart size normal .",
    "no focal liver lesion . no lymphadenopathy .",
    "rectal wall thickening with enlarged mesorectal nodes .",
)

StudyFactory = Callable[..., list[ViewInput]]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """Tokenizer over the report corpus plus every prompt word of the tiny config."""
    settings = ProcessorSettings.from_model_config(msvlm_preset("tiny"))
    probe = MsVlmProcessor(tokenizer=build_word_tokenizer(["x"]), settings=settings)
    return build_word_tokenizer([*REPORTS, *probe.prompt_corpus()])


@pytest.fixture
def tiny_config(tokenizer: PreTrainedTokenizerFast) -> MsVlmConfig:
    return msvlm_preset("tiny", vocab_size=len(tokenizer))


@pytest.fixture
def tiny_model(tiny_config: MsVlmConfig) -> MsVlmForReportGeneration:
    torch.manual_seed(0)
    return MsVlmForReportGeneration(tiny_config).eval()


@pytest.fixture
def processor(tiny_config: MsVlmConfig, tokenizer: PreTrainedTokenizerFast) -> MsVlmProcessor:
    return MsVlmProcessor.from_model_config(tiny_config, tokenizer)


@pytest.fixture
def make_study() -> StudyFactory:
    """make_study([(modality, view_key, slices), ...], seed=0, size=(32, 32)) -> views."""

    def make(
        specs: list[tuple[str, str, int]], seed: int = 0, size: tuple[int, int] = (32, 32)
    ) -> list[ViewInput]:
        rng = np.random.default_rng(seed)
        views = []
        for modality, key, slices in specs:
            if modality == "CT":
                pixels = rng.normal(-300.0, 400.0, (slices, *size))
            else:
                pixels = rng.random((slices, *size))
            views.append(ViewInput(pixels=pixels.astype(np.float32), modality=modality, view_key=key))  # type: ignore[arg-type]
        return views

    return make
