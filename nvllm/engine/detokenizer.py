"""Text for a growing list of generated token ids, a piece at a time, and stop strings.

The pieces joined are exactly `tokenizer.decode(ids, skip_special_tokens=True)`: each step decodes
a window that starts one step back (vLLM's prefix/read offsets), so a token whose text depends on
its neighbour (a leading space, one byte of a multi-byte character) is read with it, and text that
ends in an incomplete UTF-8 sequence ("\\ufffd") is held until the bytes that complete it arrive.
While streaming, the end of the text that could be the start of a stop string is held back too."""
import functools


class Detokenizer:
    def __init__(self, tokenizer, stop: list[str] | None = None, incremental: bool = True):
        self.tokenizer = tokenizer
        self.stop = stop or ()
        # without stop strings and without a reader of the pieces, decode once at the end
        self.incremental = incremental or bool(self.stop)
        self.max_stop = max(map(len, self.stop), default=0)
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] is the context already in `text`
        self.text = ""
        self.sent = 0  # characters of `text` already returned
        self.stop_string: str | None = None  # the stop string that ended the text (vLLM's stop_reason)
        # ids -> text (no tokenizer, skip_tokenizer_init: no text)
        self._decode = (functools.partial(tokenizer.decode, skip_special_tokens=True) if tokenizer is not None
                        else lambda ids: "")

    def update(self, new_ids: list[int], finished: bool) -> tuple[str, bool]:
        """Add `new_ids` (leave out a stop token: its text is not output). Returns the text to
        emit now and whether a stop string ended the text (the caller then finishes the request).
        A detokenizer that is not incremental is given every id at once, when the text is finished."""
        self.ids += new_ids
        before = len(self.text)
        context, window = self._decode(self.ids[self.prefix:self.read]), self._decode(self.ids[self.prefix:])
        if finished or (len(window) > len(context) and not window.endswith("\ufffd")):
            self.text += window[len(context):]
            self.prefix, self.read = self.read, len(self.ids)
        stopped, end = self._find_stop(before, finished) if self.stop else (False, len(self.text))
        piece, self.sent = self.text[self.sent:end], max(self.sent, end)
        return piece, stopped

    def _find_stop(self, before: int, finished: bool) -> tuple[bool, int]:
        """Whether a stop string ended the text (it is cut there), and how much of the text may be
        emitted: while streaming, an end that could be the start of a stop string is held back."""
        if len(self.text) > before:
            start = max(self.sent, before - self.max_stop + 1)
            hits = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
            if hits:
                at, self.stop_string = min(hits, key=lambda hit: hit[0])  # the first to start; of those, the first listed
                self.text = self.text[:at]
                return True, at
        return False, len(self.text) - (0 if finished else self._stop_prefix_len())

    def _stop_prefix_len(self) -> int:
        """Length of the longest end of `text` that a stop string starts with (it may yet match)."""
        for k in range(min(self.max_stop - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0
