"""Text data: byte-level BPE tokenizers with RoBERTa's special ids, corpora, and fixed-size blocks.

Special ids are the fairseq / RoBERTa dictionary's everywhere: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3,
and `<mask>` is the last id (`tokenizer.mask_id`). A corpus becomes one long stream of token ids
(each non-empty line stripped, encoded, and followed by `</s>`, as fairseq's binarizer does), cut into
blocks `<s> t_1 ... t_{L-2} </s>` of `block_size` = L tokens: items dict(source=long [L]).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from einops import rearrange
from tokenizers import ByteLevelBPETokenizer
from tokenizers import Tokenizer as HFTokenizer
from torch.utils.data import Dataset

from . import atomic_file, cache_dir, data_root
from .download import ensure

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0, 1, 2, 3
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_GPT2: dict[Path, "Tokenizer"] = {}  # loaded GPT-2 tokenizers, by folder


class Tokenizer:
    """A `tokenizers` byte-level BPE with the RoBERTa id layout. Build it with `Tokenizer.gpt2()` or
    `Tokenizer.train(...)`.

    `encode(text) -> list[int]` (no `<s>`/`</s>` added), `decode(ids) -> str`, `id_to_token(i) -> str`;
    attributes `vocab_size`, `bos_id`=0, `pad_id`=1, `eos_id`=2, `unk_id`=3, `mask_id`=vocab_size-1,
    `name`, `fingerprint` (changes whenever the vocabulary does; used as a cache key).
    Internally, model id = backend id + `offset` (4 for GPT-2, whose backend has no special tokens).
    """

    bos_id, pad_id, eos_id, unk_id = BOS_ID, PAD_ID, EOS_ID, UNK_ID

    def __init__(self, backend, name: str, offset: int, vocab_size: int):
        self.backend, self.name, self.offset, self.vocab_size = backend, name, offset, vocab_size
        self.mask_id = vocab_size - 1
        self.special = {i: t for i, t in enumerate(SPECIALS)} | {self.mask_id: "<mask>"}
        real = range(offset, offset + backend.get_vocab_size())  # ids the backend can produce
        for k, i in enumerate(i for i in range(vocab_size) if i not in real and i not in self.special):
            self.special[i] = f"<madeupword{k:04d}>"  # unused, as in RoBERTa's dictionary
        self.fingerprint = f"{name}-{hashlib.sha256(backend.to_str().encode()).hexdigest()[:12]}"

    @classmethod
    def gpt2(cls, root: str | Path | None = None, download: bool | None = None) -> "Tokenizer":
        """GPT-2's byte-level BPE (RoBERTa's and data2vec-text's): `<root>/tokenizers/gpt2/{vocab.json,merges.txt}`.

        GPT-2 id g becomes g + 4 (after the 4 specials), so ids 4..50260 are text, 50261-50263 are
        unused and `<mask>` = 50264; `vocab_size` = 50265, the size of RoBERTa's embedding table.
        """
        folder = data_root(root) / "tokenizers" / "gpt2"
        if folder.resolve() in _GPT2:  # loaded already (takes ~0.5 s; a Tokenizer never changes)
            return _GPT2[folder.resolve()]
        folder = ensure("tokenizers/gpt2", root, download)  # no pinned hash: structure checked below
        backend = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        if backend.get_vocab_size() != 50257:
            from ..errors import DataFileError
            raise DataFileError(f"{folder} does not hold GPT-2's 50,257-token BPE (vocab.json has "
                                f"{backend.get_vocab_size()}): restore GPT-2's vocab.json and merges.txt there")
        _GPT2[folder.resolve()] = cls(backend, "gpt2", offset=4, vocab_size=50265)
        return _GPT2[folder.resolve()]

    @classmethod
    def train(cls, texts_or_files: str | Path | Iterable[str | Path], vocab_size: int, name: str,
              min_frequency: int = 2) -> "Tokenizer":
        """Train a byte-level BPE with `tokenizers` (deterministic), for tiny presets.

        `texts_or_files`: a `Path` / list of `Path`s (files), or a string / list of strings (text).
        Specials `<s>,<pad>,</s>,<unk>` get ids 0-3 and `<mask>` the last id, vocab_size - 1.
        Cached as `<cache>/tokenizers/<name>-<vocab_size>-<key>.json`, `key` a hash of the training
        text, vocab_size and min_frequency: a changed corpus trains a new tokenizer. A corpus with no
        non-blank line raises ValueError (and caches nothing).
        """
        items = [texts_or_files] if isinstance(texts_or_files, (str, Path)) else list(texts_or_files)
        texts = [read_utf8(item) if isinstance(item, Path) else item for item in items]
        digest = hashlib.sha256(f"{vocab_size}\0{min_frequency}".encode())
        for text in texts:
            digest.update(b"\0" + text.encode("utf-8", "surrogatepass"))
        path = cache_dir() / "tokenizers" / f"{name}-{vocab_size}-{digest.hexdigest()[:16]}.json"
        if not path.exists():
            lines = [line.strip() for text in texts for line in text.splitlines() if line.strip()]
            if not lines:
                files = [str(i) for i in items if isinstance(i, Path)]
                raise ValueError(f"cannot train tokenizer {name!r}: its corpus has no non-blank line"
                                 + (f" ({', '.join(files)})" if files else "") + ": check the data files")
            backend = ByteLevelBPETokenizer()
            backend.train_from_iterator(lines, vocab_size=vocab_size - 1,
                                        min_frequency=min_frequency, special_tokens=SPECIALS, show_progress=False)
            backend.add_special_tokens(["<mask>"])
            with atomic_file(path) as tmp:
                backend.save(str(tmp))
        backend = HFTokenizer.from_file(str(path))
        size = backend.get_vocab_size()
        if size != vocab_size:
            warnings.warn(f"tokenizer {name}: the corpus only supports {size} tokens, not {vocab_size}", stacklevel=2)
        assert backend.token_to_id("<mask>") == size - 1 and backend.token_to_id("<pad>") == PAD_ID
        return cls(backend, name, offset=0, vocab_size=size)

    @classmethod
    def from_str(cls, text: str, name: str) -> "Tokenizer":
        """A trained tokenizer from `to_str()` (e.g. stored in a checkpoint); its fingerprint is the original's."""
        try:
            backend = HFTokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - the Rust error type is not importable
            raise ValueError(f"the stored tokenizer {name!r} cannot be read ({e})") from None
        if backend.token_to_id("<pad>") != PAD_ID or backend.token_to_id("<mask>") != backend.get_vocab_size() - 1:
            raise ValueError(f"the stored tokenizer {name!r} does not have RoBERTa's special ids")
        return cls(backend, name, offset=0, vocab_size=backend.get_vocab_size())

    def to_str(self) -> str:
        """The tokenizer as JSON text (`tokenizers` format), for `from_str`."""
        return self.backend.to_str()

    def encode(self, text: str) -> list[int]:
        return [i + self.offset for i in self.backend.encode(text).ids]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts at once (in parallel, in Rust)."""
        return [[i + self.offset for i in e.ids] for e in self.backend.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids -> text; special ids are dropped, or written as `<s>`, `<mask>`, ... if not `skip_special`."""
        parts, run = [], []
        for i in map(int, ids):
            if i in self.special:
                parts.append(self.backend.decode(run))
                run = []
                parts.append("" if skip_special else self.special[i])
            else:
                run.append(i - self.offset)
        return "".join(parts + [self.backend.decode(run)])

    def id_to_token(self, i: int) -> str:
        """The token string of id `i` (byte-level: a leading space shows as "Ġ")."""
        return self.special.get(i) or self.backend.id_to_token(i - self.offset)

    def __repr__(self) -> str:
        return f"Tokenizer({self.fingerprint}, vocab_size={self.vocab_size}, mask_id={self.mask_id})"


