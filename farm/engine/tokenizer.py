"""The CLIP BPE tokenizer shared by every SD family, built offline from open_clip's vocabulary file.

transformers and diffusers ship no CLIP vocabulary; open-clip-torch does
(`open_clip/bpe_simple_vocab_16e6.txt.gz`, installed with --no-deps for that file alone). We find
it with `importlib.util.find_spec`, which does not run open_clip's `__init__` (that would import
torchvision and timm), and convert it in memory into the vocab/merges that ComfyUI bundles
(spec §1.5: byte-identical). Invariants: 49,408 entries, `<|startoftext|>` = 49406,
`<|endoftext|>` = 49407, model_max_length 77; one tokenizer per process (it is read-only).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
BOS, EOS = 49406, 49407
MAX_LENGTH = 77
# The number of merges CLIP uses: the vocab is 256 bytes x2 (plain and word-final) + merges + 2.
_MERGES = VOCAB_SIZE - 2 * 256 - 2
INSTALL_HINT = 'pip install --no-deps open-clip-torch==3.3.0'


class TokenizerUnavailable(RuntimeError):
    """The CLIP vocabulary file cannot be found."""


def vocab_path() -> str:
    """Path of open_clip's BPE vocabulary file, without importing open_clip."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, VOCAB_FILE)
        if os.path.isfile(path):
            return path
    raise TokenizerUnavailable(
        f"the CLIP tokenizer needs {VOCAB_FILE} from the open-clip-torch package, which is not installed; "
        f"run: {INSTALL_HINT}")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters, in CLIP's vocab order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def vocab_and_merges(path: str | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocab ({token: id}) and merges (pairs) from open_clip's gzip file."""
    with gzip.open(path or vocab_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:_MERGES + 1]]  # the first line is a header
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise TokenizerUnavailable(f"{path or vocab_path()} gives {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """The process-wide transformers CLIPTokenizer (lowercasing, NFC; as ComfyUI uses)."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges()
    # transformers 5 ignores vocab_file=/merges_file= silently (every token becomes id 2), so the
    # data is passed in memory through vocab=/merges=.
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
    if tok.vocab_size != VOCAB_SIZE or tok.bos_token_id != BOS or tok.eos_token_id != EOS:
        raise TokenizerUnavailable("the CLIP tokenizer was built wrongly (vocabulary size or special ids differ)")
    return tok
