"""Configuration of MS-VLM and the parts it shares with the 3D-patch baseline.

The config imports no torch of its own (transformers may), and it validates itself at
construction: a wrong hidden size or a duplicated label should fail when the config is
built, with a message naming the key, not as a shape error deep inside a forward pass.

`ReportModelConfig` holds everything the bridge, the language model, the findings head and
the processor need; `MsVlmConfig` adds the slice encoder (ViT) and the Z-former (BigBird).
The baseline (`models.baseline3d`) subclasses `ReportModelConfig` with a volume encoder
instead, so both models take the same processor inputs and share the same head code.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import ClassVar, Literal, get_args

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, BigBirdConfig, PreTrainedConfig, ViTConfig
from transformers.configuration_utils import SubConfigSpec

from .conv_stem import supports_patch_size

#: how the findings head pools the visual tokens (`bridge.FindingsHead`)
FindingsPooling = Literal["mean", "attention", "per_finding"]
FINDINGS_POOLINGS: tuple[str, ...] = get_args(FindingsPooling)
SlicePooling = Literal["cls", "cls_max"]
SLICE_POOLINGS: tuple[str, ...] = get_args(SlicePooling)

#: Lung, mediastinum and bone windows as (width, level) in HU, one per input channel.
DEFAULT_CT_WINDOWS: tuple[tuple[float, float], ...] = ((1500.0, -600.0), (400.0, 40.0), (2000.0, 500.0))

#: The demo vocabulary of findings; real deployments pass their own list.
DEFAULT_FINDING_LABELS: tuple[str, ...] = (
    "lung_nodule",
    "pleural_effusion",
    "cardiomegaly",
    "liver_lesion",
    "lymphadenopathy",
    "rectal_lesion",
)

# The node's grouping vocabulary (node/grouping.py, node/phase.py, node/sequence.py).
_CT_PHASES = ("non_contrast", "arterial", "venous", "delayed")
_MR_SEQUENCES = ("t1", "t1_post", "t2", "flair", "dwi", "adc", "other")
_PLANES = ("axial", "coronal", "sagittal")

#: View keys "MODALITY:plane:phase" known to the view embedding; anything else gets id 0.
DEFAULT_VIEW_VOCABULARY: tuple[str, ...] = tuple(
    [f"CT:{plane}:{phase}" for plane in _PLANES for phase in _CT_PHASES]
    + [f"MR:{plane}:{seq}" for plane in _PLANES for seq in _MR_SEQUENCES]
)

DEFAULT_PROMPT_TEMPLATE = "{modality} study . views : {views} . findings :"
_PROMPT_FIELDS = frozenset({"modality", "views"})


#: a site's side, by the first word of its name (`site_side`)
SIDES: tuple[str, ...] = ("right", "left")


def site_side(site: str) -> int | None:
    """0 for a site on the patient's right ("right upper lobe"), 1 on the left, None otherwise
    ("bilateral", "mediastinal")."""
    words = site.strip().casefold().split()
    return SIDES.index(words[0]) if words and words[0] in SIDES else None


class MsVlmConfigError(ValueError):
    """A model configuration that cannot work; the message names the offending key."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MsVlmConfigError(message)


def _check_unique_names(name: str, values: list[str]) -> None:
    _require(len(values) > 0, f"{name} must not be empty")
    for value in values:
        _require(isinstance(value, str) and value.strip() != "", f"{name} has an empty entry")
    folded = [v.strip().casefold() for v in values]
    duplicates = sorted({v for v in folded if folded.count(v) > 1})
    _require(not duplicates, f"{name} has duplicates (case-insensitive): {duplicates}")


def _check_transformer(name: str, hidden_size: int, num_heads: int, num_layers: int) -> None:
    _require(hidden_size > 0, f"{name}.hidden_size must be positive, got {hidden_size}")
    _require(num_layers > 0, f"{name}.num_hidden_layers must be positive, got {num_layers}")
    _require(
        num_heads > 0 and hidden_size % num_heads == 0,
        f"{name}.hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_heads})",
    )


