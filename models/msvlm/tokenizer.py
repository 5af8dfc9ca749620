"""A small word-level tokenizer built from report texts.

No model hub is reachable from the node, so the demo model cannot use a published
tokenizer. Report language is a narrow vocabulary; a word-level tokenizer trained on the
corpus (plus the prompt words) is enough for the demo and keeps the LM's embedding small.
Special tokens have fixed ids so presets can name them: pad=0, bos=1, eos=2, unk=3.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer
from transformers import PreTrainedTokenizerFast

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def build_word_tokenizer(
    corpus: Iterable[str],
    *,
    min_frequency: int = 1,
    max_vocab_size: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a lower-cased WordLevel tokenizer on `corpus` and wrap it for transformers.

    Words are split on whitespace and every punctuation character, so "5 mm." gives
    ["5", "mm", "."]. Decoding joins words with spaces and removes the space before
    punctuation (the WordPiece decoder's cleanup), which reads naturally for reports.
    `max_vocab_size` includes the four special tokens.
    """
    if min_frequency < 1:
        raise ValueError("min_frequency must be >= 1")
    if max_vocab_size is not None and max_vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"max_vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens")
    backend = Tokenizer(WordLevel(vocab={}, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = WordLevelTrainer(
        vocab_size=max_vocab_size if max_vocab_size is not None else 1_000_000,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
    )
    backend.train_from_iterator(list(corpus), trainer=trainer)
    vocab = backend.get_vocab()
    expected = dict(zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID, UNK_ID), strict=True))
    if any(vocab.get(token) != token_id for token, token_id in expected.items()):
        raise RuntimeError("tokenizers did not place the special tokens at their fixed ids")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
    )
