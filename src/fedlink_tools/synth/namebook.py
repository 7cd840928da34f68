"""The name vocabulary of one population together with the variants that records use.

Nicknames and accent-free spellings are appended to the population's vocabulary once, so a record's
nickname or lost accent is a change of integer code, done for millions of records at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlink.linkage.nicknames import NICKNAMES
from fedlink_tools.synth.names import ORIGINS, SURNAMES, codes_of, strip_accents


@dataclass(frozen=True)
class NameBook:
    """Vocabulary plus per-code lookups; every array is indexed by vocabulary code."""

    vocabulary: tuple[str, ...]
    #: The nicknames of code ``c`` are ``nickname_codes[nickname_start[c]:][:nickname_count[c]]``.
    nickname_start: np.ndarray
    nickname_count: np.ndarray
    nickname_codes: np.ndarray
    #: Code of the same name without accents (the code itself where it has none).
    ascii_code: np.ndarray
    #: The two parts of a double-barrelled surname, -1 where the name is not one.
    barrel_parts: np.ndarray
    #: Every embedded surname, to draw new (married or second) surnames from.
    surname_codes: np.ndarray


def build_name_book(vocabulary: tuple[str, ...], barrel_parts: np.ndarray) -> NameBook:
    """Extend ``vocabulary`` with nicknames and accent-free spellings and index them."""
    words = list(vocabulary)
    code_of = {word: code for code, word in enumerate(words)}

    def intern(word: str) -> int:
        if word not in code_of:
            code_of[word] = len(words)
            words.append(word)
        return code_of[word]

    base_size = len(vocabulary)
    nickname_lists: list[list[int]] = []
    for name in vocabulary:
        nickname_lists.append([intern(nickname.capitalize()) for nickname in NICKNAMES.get(name.lower(), ())])
    ascii_of = [intern(strip_accents(name)) for name in vocabulary]

    size = len(words)
    nickname_count = np.zeros(size, dtype=np.int32)
    nickname_count[:base_size] = [len(codes) for codes in nickname_lists]
    nickname_start = np.zeros(size, dtype=np.int32)
    nickname_start[1:] = np.cumsum(nickname_count)[:-1]
    nickname_codes = np.array([code for codes in nickname_lists for code in codes], dtype=np.int32)
    ascii_code = np.arange(size, dtype=np.int32)
    ascii_code[:base_size] = ascii_of
    parts = np.full((size, 2), -1, dtype=np.int32)
    parts[:base_size] = barrel_parts
    surnames = np.unique(np.concatenate([codes_of(SURNAMES[origin]) for origin in ORIGINS]))
    return NameBook(
        vocabulary=tuple(words),
        nickname_start=nickname_start,
        nickname_count=nickname_count,
        nickname_codes=nickname_codes,
        ascii_code=ascii_code,
        barrel_parts=parts,
        surname_codes=surnames.astype(np.int32),
    )
