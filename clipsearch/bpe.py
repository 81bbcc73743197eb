"""CLIP's byte-level BPE tokenizer without torch: the same token ids as open_clip's `SimpleTokenizer` ('lower'
cleaning, no reduction), for the torch-free CPU query path. The vocabulary file travels in the index artifact.

open_clip's tokenizer module imports torch at the top, so a service that runs its query encoder from ONNX would
pay for (and need) torch just to split words; this is its algorithm with numpy output (unit tests compare the
two on many strings).
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
N_MERGES = 49152 - 256 - 2


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode table of GPT-2/CLIP BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipBpeTokenizer:
    """Text -> CLIP token ids (start, BPE tokens, end), truncated to `context_length` like open_clip."""

    def __init__(self, vocab_path: Path, context_length: int = 77) -> None:
        with gzip.open(vocab_path) as f:
            merges_text = f.read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
        merges = [tuple(m.split()) for m in merges_text]
        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [v + "</w>" for v in byte_chars] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.cache: dict[str, str] = {t: t for t in SPECIAL_TOKENS}
        self.pat = regex.compile(
            "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot_token_id = self.encoder[SPECIAL_TOKENS[0]]
        self.eot_token_id = self.encoder[SPECIAL_TOKENS[1]]
        self.context_length = context_length

    def _bpe(self, token: str) -> str:
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        if len(self.cache) < 100_000:
            self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in regex.findall(self.pat, _clean(text)):
            chars = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(chars).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """Token ids (n, context_length) int64, zero-padded, and which texts were cut to the context."""
        ctx = self.context_length
        out = np.zeros((len(texts), ctx), dtype=np.int64)
        truncated = []
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            truncated.append(len(ids) > ctx)
            if len(ids) > ctx:
                ids = ids[:ctx]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out, truncated