@strict
class ReportModelConfig(PreTrainedConfig):
    """Shared part: language model, Perceiver bridge, findings head and processor settings.

    Not registered on its own; use `MsVlmConfig` or the baseline's config.
    """

    model_type = ""
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    text_config: dict | PreTrainedConfig | None = None
    view_vocabulary: list[str] | None = None
    finding_labels: list[str] | None = None
    #: the modalities each finding was trained to be assessed in (e.g. {"rectal_lesion": ["MR"]});
    #: a finding not listed applies to every modality. Why: the head scores every finding on
    #: every study, and a score for a rectal mass on a chest CT is noise the SR must not carry
    finding_modalities: dict[str, list[str]] | None = None
    num_latents: int = 32
    resampler_hidden_size: int = 768
    resampler_layers: int = 2
    resampler_heads: int = 8
    findings_pooling: FindingsPooling = "mean"
    findings_loss_weight: int | float = 1.0
    #: append one LM input token per finding after the visual tokens, made from the findings
    #: head's call at `findings_threshold` (`bridge.FindingsPrompt`), so the narrative states
    #: what the coded findings say; False is the paper's model (visual tokens only)
    findings_tokens: bool = False
    #: the operating point: a finding whose probability is at least this is called present,
    #: both in the SR's coded findings and in the finding token the LM reads
    findings_threshold: float = 0.5
    #: per finding, the sites a report can put it at (e.g. {"pleural_effusion": ["right", "left",
    #: "bilateral"]}); the site head (`bridge.SiteHead`) names one for each present finding, its
    #: call feeds that finding's token and the SR's Finding Site. Needs "per_finding" pooling:
    #: the site is read from the finding's own pooled vector. None: no site head
    finding_sites: dict[str, list[str]] | None = None
    site_loss_weight: int | float = 1.0
    image_size: int = 224
    max_slices_per_view: int = 256
    ct_windows: list[list[int | float]] | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_text_tokens: int = 512
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    #: Identity the node records with every job (read from config.json by node/modelinfo.py).
    model_name: str | None = None
    model_version: str | None = None

    def __post_init__(self, **kwargs: object) -> None:
        # Lists are filled here (not as field defaults) so that no instance shares a list.
        if self.view_vocabulary is None:
            self.view_vocabulary = list(DEFAULT_VIEW_VOCABULARY)
        if self.finding_labels is None:
            self.finding_labels = list(DEFAULT_FINDING_LABELS)
        if self.ct_windows is None:
            self.ct_windows = [list(w) for w in DEFAULT_CT_WINDOWS]
        super().__post_init__(**kwargs)
        self.check()

    @property
    def text(self) -> PreTrainedConfig:
        """`text_config` as a config object (the field also accepts a dict at construction)."""
        assert isinstance(self.text_config, PreTrainedConfig)
        return self.text_config

    @property
    def num_prefix_tokens(self) -> int:
        """LM input embeddings before the prompt: the visual tokens and any finding tokens."""
        assert self.finding_labels is not None
        return self.num_latents + (len(self.finding_labels) if self.findings_tokens else 0)

    def findings_for(self, modalities: Iterable[str]) -> list[str]:
        """The finding labels that apply to a study of these modalities, in vocabulary order."""
        assert self.finding_labels is not None
        present = {m.upper() for m in modalities}
        limits = self.finding_modalities or {}
        return [
            label
            for label in self.finding_labels
            if label not in limits or present & {m.upper() for m in limits[label]}
        ]

    @property
    def fixed_slices_per_view(self) -> int | None:
        """Slices every view is resampled to, or None to keep up to `max_slices_per_view`."""
        return None

    @property
    def visual_hidden_size(self) -> int:
        """Width of the visual tokens handed to the bridge and the findings head."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise `MsVlmConfigError` for the first inconsistent key (also run before saving)."""
        assert self.view_vocabulary is not None and self.finding_labels is not None
        assert self.ct_windows is not None
        _check_unique_names("view_vocabulary", self.view_vocabulary)
        _require(
            "other" not in {v.casefold() for v in self.view_vocabulary},
            "view_vocabulary must not contain 'other' (id 0 is reserved for unknown views)",
        )
        _check_unique_names("finding_labels", self.finding_labels)
        unknown = sorted(set(self.finding_modalities or {}) - set(self.finding_labels))
        _require(not unknown, f"finding_modalities names findings not in finding_labels: {unknown}")
        _require(self.num_latents > 0, f"num_latents must be positive, got {self.num_latents}")
        _check_transformer(
            "resampler", self.resampler_hidden_size, self.resampler_heads, self.resampler_layers
        )
        _require(
            self.findings_pooling in FINDINGS_POOLINGS,
            f"findings_pooling must be one of {FINDINGS_POOLINGS}, got {self.findings_pooling!r}",
        )
        _require(self.findings_loss_weight >= 0, "findings_loss_weight must be >= 0")
        self._check_sites()
        _require(
            0.0 < self.findings_threshold < 1.0,
            f"findings_threshold must lie strictly between 0 and 1, got {self.findings_threshold}",
        )
        _require(self.image_size > 0, f"image_size must be positive, got {self.image_size}")
        _require(self.max_slices_per_view > 0, "max_slices_per_view must be positive")
        _require(self.max_text_tokens > 1, "max_text_tokens must be at least 2")
        _require(
            len(self.ct_windows) == 3, "ct_windows needs exactly 3 (width, level) pairs, one per channel"
        )
        for window in self.ct_windows:
            _require(len(window) == 2 and window[0] > 0, f"ct_windows entry {window} is not (width>0, level)")
        fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt_template) if f is not None}
        _require(
            fields <= _PROMPT_FIELDS,
            f"prompt_template may only use {sorted(_PROMPT_FIELDS)}, got {sorted(fields)}",
        )
        text = self.text
        _check_transformer("text_config", text.hidden_size, text.num_attention_heads, text.num_hidden_layers)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            token_id = getattr(text, name, None)
            _require(
                isinstance(token_id, int) and 0 <= token_id < text.vocab_size,
                f"text_config.{name} must be a token id below vocab_size, got {token_id}",
            )
        _require(
            text.max_position_embeddings > self.num_prefix_tokens + 2,
            "text_config.max_position_embeddings leaves no room after the visual (and finding) tokens",
        )

    def _check_sites(self) -> None:
        if not self.finding_sites:
            return
        assert self.finding_labels is not None
        unknown = sorted(set(self.finding_sites) - set(self.finding_labels))
        _require(not unknown, f"finding_sites names findings not in finding_labels: {unknown}")
        _require(
            self.findings_pooling == "per_finding",
            "finding_sites needs findings_pooling 'per_finding' "
            "(a site is read from its finding's pooled vector)",
        )
        for key, sites in self.finding_sites.items():
            _require(len(sites) >= 2, f"finding_sites[{key!r}] needs at least two sites, got {sites}")
            _check_unique_names(f"finding_sites[{key!r}]", sites)
        _require(self.site_loss_weight >= 0, "site_loss_weight must be >= 0")

    def sites_of(self, label: str) -> list[str]:
        """The sites of finding `label` (empty when it has none)."""
        return list((self.finding_sites or {}).get(label, []))

    def validate_report_model(self) -> None:
        """Hook for transformers' strict validation, which runs again at save time."""
        self.check()


