"""Recipes: every option of ``fkd train`` in a TOML file, so a result is reproducible from a
file instead of a long command line.

A recipe's keys are ``fkd train``'s option names without the leading ``--``, dashes written
as underscores (``--batch-size 32`` is ``batch_size = 32``). The repeatable KEY=VALUE options
are TOML tables: ``aug = {rotate_deg = 10}`` is ``--aug rotate_deg=10`` and ``head_opt =
{temperature = 2.0}`` is ``--head-opt temperature=2.0``. Relative paths (``data``,
``models``, ``corrections``) are relative to the recipe's own folder. Options given on the
command line override the file's; for ``aug`` and ``head_opt`` they override key by key.

This module is the one reader, validator and merger of recipes: ``fkd train --config`` and
``fkd pipeline`` both use it, so a recipe means the same thing to both.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the key and the problem."""


# Types each option accepts: what ``fkd train`` takes, in TOML's own types.
_NUMBER = (int, float)
OPTIONS: dict[str, tuple] = {
    "data": (str,),
    "arch": (str,),
    "head": (str,),
    "width": _NUMBER,
    "depth": (int,),
    "dropout": _NUMBER,
    "head_opt": (dict,),
    "epochs": (int,),
    "batch_size": (int,),
    "lr": _NUMBER,
    "schedule": (str,),
    "patience": (int,),
    "augment": (str,),
    "aug": (dict,),
    "val_fraction": _NUMBER,
    "holdout_fraction": _NUMBER,
    "seed": (int,),
    "max_minutes": _NUMBER,
    "steps_per_epoch": (int,),
    "models": (str,),
    "run_id": (str,),
    "corrections": (str,),
    "source_offset": (str,),
    "strategy": (str,),
    "precision": (str,),
    "ema": _NUMBER,
    "pseudo_labels": (str,),
    "pseudo_weight": _NUMBER,
}
#: Options holding a path, resolved against the recipe's folder.
PATH_OPTIONS = ("data", "models", "corrections")
#: Options that are KEY=VALUE lists on the command line and tables in a recipe.
TABLE_OPTIONS = ("aug", "head_opt")
_TYPE_NAMES = {str: "text", int: "a whole number", dict: "a table"}

AUGMENT_PRESETS = {
    "none": {k: 0.0 for k in ("flip_prob", "rotate_prob", "scale_prob", "shift_prob",
                              "brightness_prob", "contrast_prob", "noise_prob", "blur_prob")},
    "default": {},
}
SOURCE_OFFSET_MODES = ("off", "learn")


@dataclass
class Recipe:
    """A recipe file read and checked: its options, and where it came from."""

    path: Path
    sha256: str
    options: dict

    def provenance(self) -> dict:
        """What a run's config.json records about the file it was made from."""
        return {"path": str(self.path), "sha256": self.sha256}