# --------------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------------
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPORA = ("tinyshakespeare", "wikitext-2", "wikitext-103")


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file; a file that is not UTF-8 raises DataFileError naming it and the offset."""
    from ..errors import DataFileError

    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}): convert it, "
                            f"e.g. `iconv -f latin1 -t utf-8 {path} > {Path(path).name}.utf8`") from None


def read_corpus(name: str, split: str, root: str | Path | None = None, download: bool | None = None) -> str:
    """The raw text of a corpus split.

    - "tinyshakespeare": `text/tinyshakespeare/input.txt`; "train" = first 90% of the characters,
      "valid" = the last 10% (nanoGPT's split).
    - "wikitext-2": `text/wikitext-2/{train,valid,test}.txt`; the mirror has valid and test only,
      train is downloaded (Hugging Face `Salesforce/wikitext`, written into the data root).
    - "wikitext-103": online only, like wikitext-2's train (`text/wikitext-103/<split>.txt` once fetched).
    A missing file is downloaded unless D2V_DOWNLOAD=never / download=False (see `download.py`).
    """
    split = "valid" if split == "validation" else split
    if name not in CORPORA or split not in ("train", "valid", "test") or (name, split) == ("tinyshakespeare", "test"):
        raise ValueError(f"unknown corpus/split {name!r}/{split!r}; corpora: {CORPORA}, splits train/valid(/test)")
    if name == "tinyshakespeare":
        path = ensure("text/tinyshakespeare/input.txt", root, download)
        text = read_utf8(path)
        if not text.strip():
            from ..errors import DataFileError
            raise DataFileError(f"{path} is empty: restore tiny-shakespeare's input.txt")
        cut = int(0.9 * len(text))
        return text[:cut] if split == "train" else text[cut:]
    return read_utf8(ensure(f"text/{name}/{split}.txt", root, download))


def _download_wikitext(name: str, split: str, path: Path) -> None:
    """Fetch a WikiText split with `datasets` and write it as one paragraph per line."""
    import datasets

    hf_split = "validation" if split == "valid" else split
    rows = datasets.load_dataset("Salesforce/wikitext", f"{name}-raw-v1", split=hf_split)
    with atomic_file(path) as tmp:
        tmp.write_text("".join(rows["text"]), encoding="utf-8")  # each row already ends with "\n"


def encode_corpus(text: str, tokenizer: Tokenizer, chunk: int = 10_000) -> torch.Tensor:
    """Text -> long [T]: every non-empty line stripped, encoded, and followed by `</s>` (fairseq's binarizer)."""
    from tqdm.auto import tqdm

    lines = [line.strip() for line in text.splitlines() if line.strip()]
    parts = []  # int32 numpy chunks: a Python list of 100M ids would need several GB
    for start in tqdm(range(0, len(lines), chunk), desc="encoding", leave=False, disable=len(lines) <= chunk):
        encoded = tokenizer.encode_batch(lines[start:start + chunk])
        parts.append(np.array([i for ids in encoded for i in (*ids, tokenizer.eos_id)], dtype=np.int32))
    return torch.from_numpy(np.concatenate(parts or [np.zeros(0, np.int32)])).long()


def cached_ids(name: str, split: str, tokenizer: Tokenizer, root: str | Path | None = None,
               download: bool | None = None) -> torch.Tensor:
    """`encode_corpus(read_corpus(...))`, cached in `<cache>/tokens/` keyed by text and tokenizer: long [T]."""
    text = read_corpus(name, split, root, download)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = cache_dir() / "tokens" / f"{name}-{split}-{key}-{tokenizer.fingerprint}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path).astype(np.int64))
    ids = encode_corpus(text, tokenizer)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, ids.numpy().astype(np.int32))
    return ids


class TokenBlocks(Dataset):
    """A token stream cut into contiguous blocks `<s> t_1 ... t_{L-2} </s>` of `block_size` = L tokens.

    `ids`: long [T]. The last T mod (L-2) tokens are dropped. Item: dict(source=long [L]).
    """

    def __init__(self, ids: Sequence[int] | torch.Tensor, block_size: int, bos_id: int = BOS_ID, eos_id: int = EOS_ID):
        ids = torch.as_tensor(ids, dtype=torch.long)
        body = block_size - 2
        n = len(ids) // body
        if n == 0:
            raise ValueError(f"{len(ids)} tokens are fewer than one block of {body} (+ <s>, </s>)")
        blocks = rearrange(ids[:n * body], "(n l) -> n l", l=body)
        self.blocks = torch.cat([torch.full((n, 1), bos_id), blocks, torch.full((n, 1), eos_id)], dim=1)  # [n, L]

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        return dict(source=self.blocks[i])


def text_blocks(name: str, split: str, tokenizer: Tokenizer, block_size: int, root: str | Path | None = None,
                download: bool | None = None) -> TokenBlocks:
    """`TokenBlocks` of a corpus split (see `read_corpus`), with the token ids cached."""
    ids = cached_ids(name, split, tokenizer, root, download)
    return TokenBlocks(ids, block_size, tokenizer.bos_id, tokenizer.eos_id)


class TextCollator:
    """Pad variable-length token sequences on the right.

    `__call__(items) -> dict(source=long [B, T], padding_mask=bool [B, T] (True = padding),
    label=long [B] if the items have a "label")`, T = the longest sequence in the batch.
    """

    def __init__(self, pad_id: int = PAD_ID):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        seqs = [torch.as_tensor(it["source"], dtype=torch.long) for it in items]
        lengths = torch.tensor([len(s) for s in seqs])
        source = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=self.pad_id)
        batch = dict(source=source, padding_mask=torch.arange(source.shape[1]) >= lengths[:, None])
        if items and "label" in items[0]:
            batch["label"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
        return batch


__all__ = ["Tokenizer", "read_corpus", "encode_corpus", "cached_ids", "TokenBlocks", "text_blocks", "TextCollator",
           "SPECIALS", "BOS_ID", "PAD_ID", "EOS_ID", "UNK_ID"]
