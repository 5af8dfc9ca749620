"""Bridge and findings head: masks are respected, shapes are fixed, no NaNs on empty input."""

from __future__ import annotations

import pytest
import torch

from models.msvlm.bridge import FindingsHead, VisualBridge, findings_loss

pytestmark = pytest.mark.model


def _bridge() -> VisualBridge:
    torch.manual_seed(0)
    return VisualBridge(
        visual_hidden_size=16,
        resampler_hidden_size=32,
        lm_hidden_size=24,
        num_latents=5,
        num_layers=2,
        num_heads=4,
        eps=1e-6,
    ).eval()


def test_resampler_output_is_fixed_size_and_ignores_padding() -> None:
    bridge = _bridge()
    tokens = torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False
    noisy = tokens.clone()
    noisy[1, 4:] = 1e3
    with torch.no_grad():
        clean, dirty = bridge(tokens, mask), bridge(noisy, mask)
        short = bridge(tokens[1:, :4], mask[1:, :4])
    assert clean.shape == (2, 5, 24)
    assert torch.allclose(clean[1], dirty[1], atol=1e-5)
    assert torch.allclose(clean[1], short[0], atol=1e-5)


def test_resampler_survives_a_fully_masked_study() -> None:
    with torch.no_grad():
        out = _bridge()(torch.randn(1, 3, 16), torch.zeros(1, 3, dtype=torch.bool))
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("pooling", ["mean", "attention", "per_finding"])
def test_findings_head_pools_only_valid_tokens(pooling: str) -> None:
    torch.manual_seed(0)
    head = FindingsHead(hidden_size=16, num_labels=3, pooling=pooling, eps=1e-6).eval()
    tokens = torch.randn(1, 6, 16)
    mask = torch.tensor([[True, True, True, False, False, False]])
    with torch.no_grad():
        padded = head(tokens, mask)
        trimmed = head(tokens[:, :3], mask[:, :3])
        empty = head(tokens, torch.zeros_like(mask))
    assert padded.shape == (1, 3)
    assert torch.allclose(padded, trimmed, atol=1e-5)
    assert bool(torch.isfinite(empty).all())
    with pytest.raises(ValueError, match="pooling"):
        FindingsHead(hidden_size=16, num_labels=3, pooling="max", eps=1e-6)


def test_per_finding_pooling_lets_each_finding_attend_to_its_own_token() -> None:
    """Token 0 carries finding 0's direction and token 1 finding 1's: with per-finding scores
    each logit reads its own token, where one shared softmax has to split its weight."""
    head = FindingsHead(hidden_size=4, num_labels=2, pooling="per_finding", eps=1e-6).eval()
    assert head.attention_score is not None
    tokens = torch.tensor([[[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        head.attention_score.weight.copy_(torch.tensor([[20.0, 0, 0, 0], [0, 0, 20.0, 0]]))
        head.attention_score.bias.zero_()
        head.classifier.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]]))
        head.classifier.bias.zero_()
        pooled = head.pool(tokens, mask)
        logits = head(tokens, mask)
    assert pooled.shape == (1, 2, 4)
    assert torch.allclose(pooled[0, 0], tokens[0, 0], atol=1e-6)
    assert torch.allclose(pooled[0, 1], tokens[0, 1], atol=1e-6)
    expected = torch.stack([head.norm(tokens[0, 0])[0], head.norm(tokens[0, 1])[2]])
    assert torch.allclose(logits[0], expected, atol=1e-5)


def test_findings_loss_skips_unannotated_labels() -> None:
    logits = torch.tensor([[2.0, -1.0, 50.0]])
    annotated = findings_loss(logits[:, :2], torch.tensor([[1.0, 0.0]]))
    with_unknown = findings_loss(logits, torch.tensor([[1.0, 0.0, -1.0]]))
    assert torch.allclose(annotated, with_unknown)
    assert findings_loss(logits, torch.full((1, 3), -1.0)) == 0
