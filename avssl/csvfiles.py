"""Reading user-supplied CSV files as strings, with one-line errors.

Every index, score and manifest CSV in avssl goes through :func:`read_text_csv`, so they all
accept a BOM and CRLF lines and all refuse the same damage with a message naming the file:

- a row with more fields than the header (a label with an unquoted comma, trailing commas).
  pandas' default would silently turn the extra leading field into an index and shift every
  column by one when all rows have it, or raise a traceback when only some do;
- bytes that are not UTF-8, or a file pandas cannot tokenise at all;
- a header naming one column twice (pandas would rename the second ``name.1``).
"""
from __future__ import annotations

import csv
import io
import os
import warnings

import pandas as pd

from avssl.errors import DataError


def read_text_csv(path: str | os.PathLike, expected: str, *, header: bool = True,
                  skip_comments: bool = False, skipinitialspace: bool = True,
                  what: str = "") -> pd.DataFrame:
    """``path`` as a DataFrame of strings (empty cells stay ``""``).

    ``expected`` describes the format for the error message; ``header=False`` reads headerless
    files (integer column names); ``skip_comments`` drops lines starting with ``#``; ``what``
    (e.g. ``"predictions file"``) prefixes the path in errors. Raises :class:`DataError`.
    """
    name = f"{what} {path}" if what else str(path)
    try:
        with open(path, encoding="utf-8-sig", newline=None) as f:
            body = "".join(line for line in f
                           if not (skip_comments and line.lstrip().startswith("#")))
        if header:  # pandas renames a repeated column "a.1", which then reads as its own field
            first = next(csv.reader(io.StringIO(body), skipinitialspace=skipinitialspace), [])
            twice = sorted({c for c in first if first.count(c) > 1})
            if twice:
                raise DataError(f"{name}: the header names {twice[0]!r} twice; expected {expected}")
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(body), header=0 if header else None, dtype=str,
                               keep_default_na=False, na_filter=False,
                               skipinitialspace=skipinitialspace, quotechar='"', index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError,
            UnicodeDecodeError) as e:
        why = " ".join(str(e).split())
        raise DataError(f"{name}: not a readable CSV ({why}); expected {expected} (fields "
                        "holding a comma in double quotes)") from None
