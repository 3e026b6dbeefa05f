"""The prune patterns of a config stored before named layers, in today's names.

``prune.exclude`` and ``prune.layer_fractions`` hold shell-style patterns (``fnmatch``,
case-sensitive) over the names of the prunable tensors (:mod:`imp.pruning`); a config
stored before named layers wrote them against the old names (:mod:`imp.legacy`). Each
pattern becomes the first of these that matches exactly the new names of the prunable
tensors it matched:

1. the pattern itself (``*.weight``; ``fc.weight`` in a resnet, whose name is unchanged);
2. the one new name, when it matched one tensor (``5.weight`` -> ``fc.weight``);
3. ``<prefix>*<suffix>``, ``<prefix>*`` or ``*<suffix>`` with the longest prefix and suffix
   common to the new names (conv2's ``0.*`` -> ``conv*.weight``);
4. else the new names themselves, one pattern each (a ``layer_fractions`` pattern becomes
   one entry per name, each with the pattern's rate).

A pattern that matched no tensor is left as it is. Every tensor must be treated as before:
excluded, pruned at an own rate (the first matching ``layer_fractions`` pattern in the
stored order decides, as in :func:`imp.pruning.groups`) or at the shared fraction. When
overlapping ``layer_fractions`` patterns translated one by one would change a tensor's
rate, ``layer_fractions`` becomes one entry per tensor, with the rate it had.
"""

import os
from collections.abc import Mapping
from fnmatch import fnmatchcase

from torch import nn

from imp.models import prunable_names


def translate_prune(config: dict, model: nn.Module, renames: Mapping[str, str]) -> tuple[dict, list[str]]:
    """``config`` (plain data, as stored) with its prune patterns translated, and one line
    per pattern changed or left; ``renames`` maps each old state_dict key of ``model`` to
    its key now (:func:`imp.legacy.old_to_new`)."""
    prune = config.get("prune", {})
    exclude, fractions = list(prune.get("exclude", [])), dict(prune.get("layer_fractions", {}))
    if not exclude and not fractions:
        return config, []
    new_names = prunable_names(model)
    old_of = {new: old for old, new in renames.items()}
    pairs = [(old_of[name], name) for name in new_names]
    lines: list[str] = []

    def translate(key: str, pattern: str) -> list[str]:
        matched = [new for old, new in pairs if fnmatchcase(old, pattern)]
        found = _patterns(pattern, matched, new_names) if matched else [pattern]
        if found != [pattern]:
            lines.append(f"prune.{key} {pattern!r} -> {', '.join(map(repr, found))}")
        elif not matched:
            lines.append(f"prune.{key} {pattern!r} matched no tensor and is left as it was")
        return found

    new_exclude = list(dict.fromkeys(q for p in exclude for q in translate("exclude", p)))
    new_fractions: dict[str, float] = {}
    for pattern, rate in fractions.items():
        for q in translate("layer_fractions", pattern):
            new_fractions.setdefault(q, rate)
    new_fractions = dict(sorted(new_fractions.items()))  # the stored (canonical) order
    before = {new: _treatment(old, exclude, fractions) for old, new in pairs}
    if any(_treatment(new, new_exclude, new_fractions) != treatment for new, treatment in before.items()):
        new_fractions = {new: rate for new, rate in before.items() if not isinstance(rate, str)}
        lines.append("prune.layer_fractions overlap; written as one rate per tensor: "
                     + ", ".join(f"{new!r} = {rate}" for new, rate in new_fractions.items()))
    translated = dict(prune)
    if "exclude" in prune:
        translated["exclude"] = new_exclude
    if "layer_fractions" in prune:
        translated["layer_fractions"] = new_fractions
    return {**config, "prune": translated}, lines


def _patterns(pattern: str, matched: list[str], names: list[str]) -> list[str]:
    """The first of the module docstring's candidates matching exactly ``matched`` in ``names``."""
    prefix = os.path.commonprefix(matched)
    suffix = os.path.commonprefix([name[::-1] for name in matched])[::-1]
    candidates = [pattern, *(matched if len(matched) == 1 else []),
                  f"{prefix}*{suffix}", f"{prefix}*", f"*{suffix}"]
    for candidate in candidates:
        if [name for name in names if fnmatchcase(name, candidate)] == matched:
            return [candidate]
    return matched


def _treatment(name: str, exclude: list[str], fractions: Mapping[str, float]) -> str | float:
    if any(fnmatchcase(name, pattern) for pattern in exclude):
        return "excluded"
    return next((rate for pattern, rate in fractions.items() if fnmatchcase(name, pattern)), "shared")
