"""The exact GPT-2 byte-pair tokenizer, offline.

The official `encoder.json` / `vocab.bpe` ship inside this package (`tf_gpt2/vocab/`, gzip, with
OpenAI's license); they are unpacked once to a cache directory, their sha256 is checked on every
load, then tiktoken builds the same encoding as its own "gpt2" from the ranks in encoder.json, which are the
merges' order (tiktoken's own loader of these files keeps a copy of them in a temporary folder, one for each place
they are unpacked to). `tf_gpt2.graph_tokenizer.BytePairGraphTokenizer` gives the same ids as TensorFlow ops, for
SavedModels that take strings.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import json
import os
import re
import sys
from collections.abc import Mapping, Set
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import tiktoken

from tf_gpt2.config import checked_characters

ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# GPT-2's pre-tokenizer regex (the form tiktoken uses for "gpt2"/r50k).
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257


def vocab_cache_dir() -> str:
    """Where the shipped vocabulary is unpacked: $TF_GPT2_CACHE, else ~/.cache/tf_gpt2."""
    return os.environ.get("TF_GPT2_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tf_gpt2")


@functools.lru_cache(maxsize=None)
def default_vocab_files() -> tuple[str, str]:
    """Paths of the official encoder.json and vocab.bpe, unpacked from the package's gzip copies into
    `vocab_cache_dir()` (again whenever a cached copy is missing or damaged), or, where that folder cannot be
    written (a read-only or missing home, as in some containers), into a temp folder of this process's own."""
    from tf_gpt2.files import process_dir

    try:
        return _unpacked_vocab_files(vocab_cache_dir())
    except OSError:
        return _unpacked_vocab_files(process_dir("vocab"))


def _unpacked_vocab_files(directory: str) -> tuple[str, str]:
    from tf_gpt2.files import atomic_write, bytes_writer

    paths = []
    for name, digest in (("encoder.json", ENCODER_JSON_SHA256), ("vocab.bpe", VOCAB_BPE_SHA256)):
        path = os.path.join(directory, f"{digest[:16]}-{name}")
        if not (os.path.exists(path) and _sha256(path) == digest):
            data = _packed(name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, bytes_writer(data))
        paths.append(path)
    return paths[0], paths[1]


def _packed(name: str) -> bytes:
    """The package's own copy of GPT-2's `name` (encoder.json, vocab.bpe)."""
    return gzip.decompress((importlib.resources.files("tf_gpt2") / "vocab" / f"{name}.gz").read_bytes())


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _verify_sha256(path: str, expected: str) -> None:
    try:
        digest = _sha256(path)
    except OSError as e:
        raise FileNotFoundError(f"cannot read GPT-2 vocabulary file {path}: {e}") from e
    if digest != expected:
        raise ValueError(
            f"GPT-2 vocabulary file {path} has sha256 {digest}, expected {expected}: "
            "it is not the official file (corrupt or a different vocabulary)"
        )


@functools.lru_cache(maxsize=4)
def _encoding(encoder_json: str, vocab_bpe: str) -> tiktoken.Encoding:
    _verify_sha256(encoder_json, ENCODER_JSON_SHA256)
    _verify_sha256(vocab_bpe, VOCAB_BPE_SHA256)  # (the official pair: an id of encoder.json is its merge's rank)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(byte_of[c] for c in token): rank for token, rank in read_vocabulary(encoder_json).items()
             if token != ENDOFTEXT}
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the alphabet of encoder.json)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def read_vocabulary(encoder_json: str) -> dict[str, int]:
    """encoder.json as {token: id} (tokens in GPT-2's byte-as-character alphabet)."""
    with open(encoder_json, encoding="utf-8") as f:
        return json.load(f)


def _vocabulary_and_merges(encoder_json: str, vocab_bpe: str) -> tuple[dict[str, int], list[str]]:
    """encoder.json as {token: id}, and vocab.bpe's merge rules as "a b" lines, in rank order."""
    with open(vocab_bpe, encoding="utf-8") as f:
        return read_vocabulary(encoder_json), _merge_lines(f.read())


