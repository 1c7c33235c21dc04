"""A tokenizer with more ids than the checkpoint's embedding rows is refused before training."""

from __future__ import annotations

import pytest

from tune.data.tokenizer import check_vocab_fits


def test_tokenizer_larger_than_the_embedding_is_refused_and_smaller_is_fine() -> None:
    check_vocab_fits(32000, 32064, tokenizer_dir="tok", checkpoint_dir="ckpt")  # padded rows
    with pytest.raises(ValueError, match=r"tok has 32100 ids .* ckpt embeds only 32064"):
        check_vocab_fits(32100, 32064, tokenizer_dir="tok", checkpoint_dir="ckpt")
