"""Tokenizers that run inside a TensorFlow graph, for the SavedModel's text signature.

`BytePairGraphTokenizer` gives `GPT2Tokenizer().encode` (tiktoken's "gpt2"): the same pre-tokenizer (GPT-2's
regex, written for RE2, which has no lookahead; RE2's Unicode tables, older than tiktoken's, read the letters and
digits Unicode 15.1 and 16.0 added as symbols, so that a contraction after one splits otherwise), the same merge
order (the leftmost pair whose merged bytes have the lowest rank, one pair at a time, a word that is itself a token
taken whole) and `<|endoftext|>` as id 50256. It holds only constant tables: serving text leaves no state behind, so
memory stays flat however many distinct words arrive. `CharacterGraphTokenizer` does the same for a character model's
vocabulary.

Both map a batch of strings [batch] to `(ids, error)`: a ragged int32 [batch, (tokens)] and a string [batch]
that is empty for a row that tokenized and names the problem otherwise; `detokenize` maps ragged ids to text.

Example:
>>> import tensorflow as tf
>>> ids, error = BytePairGraphTokenizer()(tf.constant(["Hello world"]))
>>> ids.to_list(), error.numpy().tolist()
([[15496, 995]], [b''])
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tf_gpt2.tokenizer import ENDOFTEXT, GPT2Tokenizer, bytes_to_unicode, read_vocabulary

# Unicode's White_Space: what `\s` means to tiktoken's regex engine. RE2's `\s` is ASCII only.
WHITESPACE = r"\t\n\x0b\x0c\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
# GPT-2's pattern without its lookahead: `\s+(?!\S)` (a whitespace run but its last character, when text follows)
# becomes one token per whitespace character here, and `_join_whitespace` joins them back.
PRE_TOKENIZER = (rf"'(?:[sdmt]|ll|ve|re)| ?\pL+| ?\pN+| ?[^{WHITESPACE}\pL\pN]+|[{WHITESPACE}]+$"
                 rf"|[{WHITESPACE}]")
_NO_RANK = 2**31 - 1


def _join_whitespace(words: tf.RaggedTensor) -> tf.RaggedTensor:
    """The tokens of `PRE_TOKENIZER` [segments, (tokens)] as GPT-2's regex gives them.

    A run of n whitespace characters before text came out as single characters; GPT-2 makes its first n-1 one
    token, and its last either starts the next token (a space: " word") or stands alone (any other character).
    """
    values, rows = words.flat_values, words.value_rowids()
    single = tf.strings.regex_full_match(values, f"[{WHITESPACE}]")
    starts_with_space = tf.strings.regex_full_match(values, f"(?s)[{WHITESPACE}].*")
    following = lambda x, end: tf.concat([x, [end]], 0)[1:]  # noqa: E731  (each token's next, `end` after the last)
    first = tf.concat([[-1], rows], 0)[:-1] != rows  # the first token of its segment
    last = following(rows, -1) != rows
    alone = single & ~following(single, False) & ~last & ~following(starts_with_space, True)  # before text
    joins_previous = single & tf.concat([[False], single], 0)[:-1] & ~first & ~alone
    starts_group = tf.cast(~joins_previous, tf.int64)
    joined = tf.strings.unsorted_segment_join(values, tf.cumsum(starts_group) - 1, tf.reduce_sum(starts_group))
    counts = tf.math.unsorted_segment_sum(starts_group, rows, words.nrows())
    return tf.RaggedTensor.from_row_lengths(joined, counts)


def _split(text, pattern: str) -> tf.RaggedTensor:
    """`text` [n] cut into its matches of `pattern` and the pieces between them, [n, (pieces)].

    tensorflow-text's `regex_split` stops reading a string at its first NUL byte: it runs on a copy in which NUL
    is SOH (one byte too, and of the same regex class: a control character), and the pieces are cut from `text`.
    """
    _, begins, ends = tf_text().regex_split_with_offsets(tf.strings.regex_replace(text, r"\x00", "\x01"), pattern,
                                                         pattern)
    rows = begins.value_rowids()
    pieces = tf.strings.substr(tf.gather(text, rows), begins.flat_values, ends.flat_values - begins.flat_values)
    return begins.with_flat_values(pieces)


class BytePairGraphTokenizer(tf.Module):
    """GPT-2's BPE as TensorFlow ops: `GPT2Tokenizer().encode` in a graph. See the module's docstring.

    Its time grows with the square of a word's length (one merge at a time), so `max_word_bytes` bounds the words
    of GPT-2's pre-tokenizer (runs of letters, of digits, of other symbols, of whitespace): a text with a longer one
    is a row's error, its word not encoded. Text without spaces (Chinese, Japanese) is cut at its punctuation.
    """

    def __init__(self, tokenizer: GPT2Tokenizer | None = None, max_word_bytes: int | None = None):
        super().__init__(name="bpe_tokenizer")
        self.max_word_bytes = max_word_bytes
        encoder = read_vocabulary((tokenizer or GPT2Tokenizer()).encoder_json)  # checked against its sha256 there
        tokens = sorted(encoder, key=encoder.get)
        self.tokens = tf.constant(tokens)  # id -> token, in the byte-as-character alphabet
        self.ranks = tf.lookup.StaticHashTable(  # token -> id, which is also its merge rank
            tf.lookup.KeyValueTensorInitializer(tokens, tf.range(len(tokens), dtype=tf.int32)), _NO_RANK)
        to_unicode = bytes_to_unicode()
        self.byte_chars = tf.constant([to_unicode[b] for b in range(256)])
        code_points = [0] * (max(map(ord, to_unicode.values())) + 1)
        for b, c in to_unicode.items():
            code_points[ord(c)] = b
        self.char_bytes = tf.constant(code_points, tf.int32)  # code point of an alphabet character -> its byte
        self.raw_bytes = tf.constant([bytes([b]) for b in range(256)])

    def __call__(self, text):
        """Ragged int32 ids [batch, (tokens)] and the per-row error [batch] (any bytes tokenize: empty, unless a
        word is longer than `max_word_bytes`)."""
        segments = _split(text, r"<\|endoftext\|>")  # tiktoken: one by one
        flat = segments.flat_values
        special = tf.equal(flat, ENDOFTEXT)
        words = _join_whitespace(_split(tf.where(special, "", flat), PRE_TOKENIZER))
        error = tf.fill(tf.shape(text), "")
        if self.max_word_bytes is not None:
            too_long = tf.strings.length(words.flat_values) > self.max_word_bytes
            in_text = tf.reduce_any(segments.with_flat_values(tf.reduce_any(words.with_flat_values(too_long), 1)), 1)
            error = tf.where(in_text, f"text has a word of more than {self.max_word_bytes} bytes (a run of letters, "
                                      "digits, other symbols or whitespace, which GPT-2's pre-tokenizer keeps whole)",
                             error)
            words = words.with_flat_values(tf.where(too_long, "", words.flat_values))  # never merged
        words = tf.concat([words, tf.ragged.boolean_mask(flat[:, None], special[:, None])], axis=1)
        unique, index = tf.unique(words.flat_values)
        ids = words.with_flat_values(tf.gather(self._encode_words(unique), index))  # "<|endoftext|>" is a token
        per_text = tf.RaggedTensor.from_row_splits(ids, segments.row_splits).merge_dims(1, 2).merge_dims(1, 2)
        return per_text, error

    def _encode_words(self, words):
        """Each pre-token's ids, a ragged [words, (ids)]: tiktoken's byte-pair merge."""
        pieces = tf.strings.bytes_split(words)
        byte_values = tf.cast(tf.reshape(tf.io.decode_raw(pieces.flat_values, tf.uint8), [-1]), tf.int32)
        symbols = pieces.with_flat_values(tf.gather(self.byte_chars, byte_values))
        lengths, joined = symbols.row_lengths(), tf.strings.reduce_join(symbols, axis=1)
        # A word that is itself a token is taken whole (tiktoken's first look-up): one symbol, the word.
        whole = tf.repeat(self.ranks.lookup(joined) != _NO_RANK, lengths)
        first = tf.range(tf.size(symbols.flat_values, tf.int64)) == tf.repeat(symbols.row_starts(), lengths)
        keep = ~whole | first
        values = tf.boolean_mask(tf.where(whole, tf.repeat(joined, lengths), symbols.flat_values), keep)
        rows = tf.boolean_mask(symbols.value_rowids(), keep)
        n = tf.shape(words, out_type=tf.int64)[0]

        def pairs(values, rows):
            """Each symbol joined with the next one, and the rank of that pair (none across words)."""
            following = tf.concat([values, [""]], 0)[1:]
            same_word = tf.concat([rows, [-1]], 0)[1:] == rows
            pair = tf.strings.join([values, following])
            return pair, tf.where(same_word, self.ranks.lookup(pair), _NO_RANK)

        def merge_once(values, rows):
            pair, rank = pairs(values, rows)
            best = tf.math.unsorted_segment_min(rank, rows, n)  # per word; without a pair: _NO_RANK
            index = tf.range(tf.size(values, tf.int64))
            first_best = tf.math.unsorted_segment_min(tf.where(rank == tf.gather(best, rows), index, 2**62), rows, n)
            merged = (index == tf.gather(first_best, rows)) & (rank != _NO_RANK)  # the leftmost best pair
            dropped = tf.concat([[False], merged], 0)[:-1]
            values = tf.where(merged, pair, values)
            return tf.boolean_mask(values, ~dropped), tf.boolean_mask(rows, ~dropped)

        def can_merge(values, rows):
            return tf.reduce_any(pairs(values, rows)[1] != _NO_RANK)

        values, rows = tf.while_loop(can_merge, merge_once, (values, rows),
                                     shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None])))
        return tf.RaggedTensor.from_value_rowids(self.ranks.lookup(values), rows, nrows=n)

    def detokenize(self, ids):
        """The bytes of ragged `ids` [batch, (tokens)] as strings [batch] (ids must be in the vocabulary)."""
        chars = tf.strings.reduce_join(tf.gather(self.tokens, ids), axis=1)
        code_points = tf.strings.unicode_decode(chars, "UTF-8")
        return tf.strings.reduce_join(tf.gather(self.raw_bytes, tf.gather(self.char_bytes, code_points)), axis=1)


class CharacterGraphTokenizer(tf.Module):
    """A character model's vocabulary as TensorFlow ops: token i is `characters[i]`.

    A row with a character outside the vocabulary gets an error naming it. Bytes that are not UTF-8 read as U+FFFD
    (one of the characters, or an error): the exported signatures refuse such text before it comes here.
    """

    def __init__(self, characters: Sequence[str]):
        super().__init__(name="character_tokenizer")
        self.characters = tf.constant(list(characters))
        self.ids = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(list(characters), tf.range(len(characters), dtype=tf.int32)), -1)
        self.vocab_size = len(characters)

    def __call__(self, text):
        chars = tf.strings.unicode_split(text, "UTF-8", errors="replace", replacement_char=0xFFFD)
        ids = tf.ragged.map_flat_values(self.ids.lookup, chars)
        unknown = tf.ragged.boolean_mask(chars, ids < 0)
        first = tf.strings.reduce_join(unknown[:, :1], axis=1)
        error = tf.where(first == "", "", tf.strings.join([
            "text has a character the model does not know: '", first, "' (", _code_point(first),
            "; a character model of ", str(self.vocab_size), " characters)"]))
        return tf.ragged.map_flat_values(tf.maximum, ids, 0), error

    def detokenize(self, ids):
        return tf.strings.reduce_join(tf.gather(self.characters, ids), axis=1)


def _code_point(character):
    """"U+200B" for each one-character string of `character` [batch], as Unicode writes it (4 to 6 hex digits): a
    character that shows as nothing (a zero-width space, a carriage return) is still named."""
    point = tf.strings.unicode_decode(character, "UTF-8").to_tensor(shape=[None, 1])[:, 0]
    digits = tf.gather(tf.constant(list("0123456789ABCDEF")),
                       tf.bitwise.bitwise_and(tf.bitwise.right_shift(point[:, None], [20, 16, 12, 8, 4, 0]), 15))
    width = 4 + tf.cast(point > 0xFFFF, tf.int32) + tf.cast(point > 0xFFFFF, tf.int32)
    shown = tf.ragged.boolean_mask(digits, tf.range(6)[None, :] >= 6 - width[:, None])
    return tf.strings.join(["U+", tf.strings.reduce_join(shown, axis=1)])


def tf_text():
    """tensorflow-text, whose RE2 ops the pre-tokenizer uses (TF Serving links them)."""
    import tensorflow_text

    return tensorflow_text
