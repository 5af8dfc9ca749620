"""Bridge from visual tokens to the language model, and the findings head.

Both MS-VLM (Z-former tokens) and the 3D-patch baseline (volume patch tokens) end in a
variable-length, padded token sequence; these modules turn it into a fixed number of LM
input embeddings and into per-finding logits. They are shared so that the comparison
between the two encoders changes only the encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_msvlm import FINDINGS_POOLINGS


class PerceiverBlock(nn.Module):
    """One cross-attention + feed-forward block of the resampler (pre-norm).

    Keys and values are the context tokens *and* the latents (as in Flamingo): the latents can
    keep their own information, and no attention row is ever fully masked, so a study whose
    tokens are all padding cannot produce NaNs.
    """

    def __init__(self, hidden_size: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_latents = nn.LayerNorm(hidden_size, eps=eps)
        self.norm_context = nn.LayerNorm(hidden_size, eps=eps)
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key_value = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm_ffn = nn.LayerNorm(hidden_size, eps=eps)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.GELU(),
            nn.Linear(4 * hidden_size, hidden_size),
        )

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(
        self, latents: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        """latents (B, K, D), context (B, L, D), context_mask (B, L) bool -> latents (B, K, D)."""
        normed_latents = self.norm_latents(latents)
        keys_in = torch.cat([self.norm_context(context), normed_latents], dim=1)
        key, value = self.key_value(keys_in).chunk(2, dim=-1)
        latent_mask = torch.ones(latents.shape[:2], dtype=torch.bool, device=latents.device)
        mask = torch.cat([context_mask.to(torch.bool), latent_mask], dim=1)[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            self._heads(self.query(normed_latents)), self._heads(key), self._heads(value), attn_mask=mask
        )
        attended = attended.transpose(1, 2).reshape(latents.shape)
        latents = latents + self.out(attended)
        return latents + self.ffn(self.norm_ffn(latents))


class PerceiverResampler(nn.Module):
    """A fixed number of learned latent queries that read a variable-length token sequence.

    The LM then sees `num_latents` tokens whatever the slice and view counts were, which keeps
    the prompt length (and the LM's cost) independent of the study size.
    """

    def __init__(
        self, *, num_latents: int, hidden_size: int, num_layers: int, num_heads: int, eps: float
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(num_latents, hidden_size))
        self.layers = nn.ModuleList(PerceiverBlock(hidden_size, num_heads, eps) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(context.dtype).unsqueeze(0).expand(context.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, context, context_mask)
        return self.norm(latents)


class VisualBridge(nn.Module):
    """linear -> Perceiver resampler -> linear into the LM's hidden size."""

    def __init__(
        self,
        *,
        visual_hidden_size: int,
        resampler_hidden_size: int,
        lm_hidden_size: int,
        num_latents: int,
        num_layers: int,
        num_heads: int,
        eps: float,
    ) -> None:
        super().__init__()
        self.input_projection = nn.Linear(visual_hidden_size, resampler_hidden_size)
        self.resampler = PerceiverResampler(
            num_latents=num_latents,
            hidden_size=resampler_hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            eps=eps,
        )
        self.output_projection = nn.Linear(resampler_hidden_size, lm_hidden_size)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, Dv), mask (B, L) -> LM input embeddings (B, num_latents, D_lm)."""
        return self.output_projection(self.resampler(self.input_projection(tokens), mask))


class FindingsHead(nn.Module):
    """Multi-label classifier over the configured findings from the pooled visual tokens.

    It reads the encoder output directly (not the LM), so findings are available even when
    the report text is not generated, and its loss trains the encoder with a dense signal.

    Pooling: "mean" over the valid tokens; "attention", one learned softmax over them shared by
    every finding; "per_finding", one softmax per finding, so each finding pools the slices that
    show it (a nodule on two slices of one view, cardiomegaly across many) instead of all
    findings competing for one pooled vector. Then a layer norm and, per finding, a linear read-out.
    """

    def __init__(self, *, hidden_size: int, num_labels: int, pooling: str, eps: float) -> None:
        super().__init__()
        if pooling not in FINDINGS_POOLINGS:
            raise ValueError(f"pooling must be one of {FINDINGS_POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        scores = {"mean": 0, "attention": 1, "per_finding": num_labels}[pooling]
        self.attention_score = nn.Linear(hidden_size, scores) if scores else None
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D), (B, L) -> (B, D) for mean and shared attention, (B, num_labels, D) per finding."""
        if self.attention_score is None:
            weights = mask.to(tokens.dtype).unsqueeze(-1)
            return (weights * tokens).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        scores = self.attention_score(tokens).float().masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0).to(tokens.dtype)  # (B, L, S)
        pooled = torch.einsum("bls,bld->bsd", weights, tokens)
        return pooled.squeeze(1) if self.pooling == "attention" else pooled

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(self.pool(tokens, mask))
        if self.pooling != "per_finding":
            return self.classifier(pooled)
        return (pooled * self.classifier.weight).sum(dim=-1) + self.classifier.bias


class FindingsPrompt(nn.Module):
    """One LM input embedding per finding: its "present" or its "absent" embedding.

    Token j is v_j * present_j + (1 - v_j) * absent_j for the finding's value v_j, 1 for
    present and 0 for absent (`ReportModelBase.prefix_tokens` gives the study's label in
    training, the findings head's call in generation).
    Why: the SR carries both the narrative and the coded findings; when the language model
    has to rediscover each finding from the visual tokens, the two can disagree (the report
    says "no nodule" under a coded nodule at 0.9). Fed the head's calls, the LM learns to
    state them; in training it is fed the study's labels where known (teacher forcing), so
    it learns to verbalise findings while the head learns to detect them.
    """

    def __init__(self, *, num_labels: int, lm_hidden_size: int) -> None:
        super().__init__()
        self.present = nn.Parameter(torch.zeros(num_labels, lm_hidden_size))
        self.absent = nn.Parameter(torch.zeros(num_labels, lm_hidden_size))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """(B, F) values in [0, 1] -> (B, F, D_lm) embeddings."""
        v = values.to(self.present.dtype).unsqueeze(-1)
        return v * self.present + (1 - v) * self.absent


def findings_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over known labels; a target < 0 means "not annotated" and is skipped.

    Reports rarely state every finding, so unannotated entries must not count as negatives.
    """
    known = targets >= 0
    losses = F.binary_cross_entropy_with_logits(
        logits.float(), targets.clamp(min=0).float(), reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1)
