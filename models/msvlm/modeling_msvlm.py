"""MS-VLM ("Read Like a Radiologist"): slice encoder + Z-former + Perceiver bridge + LM.

Each slice is encoded on its own by a 2D ViT (its CLS token after the final layer norm, plus
with `slice_pooling` "cls_max" the maximum over its patch tokens), in
chunks of `config.slice_chunk_size`, so inference memory depends on the chunk and not on the
study. (Under autograd every chunk's activations are kept for the backward pass; training
either caches slice features or checkpoints the ViT.) The Z-former then reads the slice
embeddings of all views of the study as one sequence.

The pieces are exposed separately for the training stages:
  * `encode_slices` (stage 0 DINO works on `vision_model` directly; later stages cache its
    output), `encode_views`, `pack_views` + `zformer` (stage 1 masked embedding modelling),
  * `forward(slice_features=...)` runs everything after the slice encoder (stages 2-3).
"""

from __future__ import annotations

import torch
from transformers import ViTModel
from transformers import initialization as init

from . import laterality
from .bridge import NO_SITE_LOGIT
from .configuration_msvlm import MsVlmConfig
from .conv_stem import ConvStem
from .report_model import MsVlmOutput, ReportModelBase, VisualEncoding
from .zformer import ZFormer, pack_views