@strict
class MsVlmConfig(ReportModelConfig):
    """MS-VLM: ViT slice encoder -> BigBird Z-former over all views -> Perceiver -> LM.

    `zformer_config` is a BigBird config used with `inputs_embeds`: its position embeddings
    encode the slice index within a view, so `max_position_embeddings` bounds
    `max_slices_per_view`, not the total sequence length of all views.
    `zformer_config.attention_type == "block_sparse"` means "block-sparse when the sequence is
    long enough", the model picks full attention below BigBird's minimum length.
    """

    model_type = "msvlm"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        **ReportModelConfig.sub_configs_defaults,
        "vision_config": SubConfigSpec(config_class=ViTConfig),
        "zformer_config": SubConfigSpec(
            config_class=BigBirdConfig,
            init_kwargs={
                "vocab_size": 1,
                "type_vocab_size": 1,
                "max_position_embeddings": 256,
                "num_hidden_layers": 6,
                "block_size": 16,
                "num_random_blocks": 2,
                "pad_token_id": 0,
                "bos_token_id": None,
                "eos_token_id": None,
                "sep_token_id": None,
            },
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    zformer_config: dict | PreTrainedConfig | None = None
    slice_chunk_size: int = 64
    #: "patch": the ViT's linear patch embedding (loads published ViT weights); "conv": a small
    #: strided-convolution stem in its place (`conv_stem.ConvStem`), which sees findings of a few
    #: pixels that a linear embedding trained on little data misses
    vision_stem: Literal["patch", "conv"] = "patch"
    #: a slice's embedding: "cls", the CLS token after the final norm (the paper's); "cls_max",
    #: that plus the element-wise maximum over the patch tokens. Why: a finding of a few pixels
    #: lights up one patch token wherever it lies; the maximum passes it on whatever its place,
    #: where the CLS must learn to attend to every place it may be
    #: (`MsVlmForReportGeneration.slice_embedding`)
    slice_pooling: SlicePooling = "cls"
    #: findings whose site's side ("right ..." or "left ...") is read from the patch token that
    #: shows them, not from the site head: a linear head on the slice encoder's patch tokens
    #: (`token_head`, trained by stage 0b's token loss) scores every patch token, and the side
    #: of the body's midline whose best token scores higher, in patient coordinates from each
    #: view's ImageOrientationPatient, restricts the site head's choice to the sites on it. A
    #: site on neither side ("bilateral") is the finding on both: kept when each side's best
    #: token shows it, ruled out when one side alone does (`laterality.sides`).
    #: Why: the site head learnt where the training images put a finding, and put 6 of 22
    #: held-out nodules on the wrong side (README "Which side"). None or empty: no token head
    token_side_findings: list[str] | None = None

    def _check_token_sides(self) -> None:
        for key in self.token_side_findings or []:
            sites = self.sites_of(key)
            _require(bool(sites), f"token_side_findings names {key!r}, which has no finding_sites")
            # a sideless site ("bilateral") is the finding on both sides, beside the sided ones
            _require(
                any(site_side(s) is not None for s in sites),
                f"token_side_findings names {key!r}, none of whose sites {sites} starts with right or left",
            )

    @property
    def vision(self) -> ViTConfig:
        """`vision_config` as a `ViTConfig`."""
        assert isinstance(self.vision_config, ViTConfig)
        return self.vision_config

    @property
    def zformer(self) -> BigBirdConfig:
        """`zformer_config` as a `BigBirdConfig`."""
        assert isinstance(self.zformer_config, BigBirdConfig)
        return self.zformer_config

    @property
    def patch_size(self) -> int:
        """`vision_config.patch_size`, which `check` requires to be a single int."""
        patch = self.vision.patch_size
        assert isinstance(patch, int)
        return patch

    @property
    def visual_hidden_size(self) -> int:
        return int(self.zformer.hidden_size)

    def check(self) -> None:
        super().check()
        vision, zformer = self.vision, self.zformer
        _require(self.slice_chunk_size > 0, f"slice_chunk_size must be positive, got {self.slice_chunk_size}")
        _check_transformer(
            "vision_config", vision.hidden_size, vision.num_attention_heads, vision.num_hidden_layers
        )
        _require(
            vision.image_size == self.image_size,
            f"vision_config.image_size ({vision.image_size}) must equal image_size ({self.image_size})",
        )
        _require(
            isinstance(vision.patch_size, int) and self.image_size % vision.patch_size == 0,
            f"image_size ({self.image_size}) must be a multiple of vision_config.patch_size",
        )
        _require(vision.num_channels == 3, "vision_config.num_channels must be 3 (three CT windows)")
        _require(
            self.slice_pooling in SLICE_POOLINGS,
            f"slice_pooling must be one of {SLICE_POOLINGS}, got {self.slice_pooling!r}",
        )
        self._check_token_sides()
        patch = vision.patch_size
        _require(
            self.vision_stem != "conv" or supports_patch_size(patch),
            f"vision_stem 'conv' needs a power-of-two vision_config.patch_size, got {patch}",
        )
        _check_transformer(
            "zformer_config", zformer.hidden_size, zformer.num_attention_heads, zformer.num_hidden_layers
        )
        _require(
            zformer.attention_type in ("block_sparse", "original_full"),
            "zformer_config.attention_type must be 'block_sparse' or 'original_full'",
        )
        _require(
            zformer.max_position_embeddings >= self.max_slices_per_view,
            f"zformer_config.max_position_embeddings ({zformer.max_position_embeddings}) must be >= "
            f"max_slices_per_view ({self.max_slices_per_view})",
        )
        _require(zformer.block_size > 0 and zformer.num_random_blocks >= 0, "bad zformer block settings")
        _require(not zformer.is_decoder, "zformer_config must be an encoder (is_decoder=False)")
