"""Tokenizers: the model directory's tokenizer.json when present, a byte-level fallback otherwise."""

from __future__ import annotations

from pathlib import Path


class ByteTokenizer:
    """UTF-8 bytes are token ids 0-255; any larger id (a synthetic model emits them) decodes as <id>."""

    name = "bytes"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        parts: list[str] = []
        run = bytearray()
        for t in ids:
            if t < 256:
                run.append(t)
                continue
            if run:
                parts.append(run.decode("utf-8", errors="replace"))
                run.clear()
            parts.append(f"<{t}>")
        if run:
            parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)


class HFTokenizer:
    """The directory's own tokenizer, through transformers."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        self.name = str(path)
        if (path / "tokenizer_config.json").exists():
            self._tok = AutoTokenizer.from_pretrained(str(path))
        else:
            self._tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def load_tokenizer(path: Path | None, vocab_size: int):
    if path is not None and (path / "tokenizer.json").exists():
        return HFTokenizer(path)
    return ByteTokenizer(vocab_size)
