"""fkd: a facial keypoint detection workbench (library half; no UI imports)."""

__version__ = "0.1.0"