class MsVlmForReportGeneration(ReportModelBase):
    """The full MS-VLM; see the module docstring for the data flow."""

    config: MsVlmConfig
    config_class = MsVlmConfig
    # Weights saved before the Z-former standardised its inputs lack these buffers; they load
    # as the identity (see `_init_weights`), which is what those weights were trained with.
    _keys_to_ignore_on_load_missing = [r"zformer\.input_(mean|scale)"]

    def __init__(self, config: MsVlmConfig) -> None:
        super().__init__(config)
        assert config.view_vocabulary is not None
        self.vision_model = ViTModel(config.vision, add_pooling_layer=False)
        if config.vision_stem == "conv":
            vision = config.vision
            # ViT types the projection as Conv2d; the stem maps the same shapes (see ConvStem)
            self.vision_model.embeddings.patch_embeddings.projection = ConvStem(  # type: ignore[assignment]
                vision.num_channels, vision.hidden_size, config.patch_size
            )
        self.zformer = ZFormer(
            config=config.zformer,
            input_size=config.vision.hidden_size,
            num_view_ids=len(config.view_vocabulary) + 1,
        )
        self._build_report_modules(config)
        assert config.finding_labels is not None
        #: scores each patch token for each finding (stage 0b's token loss trains it); only kept
        #: to read a finding's side (`sided_sites`)
        self.token_head = (
            torch.nn.Linear(config.vision.hidden_size, len(config.finding_labels))
            if config.token_side_findings
            else None
        )
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ZFormer):
            init.normal_(module.mask_embedding, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.input_mean)
            init.ones_(module.input_scale)

    # --- slice encoder ---------------------------------------------------------------------

    def slice_embedding(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, 1 + patches, D) final-norm ViT states -> (N, D) slice embeddings (`slice_pooling`).

        Always a new tensor: a [:, 0] view would keep the chunk's whole output alive.
        """
        if self.config.slice_pooling == "cls_max":
            return hidden[:, 0] + hidden[:, 1:].amax(dim=1)
        return hidden[:, 0].clone()

    def _slice_embeddings(self, slices: torch.Tensor) -> torch.Tensor:
        return self.slice_embedding(self.vision_model(pixel_values=slices).last_hidden_state)

    def encode_slices(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) slices -> (N, D_vision) slice embeddings, `slice_chunk_size` at a time."""
        chunks = pixel_values.split(self.config.slice_chunk_size)
        if not chunks:
            return pixel_values.new_zeros((0, self.config.vision.hidden_size))
        return torch.cat([self._slice_embeddings(chunk) for chunk in chunks], dim=0)

    def encode_views(self, pixel_values: torch.Tensor, slice_mask: torch.Tensor) -> torch.Tensor:
        """(B, V, Z, 3, S, S) padded pixels -> (B, V, Z, D_vision); padding slices are not encoded."""
        return self.encode_views_with_tokens(pixel_values, slice_mask)[0]

    def encode_views_with_tokens(
        self, pixel_values: torch.Tensor, slice_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Slice embeddings and, with a token head, each slice's best token logit per finding
        in each half of the slice (`laterality.token_halves`; -inf on padding) and the token
        that scores it highest (`laterality.best_tokens`; 0 on padding).

        Valid slices are gathered one chunk at a time, so no second copy of the study's
        pixels is made on the device.
        """
        mask = slice_mask.to(torch.bool)
        flat_pixels = pixel_values.flatten(0, 2)
        valid = mask.flatten().nonzero().squeeze(1)
        width = self.config.vision.hidden_size
        out = flat_pixels.new_zeros((flat_pixels.shape[0], width), dtype=self.vision_model.dtype)
        halves = best = None
        if self.token_head is not None:
            labels = self.token_head.out_features
            halves = flat_pixels.new_full((flat_pixels.shape[0], labels, 4), -torch.inf, dtype=torch.float32)
            best = torch.zeros((flat_pixels.shape[0], labels), dtype=torch.long, device=flat_pixels.device)
        for index in valid.split(self.config.slice_chunk_size):
            slices = flat_pixels[index]
            states = self.vision_model(pixel_values=slices).last_hidden_state
            out.index_copy_(0, index, self.slice_embedding(states).to(out.dtype))
            if self.token_head is not None and halves is not None and best is not None:
                token_logits = self.token_head(states[:, 1:])
                halves.index_copy_(0, index, laterality.token_halves(token_logits, slices))
                best.index_copy_(0, index, laterality.best_tokens(token_logits))
        grid = mask.shape
        if halves is None or best is None:
            return out.view(*grid, width), None, None
        return out.view(*grid, width), halves.view(*grid, -1, 4), best.view(*grid, -1)

    # --- Z-former --------------------------------------------------------------------------

    def encode_study(
        self,
        *,
        pixel_values: torch.Tensor | None = None,
        slice_mask: torch.Tensor,
        view_ids: torch.Tensor,
        slice_features: torch.Tensor | None = None,
    ) -> VisualEncoding:
        """Pixels or precomputed (B, V, Z, D_vision) slice features -> Z-former tokens."""
        if (pixel_values is None) == (slice_features is None):
            raise ValueError("pass exactly one of pixel_values and slice_features")
        halves = best = None
        if slice_features is None:
            assert pixel_values is not None
            slice_features, halves, best = self.encode_views_with_tokens(pixel_values, slice_mask)
        packed = pack_views(slice_features, slice_mask, view_ids)
        output = self.zformer(packed.features, packed.view_ids, packed.positions, packed.mask)
        return VisualEncoding(
            tokens=output.last_hidden_state, mask=packed.mask, token_halves=halves, best_tokens=best
        )

    def key_slices(self, encoding: VisualEncoding) -> torch.Tensor | None:
        """(B, F, 3): per finding with sites (`config.finding_sites`: the model places it), the
        (view, slice) whose best patch token scores it highest, and that token, where it shows
        it (logit at least `laterality.KEY_SLICE_LOGIT`); -1s elsewhere. None without a token head.

        Why: a radiologist reading the report wants to see the finding, and the token that
        shows it says on which image. On the demo's held-out phantoms, the slice found this way
        for a finding the model called was one the answer key says shows it for 18 of 20
        nodules (the other two in the partial-volume band), 15 of 15 effusions, 34 of 35 node
        conglomerates, 5 of 5 liver lesions and 8 of 11 rectal lesions (README "The image that
        shows it").
        """
        if encoding.token_halves is None or encoding.best_tokens is None:
            return None
        placed = torch.tensor(
            [bool(self.config.sites_of(label)) for label in self.config.finding_labels or []],
            device=encoding.token_halves.device,
        )
        return laterality.key_slices(encoding.token_halves, encoding.best_tokens, placed)

    def sided_sites(
        self, encoding: VisualEncoding, site_logits: torch.Tensor, orientations: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For `config.token_side_findings`, only the sites on the side of the body where the
        token head finds the finding keep their logits (`laterality`); the rest are as given."""
        if encoding.token_halves is None:
            return site_logits, None
        labels = list(self.config.finding_labels or [])
        read = {labels.index(key) for key in self.config.token_side_findings or []}
        selected = torch.tensor([j in read for j in range(len(labels))], device=site_logits.device)
        sides_of_sites = laterality.site_sides(
            [self.config.sites_of(label) for label in labels], read, site_logits.shape[-1]
        )
        bilateral = (sides_of_sites == laterality.BOTH_SIDES).any(dim=-1)
        finding_sides = laterality.sides(
            encoding.token_halves, orientations.to(site_logits.device), selected, bilateral
        )
        constrained = laterality.constrain_sites(site_logits, finding_sides, sides_of_sites, NO_SITE_LOGIT)
        return constrained, finding_sides

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        slice_mask: torch.Tensor | None = None,
        view_ids: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        findings_labels: torch.Tensor | None = None,
        site_labels: torch.Tensor | None = None,
        slice_features: torch.Tensor | None = None,
    ) -> MsVlmOutput:
        """Training/evaluation forward.

        pixel_values (B, V, Z, 3, S, S) or slice_features (B, V, Z, D_vision); slice_mask
        (B, V, Z) bool; view_ids (B, V); input_ids/attention_mask/labels (B, T) as made by
        `MsVlmProcessor`; findings_labels (B, F) with 1/0 and -1 for "not annotated"; site_labels
        (B, F) the index of each finding's site in `config.finding_sites`, -1 unknown.
        """
        if slice_mask is None or view_ids is None:
            raise ValueError("slice_mask and view_ids are required")
        encoding = self.encode_study(
            pixel_values=pixel_values, slice_mask=slice_mask, view_ids=view_ids, slice_features=slice_features
        )
        return self.forward_from_encoding(
            encoding,
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            findings_labels=findings_labels,
            site_labels=site_labels,
        )
