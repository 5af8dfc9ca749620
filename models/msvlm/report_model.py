"""What MS-VLM and the 3D-patch baseline share: bridge, language model, findings head, losses,
generation and the typed outputs.

A subclass only says how a batch of studies becomes a padded sequence of visual tokens
(`encode_study`); everything after that is here, so a comparison between the two models
changes the encoder and nothing else.

Sequence layout fed to the LM (as `inputs_embeds`):
    [num_latents visual tokens][finding tokens, if configured][BOS prompt ...][report ... EOS][pad]
Training batches are right-padded, generation batches left-padded in the text part; position
ids are computed from the attention mask in both cases, so a study gets the same positions
whether or not it shares a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .bridge import (
    FindingsHead,
    FindingsPrompt,
    PerceiverResampler,
    SiteHead,
    VisualBridge,
    findings_loss,
    site_loss,
)
from .configuration_msvlm import ReportModelConfig

IGNORE_INDEX = -100


@dataclass(frozen=True)
class VisualEncoding:
    """Encoder output of a batch of studies: tokens (B, L, D) and their mask (B, L) bool."""

    tokens: torch.Tensor
    mask: torch.Tensor
    #: with a token head, from pixels only: per view, slice and finding the best patch token's
    #: logit in each half of the slice (B, V, Z, F, 4), as `laterality.token_halves` gives them
    token_halves: torch.Tensor | None = None
    #: with `token_halves`: per view, slice and finding the patch token that scores it highest
    #: (B, V, Z, F), as `laterality.best_tokens` gives them
    best_tokens: torch.Tensor | None = None


@dataclass
class MsVlmOutput(ModelOutput):
    """Forward output.

    loss: lm_loss + findings_loss_weight * findings_loss + site_loss_weight * site_loss
        (whichever are available).
    logits: LM logits over the whole sequence (visual + text), (B, K + T, vocab).
    findings_logits: (B, num_findings), before the sigmoid.
    site_logits: (B, num_findings, widest site list), before the softmax, with a site head.
    visual_tokens: the embeddings fed to the LM before the prompt, (B, K (+ F), D_lm): the
        bridge output, then the finding tokens when `config.findings_tokens`.
    """

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    findings_loss: torch.Tensor | None = None
    site_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    findings_logits: torch.Tensor | None = None
    site_logits: torch.Tensor | None = None
    visual_tokens: torch.Tensor | None = None


@dataclass
class MsVlmGenerationOutput(ModelOutput):
    """sequences: generated token ids only (B, <= max_new_tokens); findings_logits (B, F);
    site_logits (B, F, S) with a site head; finding_sides (B, F) the side each finding was read
    on from the images (`laterality.sides`: 0 right, 1 left, 2 both, -1 not read), where one was;
    key_slices (B, F, 3) the (view, slice) and patch token that show each finding best
    (`key_slices`; -1s where none does), with a token head."""

    sequences: torch.Tensor | None = None
    findings_logits: torch.Tensor | None = None
    site_logits: torch.Tensor | None = None
    finding_sides: torch.Tensor | None = None
    key_slices: torch.Tensor | None = None


class ReportModelBase(PreTrainedModel):
    """Base of the report generation models; subclasses implement `encode_study`."""

    config: ReportModelConfig
    base_model_prefix = ""
    main_input_name = "pixel_values"
    _supports_sdpa = True

    def _build_report_modules(self, config: ReportModelConfig) -> None:
        """Create bridge, findings head and LM; called by subclasses after their encoder."""
        assert config.finding_labels is not None
        self.bridge = VisualBridge(
            visual_hidden_size=config.visual_hidden_size,
            resampler_hidden_size=config.resampler_hidden_size,
            lm_hidden_size=config.text.hidden_size,
            num_latents=config.num_latents,
            num_layers=config.resampler_layers,
            num_heads=config.resampler_heads,
            eps=config.layer_norm_eps,
        )
        self.findings_head = FindingsHead(
            hidden_size=config.visual_hidden_size,
            num_labels=len(config.finding_labels),
            pooling=config.findings_pooling,
            eps=config.layer_norm_eps,
        )
        site_counts = [len(config.sites_of(label)) for label in config.finding_labels]
        self.site_head = (
            SiteHead(hidden_size=config.visual_hidden_size, site_counts=site_counts)
            if any(site_counts)
            else None
        )
        self.findings_prompt = (
            FindingsPrompt(
                num_labels=len(config.finding_labels),
                lm_hidden_size=config.text.hidden_size,
                max_sites=max(site_counts),
            )
            if config.findings_tokens
            else None
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text)

    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PerceiverResampler):
            init.normal_(module.latents, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, FindingsPrompt):
            init.normal_(module.present, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.absent, mean=0.0, std=self.config.initializer_range)
            if module.site is not None:
                init.normal_(module.site, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, SiteHead):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def encode_study(
        self, *, pixel_values: torch.Tensor, slice_mask: torch.Tensor, view_ids: torch.Tensor
    ) -> VisualEncoding:
        """(B, V, Z, 3, S, S) pixels, (B, V, Z) slice mask, (B, V) view ids -> visual tokens."""
        raise NotImplementedError

    def heads(self, encoding: VisualEncoding) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The findings head's logits (B, F) and, with a site head, the site logits (B, F, S)."""
        pooled = self.findings_head.pooled(encoding.tokens, encoding.mask)
        findings_logits = self.findings_head.classify(pooled)
        site_logits = self.site_head(pooled) if self.site_head is not None else None
        return findings_logits, site_logits

    def prefix_tokens(
        self,
        encoding: VisualEncoding,
        findings_logits: torch.Tensor,
        findings_labels: torch.Tensor | None = None,
        site_logits: torch.Tensor | None = None,
        site_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The LM's input embeddings before the prompt: bridge output, then finding tokens.

        The finding tokens take the study's labels where `findings_labels` knows them (teacher
        forcing, in training) and the head's call (`findings_present`) elsewhere; the head is
        not trained through them (its own loss trains it). Why the call and not the
        probability: training feeds the LM labels of 0 or 1, so a probability near the
        threshold would be an input it never saw, and the narrative could then contradict
        the coded finding the SR carries beside it (on the demo's held-out phantoms, 3.4% of
        study-finding pairs with the probability, 0.6% with the call). Sites likewise: the
        study's (`site_labels`, -1 unknown) where known, the site head's call elsewhere.
        """
        visual_tokens = self.bridge(encoding.tokens, encoding.mask)
        if self.findings_prompt is None:
            return visual_tokens
        calls = self.findings_present(findings_logits).float()
        if findings_labels is not None:
            known = findings_labels >= 0
            calls = torch.where(known, findings_labels.float(), calls)
        sites = None
        if self.site_head is not None and site_logits is not None:
            sites = self.site_head.calls(site_logits)
            if site_labels is not None:
                sites = torch.where(site_labels >= 0, site_labels, sites)
        finding_tokens = self.findings_prompt(calls, sites).to(visual_tokens.dtype)
        return torch.cat([visual_tokens, finding_tokens], dim=1)

    def sided_sites(
        self, encoding: VisualEncoding, site_logits: torch.Tensor, orientations: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The site logits with the sides the images show enforced, and those sides (B, F);
        a model that reads no side from its images (this base) returns them as they are."""
        return site_logits, None

    def key_slices(self, encoding: VisualEncoding) -> torch.Tensor | None:
        """(B, F, 3): per finding the (view, slice) and patch token that show it best, read from
        the images; None for a model that reads no finding's place from them (this base)."""
        return None

    def findings_present(self, findings_logits: torch.Tensor) -> torch.Tensor:
        """(B, F) logits -> (B, F) booleans: probability at or above `config.findings_threshold`."""
        return torch.sigmoid(findings_logits.detach().float()) >= self.config.findings_threshold

    def _assemble(
        self,
        visual_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prefix the text with the visual tokens: embeddings, mask, position ids, labels."""
        text_embeds = self.language_model.get_input_embeddings()(input_ids)
        batch, num_visual = visual_tokens.shape[:2]
        embeds = torch.cat([visual_tokens.to(text_embeds.dtype), text_embeds], dim=1)
        visual_mask = attention_mask.new_ones((batch, num_visual))
        mask = torch.cat([visual_mask, attention_mask], dim=1)
        position_ids = (mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        if labels is not None:
            labels = torch.cat([labels.new_full((batch, num_visual), IGNORE_INDEX), labels], dim=1)
        return embeds, mask, position_ids, labels

    def forward_from_encoding(
        self,
        encoding: VisualEncoding,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        findings_labels: torch.Tensor | None = None,
        site_labels: torch.Tensor | None = None,
    ) -> MsVlmOutput:
        """Bridge + LM + findings and site heads + losses from an already computed `VisualEncoding`.

        Without `input_ids` only the heads run (classification-only training).
        """
        findings_logits, site_logits = self.heads(encoding)
        f_loss = findings_loss(findings_logits, findings_labels) if findings_labels is not None else None
        s_loss = (
            site_loss(site_logits, site_labels)
            if site_logits is not None and site_labels is not None
            else None
        )
        visual_tokens = self.prefix_tokens(
            encoding, findings_logits, findings_labels, site_logits, site_labels
        )
        logits = lm_loss = None
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            embeds, mask, position_ids, full_labels = self._assemble(
                visual_tokens, input_ids, attention_mask, labels
            )
            lm_output = self.language_model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=position_ids,
                labels=full_labels,
                use_cache=False,
            )
            logits, lm_loss = lm_output.logits, lm_output.loss
        weighted = [
            term
            for term in (
                lm_loss,
                None if f_loss is None else self.config.findings_loss_weight * f_loss,
                None if s_loss is None else self.config.site_loss_weight * s_loss,
            )
            if term is not None
        ]
        return MsVlmOutput(
            loss=sum(weighted[1:], weighted[0]) if weighted else None,
            lm_loss=lm_loss,
            findings_loss=f_loss,
            site_loss=s_loss,
            logits=logits,
            findings_logits=findings_logits,
            site_logits=site_logits,
            visual_tokens=visual_tokens,
        )

    def generation_config_for(
        self, *, max_new_tokens: int, num_beams: int, static_cache: bool = False
    ) -> GenerationConfig:
        """Deterministic decoding settings: greedy (num_beams=1) or beam search, no sampling.

        `static_cache` sizes one KV cache for the longest possible sequence (visual and finding
        tokens + `max_text_tokens` + `max_new_tokens`), so every study has the same cache shape and
        the decoding step transformers compiles on CUDA is compiled once, not per prompt.
        """
        if max_new_tokens < 1 or num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be >= 1")
        text = self.config.text
        cache: dict[str, object] = {}
        if static_cache:
            cache = {
                "cache_implementation": "static",
                "max_cache_len": self.config.num_prefix_tokens + self.config.max_text_tokens + max_new_tokens,
            }
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            early_stopping=num_beams > 1,
            bos_token_id=text.bos_token_id,
            eos_token_id=text.eos_token_id,
            pad_token_id=text.pad_token_id,
            **cache,
        )

    @torch.inference_mode()
    def generate_from_encoding(
        self,
        encoding: VisualEncoding,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int = 256,
        num_beams: int = 1,
        static_cache: bool = False,
        orientations: torch.Tensor | None = None,
    ) -> MsVlmGenerationOutput:
        """Generate report tokens after left-padded prompts; also returns the findings logits.

        With `orientations` (B, V, 6), each view's ImageOrientationPatient (zeros where unknown),
        the site logits are those `sided_sites` leaves, so the narrative, the returned logits and
        the SR built from them name the side the images show.
        """
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generation prompts must be left-padded (last position real in every row)")
        findings_logits, site_logits = self.heads(encoding)
        finding_sides = None
        if site_logits is not None and orientations is not None:
            site_logits, finding_sides = self.sided_sites(encoding, site_logits, orientations)
        visual_tokens = self.prefix_tokens(encoding, findings_logits, site_logits=site_logits)
        embeds, mask, _, _ = self._assemble(visual_tokens, input_ids, attention_mask, None)
        sequences = self.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            generation_config=self.generation_config_for(
                max_new_tokens=max_new_tokens, num_beams=num_beams, static_cache=static_cache
            ),
        )
        return MsVlmGenerationOutput(
            sequences=sequences,
            findings_logits=findings_logits,
            site_logits=site_logits,
            finding_sides=finding_sides,
            key_slices=self.key_slices(encoding),
        )

    @torch.inference_mode()
    def generate(
        self,
        *,
        pixel_values: torch.Tensor,
        slice_mask: torch.Tensor,
        view_ids: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int = 256,
        num_beams: int = 1,
        static_cache: bool = False,
        orientations: torch.Tensor | None = None,
    ) -> MsVlmGenerationOutput:
        """Encode the studies once, then decode the reports and read the findings head."""
        encoding = self.encode_study(pixel_values=pixel_values, slice_mask=slice_mask, view_ids=view_ids)
        return self.generate_from_encoding(
            encoding,
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            static_cache=static_cache,
            orientations=orientations,
        )
