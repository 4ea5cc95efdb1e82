"""Detokenizers applied to a text before it is scored: WikiText's spaced-out punctuation joined again,
as the GPT-2 paper's invertible detokenizers do. Plain Python, so the command line lists them without
loading TensorFlow.

>>> DETOKENIZERS["wikitext"]("a 1 @,@ 000 @-@ year ( old ) city")
'a 1,000-year (old) city'
"""

from __future__ import annotations

import re


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenization artefacts (" @-@ ", " , ", "( x )", "= = Heading = =") as the GPT-2
    paper's invertible detokenizers do, so the model sees ordinary text."""
    for spaced, joined in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                           (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "), (" 's", "'s"),
                           ("s '", "s'"), ("= = = =", "===="), ("= = =", "==="), ("= =", "=="),
                           (" \r\n", "\r\n"), (" \n", "\n"), ("\n ", "\n")):  # (a copy with CRLF line ends too)
        text = text.replace(spaced, joined)
    for pattern, joined in ((r"\(\s*([^)]*?)\s*\)", r"(\1)"), (r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
                            (r"{\s*([^}]*?)\s*}", r"{\1}"), (r'"\s*([^"]*?)\s*"', r'"\1"')):
        text = re.sub(pattern, joined, text)
    return text


DETOKENIZERS = {"none": lambda text: text, "wikitext": wikitext_detokenize}