def _merge_lines(vocab_bpe: str) -> list[str]:
    return [line for line in vocab_bpe.split("\n")[1:] if line]  # line 0: "#version: 0.2"


# Where a checkpoint directory keeps its tokenizer: Hugging Face's, OpenAI's and keras-hub's vocabulary and merges.
VOCABULARY_FILES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"),
                    ("assets/tokenizer/vocabulary.json", "assets/tokenizer/merges.txt"))
OTHER_KINDS = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.txt")  # not byte-level BPE


@functools.lru_cache(maxsize=1)
def _gpt2_vocabulary_and_merges() -> tuple[dict[str, int], list[str]]:
    """GPT-2's vocabulary and merge rules, read from the package's own copies (no cache is written)."""
    return json.loads(_packed("encoder.json")), _merge_lines(_packed("vocab.bpe").decode("utf-8"))


def _same_vocabulary(vocabulary: Any) -> bool:
    """Whether a BPE's vocabulary is GPT-2's (ids past its 50,257 allowed: tokens added to it, such as a padding
    token, which text never becomes)."""
    return isinstance(vocabulary, dict) and all(isinstance(i, int) for i in vocabulary.values()) and (
        {t: i for t, i in vocabulary.items() if i < VOCAB_SIZE} == _gpt2_vocabulary_and_merges()[0])


def _same_merges(merges: Any) -> bool:
    if not isinstance(merges, list) or not all(isinstance(m, (str, list)) for m in merges):
        return False
    merges = ((m if isinstance(m, str) else " ".join(map(str, m))).rstrip() for m in merges)  # (a CRLF line's \r)
    return [m for m in merges if m and not m.startswith("#version")] == _gpt2_vocabulary_and_merges()[1]


class _Unreadable(Exception):
    """A checkpoint's tokenizer file that cannot be read (its message says which and why)."""


