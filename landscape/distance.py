"""How far IMP moves between successive levels: weight distance and mask overlap.

For trunk levels L and L+1 with final weights ``w_L``, ``w_{L+1}`` and masks ``m_L``,
``m_{L+1}`` (over the prunable tensors, True = kept):

* ``weight_distance = || w_L - w_{L+1} ||_2`` over the prunable tensors (pruned weights
  are stored as exact zeros, so this is the distance between the two sparse networks);
* ``relative_weight_distance = weight_distance / || w_L ||_2``;
* ``mask_jaccard = |m_L and m_{L+1}| / |m_L or m_{L+1}|``, the Jaccard overlap of the
  masks. IMP's masks are nested, so it equals the density ratio ``kept_{L+1} / kept_L``
  (1 - the pruning fraction, up to rounding) and tests that the masks really are nested.

The distance between level L and L+1 grows as rewinding fails to bring the network back
to the same basin (cf. Frankle et al. 2020; Paul et al. 2023, "Unmasking the lottery
ticket hypothesis", where successive levels are compared through error barriers).

Enable it with ``landscape.distance = true`` (during ``lth run``) or ``lth distance RUN``.
"""

import numpy as np

KEYS = {"distance": (bool, False)}  # landscape.distance: measure after every level


def variants(ls, level: int) -> list[dict]:
    """One variant, with no settings: nothing but the two levels changes its numbers."""
    return [{}] if ls.extra("distance") else []


def compute(context, level: int, settings: dict) -> dict:
    a, b = context.level(level), context.level(level + 1)
    names = sorted(a.mask)
    squares = {name: float(((a.weights[name].double() - b.weights[name].double()) ** 2).sum()) for name in names}
    norm = np.sqrt(sum(float((a.weights[name].double() ** 2).sum()) for name in names))
    both = sum(int((a.mask[name] & b.mask[name]).sum()) for name in names)
    either = sum(int((a.mask[name] | b.mask[name]).sum()) for name in names)
    distance = float(np.sqrt(sum(squares.values())))
    return {"levels": np.array([level, level + 1]), "weight_distance": distance,
            "relative_weight_distance": distance / norm if norm > 0 else float("nan"),
            "mask_jaccard": both / either if either else float("nan"),
            "per_tensor": {"names": np.array(names, dtype="S"), "distance": np.sqrt(list(squares.values()))}}


def columns(tree: dict) -> dict:
    return {"weight_distance_to_next": tree["weight_distance"], "mask_jaccard_to_next": tree["mask_jaccard"]}
