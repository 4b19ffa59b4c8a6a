"""What Kaggle's Facial Keypoints Detection files are: their names, their columns, and the one
error type every reader raises when a file does not match."""

from __future__ import annotations

from collections.abc import Sequence

from fkd_core.keypoints import COLUMN_NAMES

TRAINING, TEST, LOOKUP, SAMPLE = (
    "training.csv",
    "test.csv",
    "IdLookupTable.csv",
    "SampleSubmission.csv",
)
CSV_NAMES = (TRAINING, TEST, LOOKUP, SAMPLE)
ARCHIVE = "facial-keypoints-detection.zip"
LOOKUP_COLUMNS = ("RowId", "ImageId", "FeatureName", "Location")
SUBMISSION_COLUMNS = ("RowId", "Location")
TEST_COLUMNS = ("ImageId", "Image")
TRAINING_COLUMNS = (*COLUMN_NAMES, "Image")

EXPECTED_FILES = (
    f"expected {TRAINING} or training.zip (and {TEST} or test.zip, {LOOKUP}, {SAMPLE}), "
    f"or the competition archive {ARCHIVE}"
)

#: How many offenders an error message names before it only counts the rest: a message
#: must stay readable however large the bad input is.
NAMED = 5
_NAME_CHARS = 40


class KaggleFormatError(ValueError):
    """A data file that does not match Kaggle's format; the message says where and what."""

    def __init__(self, file: str, problem: str, line: int | None = None):
        self.file, self.line, self.problem = file, line, problem
        where = file if line is None else f"{file}, line {line}"
        if line is not None and line >= 2:
            where += f" (data row {line - 1})"
        super().__init__(f"{where}: {problem}")


def short(name: str) -> str:
    """``repr`` of a name from a file, cut to a readable length."""
    if len(name) <= _NAME_CHARS:
        return repr(name)
    return repr(name[:_NAME_CHARS]) + f"… ({len(name)} characters)"


def some(shown: Sequence[str], what: str = "more", total: int | None = None,
         sep: str = ", ") -> str:
    """The first :data:`NAMED` items of ``shown`` (already formatted; ``total`` of them in all
    when only the first few were formatted), then a count of the rest."""
    total = len(shown) if total is None else total
    text = sep.join(shown[:NAMED]) or "none"
    rest = total - min(NAMED, len(shown))
    return text if rest <= 0 else f"{text}{sep}… and {rest} {what}"