# GPT-2's word pattern as tokenizer.json files spell it: tiktoken's (possessive) and OpenAI's original.
GPT2_PATTERNS = (PAT_STR, r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _splits_as_gpt2(tokenizer_json: dict) -> bool:
    """Whether a Hugging Face `tokenizer.json` cuts text into words as GPT-2 does before its BPE: no normalizer, and
    the byte-level pre-tokenizer with GPT-2's regex (its own, or a Split by that pattern before it, as files converted
    from tiktoken have) and no space added in front ("Hello" is not " Hello")."""
    normalizer, steps = tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")
    if isinstance(steps, dict) and steps.get("type") == "Sequence":
        steps = steps.get("pretokenizers")
    steps = steps if isinstance(steps, list) else [steps]
    byte_level_regex = True
    if len(steps) == 2 and isinstance(steps[0], dict) and steps[0].get("type") == "Split":  # tiktoken's regex first
        split, steps = steps[0], steps[1:]  # (the file's own list is left as it is)
        if (split.get("pattern") or {}).get("Regex") not in GPT2_PATTERNS or split.get("invert") or \
                split.get("behavior", "Isolated") != "Isolated":
            return False
        byte_level_regex = False
    byte_level = steps[0] if len(steps) == 1 else None
    return (normalizer is None or normalizer == {"type": "Sequence", "normalizers": []}) and isinstance(
        byte_level, dict) and byte_level.get("type") == "ByteLevel" and not byte_level.get("add_prefix_space") and \
        byte_level.get("use_regex", True) is byte_level_regex


def _token_ids(found: Any, known: dict[str, int]) -> list[tuple[Any, Any]]:
    """The (text, id) pairs a tokenizer file's entry adds: {text: id} (`added_tokens.json`), [{id, content}]
    (tokenizer.json's `added_tokens`), {id: {content}} (`added_tokens_decoder`), or texts without ids
    (`additional_special_tokens`, `extra_special_tokens`), which take the id `known` gives them, else the next ones
    past GPT-2's and the known ones, as transformers numbers them."""
    if isinstance(found, dict) and found and all(isinstance(v, dict) for v in found.values()):
        return [(v.get("content"), int(k) if str(k).isdigit() else k) for k, v in found.items()]
    if isinstance(found, dict) and all(isinstance(v, int) for v in found.values()):
        return list(found.items())
    if not isinstance(found, (dict, list)):
        return []
    tokens = [t if isinstance(t, dict) else {"content": t} for t in (
        found.values() if isinstance(found, dict) else found)]
    new = iter(range(max([EOT_ID, *(i for i in known.values() if isinstance(i, int))]) + 1, 1 << 31))
    return [(t.get("content"), t["id"] if "id" in t else known[t.get("content")] if t.get("content") in known
             else EOT_ID if t.get("content") == ENDOFTEXT else next(new)) for t in tokens]


def _adds_to_every_text(processor: Any) -> bool:
    """Whether a tokenizer.json `post_processor` puts special tokens around every text (a template's `SpecialToken`,
    as a BOS token), which GPT-2's (ByteLevel) does not."""
    steps = processor.get("processors", []) if isinstance(processor, dict) and processor.get("type") == "Sequence" \
        else [processor]
    return any(isinstance(step, dict) and step.get("type") == "TemplateProcessing" and any(
        isinstance(piece, dict) and "SpecialToken" in piece for piece in step.get("single") or []) for step in steps)


def _files_adding_tokens(directory: str, read: Callable[[str, Callable[[str], Any]], Any],
                         vocab_size: int | None) -> str | None:
    """The first tokenizer file of `directory` that adds tokens to the model's ids, in words: other than GPT-2's own
    `<|endoftext|>` (50256), below `vocab_size` (a token past the model's ids is never given to it), and other than
    the tokenizer's padding token, which pads batches, not text (the usual fine-tune adds one and resizes the
    embeddings). GPT-2's BPE would read each such text as several other ids."""
    contents = {}  # each file read once
    for name in ("tokenizer.json", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(directory, name)
        found = read(path, json.loads) if os.path.exists(path) else {}
        contents[name] = found if isinstance(found, dict) else {}
    entries = [(name, contents[name] if key is None else contents[name].get(key)) for name, key in (
        ("tokenizer.json", "added_tokens"), ("added_tokens.json", None),
        ("tokenizer_config.json", "added_tokens_decoder"), ("tokenizer_config.json", "extra_special_tokens"),
        ("tokenizer_config.json", "additional_special_tokens"),
        ("special_tokens_map.json", "additional_special_tokens"))]
    known: dict[str, int] = {}
    for _, found in entries[:3]:  # the files that give ids
        known.update((text, i) for text, i in _token_ids(found, {}) if isinstance(text, str) and isinstance(i, int))
    padding = {token.get("content") if isinstance(token, dict) else token for token in (
        contents[name].get("pad_token") for name in ("tokenizer_config.json", "special_tokens_map.json"))}
    for name, found in entries:
        added = [f"{text!r} = {i}" for text, i in _token_ids(found, known) if (text, i) != (ENDOFTEXT, EOT_ID)
                 and text not in padding and not (vocab_size is not None and isinstance(i, int) and i >= vocab_size)]
        if added:
            return (f"{os.path.join(directory, name)} adds tokens to GPT-2's: {', '.join(added[:3])}"
                    + (f" and {len(added) - 3} more" if len(added) > 3 else ""))
    return None


def other_tokenizer(directory: str, vocab_size: int | None = None) -> str | None:
    """What in a checkpoint directory gives it a tokenizer other than GPT-2's BPE (its vocabulary and merges
    compared with GPT-2's, the tokens it adds to ids below `vocab_size`), in words, or None: text read with GPT-2's
    BPE would become other ids than its own."""
    def read(path: str, parse: Callable[[str], Any]) -> Any:
        try:
            with open(path, encoding="utf-8-sig") as f:  # (a BOM a Windows editor wrote is no token)
                return parse(f.read())
        except (OSError, ValueError) as e:
            raise _Unreadable(f"{path} cannot be read ({e})") from None

    try:
        for vocabulary_name, merges_name in VOCABULARY_FILES:
            vocabulary_path, merges_path = (os.path.join(directory, n) for n in (vocabulary_name, merges_name))
            there = [os.path.exists(vocabulary_path), os.path.exists(merges_path)]
            if there == [True, True]:
                if not _same_vocabulary(read(vocabulary_path, json.loads)):
                    return f"{vocabulary_path} is not GPT-2's vocabulary"
                if not _same_merges(read(merges_path, lambda text: text.split("\n"))):
                    return f"{merges_path} is not GPT-2's merges"
            elif any(there):
                present, absent = (vocabulary_path, merges_name) if there[0] else (merges_path, vocabulary_name)
                return f"{present} has no {absent} beside it: its tokenizer is not whole"
        tokenizer_json = os.path.join(directory, "tokenizer.json")
        if os.path.exists(tokenizer_json):
            found = read(tokenizer_json, json.loads)
            bpe = found.get("model") if isinstance(found, dict) else None  # (keras-hub's is a Keras config, without)
            if bpe is not None and not (isinstance(bpe, dict) and _same_vocabulary(bpe.get("vocab"))
                                        and _same_merges(bpe.get("merges"))):
                return f"{tokenizer_json} is not GPT-2's BPE"
            if bpe is not None and not _splits_as_gpt2(found):
                return f"{tokenizer_json} splits text otherwise than GPT-2's BPE (its normalizer or pre-tokenizer)"
            if bpe is not None and _adds_to_every_text(found.get("post_processor")):
                return f"{tokenizer_json} adds a token to every text (its post_processor's template)"
            keras_hub = found.get("config") if bpe is None and isinstance(found, dict) else None
            if isinstance(keras_hub, dict) and keras_hub.get("add_prefix_space") is True:
                return f"{tokenizer_json} sets add_prefix_space (keras-hub then reads \"Hello\" as \" Hello\")"
        if (added := _files_adding_tokens(directory, read, vocab_size)) is not None:
            return added
        settings_path = os.path.join(directory, "tokenizer_config.json")
        settings = read(settings_path, json.loads) if os.path.exists(settings_path) else {}
        added = [f"{name} (transformers then {does})" for name, does in (
            ("add_prefix_space", 'reads "Hello" as " Hello"'), ("add_bos_token", "starts every text with a token"))
            if isinstance(settings, dict) and settings.get(name) is True]
        if added:
            return f"{settings_path} sets {' and '.join(added)}"
    except _Unreadable as e:
        return str(e)
    other = next((n for n in OTHER_KINDS if os.path.exists(os.path.join(directory, n))), None)
    return None if other is None else f"{os.path.join(directory, other)} is a tokenizer of another kind than BPE"


def hf_tokenizer_json(encoder_json: str | None = None, vocab_bpe: str | None = None) -> str:
    """GPT-2's Hugging Face `tokenizer.json` (byte-level BPE), built offline from the official files.

    It is what on-device runtimes (LiteRT-LM) and `transformers` load; its ids equal `GPT2Tokenizer`'s.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    default_encoder, default_bpe = default_vocab_files()
    encoder_json, vocab_bpe = encoder_json or default_encoder, vocab_bpe or default_bpe
    _verify_sha256(encoder_json, ENCODER_JSON_SHA256)
    _verify_sha256(vocab_bpe, VOCAB_BPE_SHA256)
    vocabulary, merges = _vocabulary_and_merges(encoder_json, vocab_bpe)
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=[tuple(m.split(" ")) for m in merges]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(ENDOFTEXT, special=True)])
    return tokenizer.to_str()


class GPT2Tokenizer:
    """GPT-2 BPE: text <-> token ids, identical to OpenAI's tokenizer.

    `<|endoftext|>` in the text becomes the single id 50256.

    Example:
    >>> tok = GPT2Tokenizer()
    >>> tok.encode("Hello world")
    [15496, 995]
    >>> tok.decode([15496, 995])
    'Hello world'
    """

    def __init__(self, encoder_json: str | None = None, vocab_bpe: str | None = None):
        default_encoder, default_bpe = default_vocab_files()
        self.encoder_json = os.fspath(encoder_json or default_encoder)
        self.vocab_bpe = os.fspath(vocab_bpe or default_bpe)
        self._enc = _encoding(self.encoder_json, self.vocab_bpe)

    vocab_size = VOCAB_SIZE
    eot_id = EOT_ID

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        try:
            return self._enc.encode(checked_utf8("text", text), allowed_special={ENDOFTEXT})
        except ValueError as e:
            if "Regex error" not in str(e):
                raise
        # tiktoken's pre-tokenizer gives up on a whitespace run of about a million characters before other text
        # ("Max stack size exceeded for backtracking"): the same pieces, made in parts
        parts = _parts_of_whitespace_runs(text)
        return [i for part in parts for i in self._enc.encode(part, allowed_special={ENDOFTEXT})]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch expects a list of str")
        try:
            return self._enc.encode_batch([checked_utf8(f"text {i}", t) for i, t in enumerate(texts)],
                                          allowed_special={ENDOFTEXT})
        except ValueError as e:
            if "Regex error" not in str(e):
                raise
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(checked_ids(ids, VOCAB_SIZE))

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]


# Unicode's White_Space, which PAT_STR's \s matches
_SPACE = "[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
LONG_WHITESPACE = 1 << 16
_LONG_WHITESPACE_RUN = re.compile(f"(?<!{_SPACE})(?={_SPACE}{{{LONG_WHITESPACE}}}){_SPACE}+")  # (from its start)


def _parts_of_whitespace_runs(text: str) -> Iterator[str]:
    r"""`text` in parts that GPT-2's tokenizer encodes one by one as it encodes `text`, with each run of
    LONG_WHITESPACE or more whitespace characters before other text cut off its last character: PAT_STR makes the
    run but its last character one piece (`\s+(?!\S)`, which tiktoken's regex cannot take so long), and starts the
    next piece at that character. A run that ends the text or comes before `<|endoftext|>` is one piece, which it
    takes."""
    start = 0
    for run in _LONG_WHITESPACE_RUN.finditer(text):
        if run.end() < len(text) and not text.startswith(ENDOFTEXT, run.end()):
            yield from (text[start:run.start()], text[run.start():run.end() - 1])
            start = run.end() - 1
    yield text[start:]


def checked_utf8(name: str, text: str) -> str:
    """`text`, refused where it holds a lone surrogate (what Python keeps of bytes that were not UTF-8), which GPT-2's
    BPE would read as U+FFFD without a word."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        byte = f"byte {code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise ValueError(f"{name} is not UTF-8 text: {byte} after {text[:e.start]!r:.60}") from None
    return text


def check_output_writes(characters: Sequence[str] | None) -> None:
    """Refuse, before any text is made, a standard output whose encoding cannot write what a model may write (a
    character model its characters; GPT-2's byte-level BPE any character): its text failed where one came."""
    encoding, errors = getattr(sys.stdout, "encoding", None), getattr(sys.stdout, "errors", "strict")
    may_write = "".join(characters) if characters is not None else "\xe9\u4e2d\U0001f642"  # (any: a few stand for all)
    try:
        may_write.encode(encoding or "utf-8", errors or "strict")
    except UnicodeEncodeError as e:
        given = os.environ.get("PYTHONIOENCODING")  # (it outranks UTF-8 mode)
        fix = f"set PYTHONIOENCODING=utf-8 (it is {given})" if given else \
            "set PYTHONUTF8=1 (or PYTHONIOENCODING=utf-8) to write UTF-8"
        raise ValueError(f"standard output writes {encoding}, which cannot hold {may_write[e.start]!r}, and the model "
                         f"may write it: {fix}") from None
    except LookupError:  # an encoding Python does not know: left to the stream
        pass


def _is_id(value: Any) -> bool:
    """An integer: a Python or numpy one, or a 0-d integer array (an element of a JAX or TensorFlow array); not a
    bool, not a float however whole."""
    if isinstance(value, (int, np.integer)):
        return not isinstance(value, bool)
    return hasattr(value, "__array__") and np.ndim(value) == 0 and np.asarray(value).dtype.kind in "iu"


def checked_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """`ids` as ints, each in [0, vocab_size) (a negative one would read from the end of a table); floats and
    bools are refused, not rounded, and so are bytes (text, whose byte values are no GPT-2 ids)."""
    if isinstance(ids, (bytes, bytearray, memoryview)):
        raise TypeError(f"token ids must be a sequence of integers, got {type(ids).__name__} (bytes are no ids)")
    if isinstance(ids, (str, Set, Mapping)) or not (hasattr(ids, "__array__") or hasattr(ids, "__iter__")):  # (a set
        # or a dict gave its members in hash order, or its keys)
        raise TypeError(f"token ids must be a sequence of integers, got {type(ids).__name__} {ids!r:.40}")
    if hasattr(ids, "__array__"):  # a numpy, JAX or TensorFlow array: its dtype says
        array = np.asarray(ids)
        if array.ndim != 1 or array.size and array.dtype.kind not in "iu":
            raise TypeError(f"token ids must be a sequence of integers, got {array.dtype} of shape {array.shape}")
        ids = array.tolist()
    else:
        ids = list(ids)
        not_ids = [i for i in ids if not _is_id(i)]
        if not_ids:
            raise TypeError(f"token ids must be integers, got {not_ids[:5]!r}")
        ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got {bad[:5]}")
    return ids


class CharacterTokenizer:
    """A character model's vocabulary (`GPT2Config.characters`): token i is `characters[i]`.

    A character outside the vocabulary is an error, not dropped.

    Example:
    >>> tok = CharacterTokenizer([" ", "a", "b"])
    >>> tok.encode("ab a")
    [1, 2, 0, 1]
    >>> tok.decode([2, 1])
    'ba'
    """

    eot_id = None  # a character vocabulary has no end-of-text token

    def __init__(self, characters: Sequence[str]):
        self.characters = checked_characters(characters)
        self._index = {c: i for i, c in enumerate(self.characters)}
        self.vocab_size = len(self.characters)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if set(text) - self._index.keys():
            unknown = list(dict.fromkeys(c for c in text if c not in self._index))  # in the order of the text
            where = f"at character {text.index(unknown[0]) + 1} of the text"
            more = f" (and {len(unknown) - 10} more)" * (len(unknown) > 10)
            these = (f"characters {', '.join(map(repr, unknown[:10]))}{more} are", f"the first {where}") \
                if len(unknown) > 1 else (f"character {unknown[0]!r} is", where)
            raise ValueError(f"{these[0]} not in the model's vocabulary of {len(self.characters)} ({these[1]})")
        return [self._index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.characters[i] for i in checked_ids(ids, self.vocab_size))


def end_of_text_id(config) -> int | None:
    """`<|endoftext|>`'s id where a model's ids are GPT-2's (at least its 50,257, no characters of its own), else
    None: a character model has no such token, however many characters it has."""
    return EOT_ID if config.characters is None and config.vocab_size >= VOCAB_SIZE else None


def tokenizer_for(config) -> GPT2Tokenizer | CharacterTokenizer:
    """The tokenizer a model's ids mean: its characters when it has them, else GPT-2's BPE (whose 50,257 ids a
    vocabulary without characters must hold; one padded wider, as nanoGPT's 50,304, reads as GPT-2's)."""
    if config.characters is not None:
        return CharacterTokenizer(config.characters)
    if config.vocab_size < VOCAB_SIZE:
        raise ValueError(f"a model of {config.vocab_size} tokens without its characters has no text tokenizer "
                         f"(GPT-2's BPE has {VOCAB_SIZE}): in Python, give it token ids")
    return GPT2Tokenizer()