def read_toml(path: str | Path) -> tuple[dict, str]:
    """A TOML file's contents and SHA-256; a missing or malformed file is a RecipeError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return tomllib.loads(raw.decode("utf-8")), hashlib.sha256(raw).hexdigest()
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: is not valid TOML ({exc})") from None


def check_options(options: dict, where: str, base: Path | None = None) -> dict:
    """Train options as a recipe spells them, checked key by key; paths made absolute
    against ``base``. ``where`` names the file (and table) in every error."""
    checked = {}
    for key, value in options.items():
        if key not in OPTIONS:
            near = difflib.get_close_matches(key.replace("-", "_"), OPTIONS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise RecipeError(f"{where}: unknown key {key!r}{hint}; known keys: "
                              f"{', '.join(OPTIONS)}")
        types = OPTIONS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = "a number" if types == _NUMBER else _TYPE_NAMES[types[0]]
            raise RecipeError(f"{where}: {key} must be {wanted}, not {_describe(value)}")
        if key in TABLE_OPTIONS:
            for k, v in value.items():
                if isinstance(v, (dict, list)):
                    raise RecipeError(f"{where}: {key}.{k} must be a single value, not "
                                      f"{_describe(v)}")
        if key in PATH_OPTIONS and base is not None:
            value = str(base / Path(value).expanduser())  # an absolute path stays as it is
        checked[key] = value
    return checked


def _describe(value) -> str:
    text = json.dumps(value, default=str)
    kind = type(value).__name__
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def read_recipe(path: str | Path) -> Recipe:
    """A train recipe file, every key checked (unknown keys and wrong types name the file)."""
    path = Path(path)
    options, digest = read_toml(path)
    return Recipe(path, digest, check_options(options, str(path), path.parent))


def merge(recipe: dict, command_line: dict) -> dict:
    """The recipe's options with the command line's on top; tables merge key by key."""
    merged = dict(recipe)
    for key, value in command_line.items():
        if key in TABLE_OPTIONS and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def key_values(pairs: list[str], what: str) -> dict:
    """``--aug KEY=VALUE`` pairs as a table; values parse as JSON where they can."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RecipeError(f"{what} {pair!r} must look like KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def augment_config(preset: str, overrides: dict) -> dict | None:
    """The full augmentation settings for a preset and its overrides (None: no augmenting)."""
    from fkd_core.augment import AugmentConfig

    if preset not in AUGMENT_PRESETS:
        raise RecipeError(f"augment must be one of {', '.join(AUGMENT_PRESETS)}, "
                          f"not {preset!r}")
    if preset == "none" and not overrides:
        return None
    try:
        return AugmentConfig.from_dict({**AUGMENT_PRESETS[preset], **overrides}).to_dict()
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"bad augmentation setting: {exc}") from None


#: What ``fkd train`` does for an option neither the command line nor the recipe sets.
DEFAULTS = {
    "arch": "resnet", "head": "heatmap", "width": 1.0, "depth": None, "dropout": None,
    "head_opt": {}, "epochs": 30, "batch_size": 64, "lr": 1e-3, "schedule": "cosine",
    "patience": 10, "augment": "default", "aug": {}, "val_fraction": 0.1,
    "holdout_fraction": 0.0, "seed": 0, "max_minutes": None, "steps_per_epoch": None,
    "data": None, "models": None, "run_id": None, "corrections": None,
    "source_offset": "off", "strategy": "auto", "precision": "float32", "ema": None,
    "pseudo_labels": None, "pseudo_weight": 0.5,
}
assert set(DEFAULTS) == set(OPTIONS)


def train_config(options: dict):
    """The :class:`~fkd_core.training.TrainConfig` for merged options (defaults filled in)
    and the architecture checked by building it, before any data is read."""
    from fkd_core.architectures import create_model
    from fkd_core.training import TrainConfig

    o = {**DEFAULTS, **options}
    if o["source_offset"] not in SOURCE_OFFSET_MODES:
        raise RecipeError(f"source_offset must be one of {', '.join(SOURCE_OFFSET_MODES)}, "
                          f"not {o['source_offset']!r}")
    try:
        config = TrainConfig(
            arch=o["arch"], head=o["head"], width=float(o["width"]), depth=o["depth"],
            dropout=o["dropout"], head_options=dict(o["head_opt"]), epochs=o["epochs"],
            batch_size=o["batch_size"], lr=float(o["lr"]), schedule=o["schedule"],
            patience=o["patience"], val_fraction=float(o["val_fraction"]),
            holdout_fraction=float(o["holdout_fraction"]), seed=o["seed"],
            augment=augment_config(o["augment"], dict(o["aug"])),
            max_minutes=o["max_minutes"], steps_per_epoch=o["steps_per_epoch"],
            learn_source_offset=o["source_offset"] == "learn",
            strategy=o["strategy"], precision=o["precision"],
            ema=None if o["ema"] is None else float(o["ema"]),
            pseudo_labels=o["pseudo_labels"], pseudo_weight=float(o["pseudo_weight"]),
        )
        create_model(config.arch, width=config.width, depth=config.depth, head=config.head,
                     dropout=config.dropout, **config.head_options)
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, RecipeError):
            raise
        raise RecipeError(str(exc).strip("'\"")) from None
    return config
