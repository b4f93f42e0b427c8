"""Agreement between component sets (IPG paper, Table 2): Dice overlap, and its distribution for
random sets in :func:`ipgkit.stats.random_dice`."""

from __future__ import annotations

from collections.abc import Collection

from ipgkit.components import ComponentSet
from ipgkit.errors import IpgkitError


def dice(first: Collection[int] | ComponentSet, second: Collection[int] | ComponentSet) -> float:
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of two sets of unit indices (or ComponentSets of
    units at the same hook).

    Example:
        >>> dice({1, 2, 3, 4}, {3, 4, 5, 6})
        0.5
    """
    sets = []
    for item in (first, second):
        if isinstance(item, ComponentSet):
            if item.indices is None or item.kind == "direction":
                raise IpgkitError("dice needs explicit unit indices, not all units or directions")
            item = item.indices
        sets.append(set(int(i) for i in item))
    both_sets = isinstance(first, ComponentSet) and isinstance(second, ComponentSet)
    if both_sets and first.hook_name != second.hook_name:
        raise IpgkitError(
            f"dice of sets at different hooks: {first.hook_name} vs {second.hook_name}"
        )
    if not sets[0] and not sets[1]:
        raise IpgkitError("dice of two empty sets is undefined")
    return 2 * len(sets[0] & sets[1]) / (len(sets[0]) + len(sets[1]))
