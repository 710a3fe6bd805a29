"""An answer's tokens -> the completion a client sees, whole or as stream deltas.

The completion is the answer cut at the first stop token, at max_tokens tokens, and its
text cut before the first stop string; a stop string cuts the token ids too, to the tokens
whose text lies wholly before it, so token_ids and usage always count the text's tokens.
Streaming sends the same text in pieces: a piece goes out only once it can no longer change
(a finished block's tokens are final, but a trailing incomplete UTF-8 character or the
start of a stop string may still change), with the tokens that piece's text covers, so the
pieces always add up to the non-streamed text and token ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

REPLACEMENT = "\ufffd"   # what a decoder shows for an incomplete UTF-8 sequence


@dataclass
class Completion:
    text: str
    token_ids: List[int]
    finish_reason: Optional[str]   # "stop", "length", or None while more may come


class CompletionText:
    """Cuts answers of one request. codec: a TextCodec or None (then every text is "")."""

    def __init__(self, codec, stop_ids: Sequence[int], max_tokens: Optional[int], stop: Sequence[str]):
        self.codec = codec
        self.stop_ids = set(int(t) for t in stop_ids)
        self.max_tokens = max_tokens
        self.stop = list(stop)

    def render(self, tokens: Sequence[int], final: bool) -> Completion:
        """The completion from the answer's first tokens (all of them when final)."""
        cut, reason = len(tokens), ("length" if final else None)
        for i, t in enumerate(tokens):
            if t in self.stop_ids:
                cut, reason = i, "stop"
                break
        if self.max_tokens is not None and self.max_tokens < cut + (reason == "stop"):
            cut, reason = self.max_tokens, "length"
        ids = list(tokens[:cut])
        text = "" if self.codec is None else self.codec.decode(ids)
        ends = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if ends:
            end = min(ends)
            return Completion(text[:end], ids[:self.tokens_within(ids, text, end)], "stop")
        return Completion(text, ids, reason)

    def tokens_within(self, ids: List[int], text: str, chars: int) -> int:
        """How many leading tokens of ids (whose text is `text`) decode to at most `chars` characters."""
        if self.codec is None or len(text) <= chars:
            return len(ids)
        lo, hi = 0, len(ids) - 1          # decode(ids[:lo]) fits, decode(ids[:hi + 1]) does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.codec.decode(ids[:mid])) <= chars:
                lo = mid
            else:
                hi = mid - 1
        return lo


class DeltaStream:
    """Successive answers so far -> the new text and token ids to send."""

    def __init__(self, cutter: CompletionText):
        self.cutter = cutter
        self.text = ""             # text sent so far
        self.tokens = 0            # token ids sent so far
        self.finish_reason: Optional[str] = None

    def update(self, tokens: Sequence[int], final: bool) -> Completion:
        """The delta after a finished block (final: the whole answer). Empty once finished."""
        if self.finish_reason is not None:
            return Completion("", [], None)
        c = self.cutter.render(tokens, final)
        text = c.text
        if c.finish_reason is None:   # more may come: hold back what could still change
            text = text.rstrip(REPLACEMENT)
            hold = max((len(s) - 1 for s in self.cutter.stop), default=0)
            text = text[:max(len(text) - hold, len(self.text))] if hold else text
        if not text.startswith(self.text):
            text = self.text          # a decoder that rewrote earlier text: wait for more tokens
        ids = c.token_ids
        if c.finish_reason is None:   # the tokens of the text sent so far, no more
            ids = ids[:max(self.cutter.tokens_within(ids, c.text, len(text)), self.tokens)]
        delta = Completion(text[len(self.text):], ids[self.tokens:], c.finish_reason)
        self.text = text
        self.tokens = len(ids)
        self.finish_reason = c.finish_reason
        return delta
