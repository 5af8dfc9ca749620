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
        weights = self._weights(tokens, mask).to(tokens.dtype)  # (B, L, S)
        pooled = torch.einsum("bls,bld->bsd", weights, tokens)
        return pooled.squeeze(1) if self.pooling == "attention" else pooled

    def pooled(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The normalised pooled vectors the read-out (and the site head) sees."""
        return self.norm(self.pool(tokens, mask))

    def attention(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, num_labels) per-finding pooling weights (each column sums to 1 over the valid tokens).

        Training supervises them (stage 3a): the site is read from the pooled vector, so that
        vector must come from the slices that show the finding.
        """
        if self.pooling != "per_finding":
            raise ValueError("per-finding attention needs findings_pooling 'per_finding'")
        return self._weights(tokens, mask)

    def _weights(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert self.attention_score is not None
        scores = self.attention_score(tokens).float().masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        return torch.softmax(scores, dim=1).nan_to_num(0.0)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled vectors -> (B, num_labels) logits."""
        if self.pooling != "per_finding":
            return self.classifier(pooled)
        return (pooled * self.classifier.weight).sum(dim=-1) + self.classifier.bias

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pooled(tokens, mask))


#: the logit of a site a finding does not have (finite, so a softmax over a finding without
#: sites stays defined; such rows are never read)
NO_SITE_LOGIT = -1e4


class SiteHead(nn.Module):
    """Where each finding is: per finding with sites, a linear read-out of its pooled vector.

    Why its own head and not the narrative: a site named by the language model alone was a
    guess (on the demo's held-out phantoms it put 21 of 60 named findings at their planted
    site, a guess scores 0.34). A head trained on the sites the reference reports state gives
    a call with a probability that the finding token, and so the narrative, and the SR's
    coded Finding Site can share.
    """

    def __init__(self, *, hidden_size: int, site_counts: list[int]) -> None:
        super().__init__()
        self.site_counts = list(site_counts)
        self.weight = nn.Parameter(torch.zeros(len(site_counts), max(site_counts), hidden_size))
        self.bias = nn.Parameter(torch.zeros(len(site_counts), max(site_counts)))

    def valid(self) -> torch.Tensor:
        """(num_labels, widest) True where finding j has site s (computed, not a buffer: nothing
        for `from_pretrained` to leave uninitialised)."""
        counts = torch.tensor(self.site_counts, device=self.bias.device)
        return torch.arange(self.bias.shape[1], device=self.bias.device) < counts.unsqueeze(-1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, num_labels, D) per-finding pooled vectors -> (B, num_labels, widest) site logits."""
        logits = torch.einsum("bfd,fsd->bfs", pooled.float(), self.weight.float()) + self.bias.float()
        return logits.masked_fill(~self.valid(), NO_SITE_LOGIT)

    def calls(self, site_logits: torch.Tensor) -> torch.Tensor:
        """(B, F, S) logits -> (B, F) index of the most probable site, -1 for findings without sites."""
        best = site_logits.detach().argmax(dim=-1)
        return torch.where(self.valid().any(dim=-1), best, torch.full_like(best, -1))


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

    def __init__(self, *, num_labels: int, lm_hidden_size: int, max_sites: int = 0) -> None:
        super().__init__()
        self.present = nn.Parameter(torch.zeros(num_labels, lm_hidden_size))
        self.absent = nn.Parameter(torch.zeros(num_labels, lm_hidden_size))
        self.site = nn.Parameter(torch.zeros(num_labels, max_sites, lm_hidden_size)) if max_sites else None

    def forward(self, values: torch.Tensor, sites: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F) values in [0, 1] and (B, F) site indices (-1: none) -> (B, F, D_lm) embeddings.

        A present finding's token also carries its site's embedding, so the narrative names the
        site the site head called (the reference's, in training).
        """
        v = values.to(self.present.dtype).unsqueeze(-1)
        tokens = v * self.present + (1 - v) * self.absent
        if self.site is None or sites is None:
            return tokens
        known = (sites >= 0).unsqueeze(-1)
        index = sites.clamp(min=0)
        site = self.site[torch.arange(self.site.shape[0], device=index.device), index]  # (B, F, D)
        return tokens + v * known * site.to(tokens.dtype)


def findings_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over known labels; a target < 0 means "not annotated" and is skipped.

    Reports rarely state every finding, so unannotated entries must not count as negatives.
    """
    known = targets >= 0
    losses = F.binary_cross_entropy_with_logits(
        logits.float(), targets.clamp(min=0).float(), reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1)


def site_loss(site_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the (study, finding) pairs whose site is known (`targets` >= 0)."""
    known = targets >= 0
    if not bool(known.any()):
        return site_logits.sum() * 0.0
    return F.cross_entropy(site_logits[known].float(), targets[known])


def attention_loss(weights: torch.Tensor, slice_targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Minus the log of each located finding's pooling weight on the tokens that show it.

    weights (B, L, F) from `FindingsHead.attention`; slice_targets (B, L, F) per token 1 shows,
    0 does not, -1 unknown; labels (B, F). Only present findings that the targets locate (some
    tokens show them, some are known not to) count: a diffuse finding has no slices to prefer.
    """
    shows = slice_targets == 1
    located = shows.any(dim=1) & (slice_targets == 0).any(dim=1) & (labels == 1)
    if not bool(located.any()):
        return weights.sum() * 0.0
    mass = (weights.float() * shows).sum(dim=1)
    return -torch.log(mass[located] + 1e-6).mean()
