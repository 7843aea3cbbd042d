"""Pareto arithmetic in pure Python: non-dominated sorting, crowding, MO-ASHA's promotion
rule, the knee, and the 2-D hypervolume. No Ray, no Optuna: the scheduler, the trial table,
the analysis and the benchmarks share it.

Points are tuples in which every coordinate is to be maximised; a cost to be minimised
enters negated, as (val_acc, -params).
"""

from __future__ import annotations

import math
from typing import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """a is at least as good as b everywhere and better somewhere.

    >>> dominates((0.9, -1), (0.8, -1)), dominates((0.9, -2), (0.8, -1)), dominates((0.8, -1), (0.8, -1))
    (True, False, False)
    """
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def nondominated_ranks(points: Sequence[Point]) -> list[int]:
    """Each point's front: 0 for the non-dominated, 1 for those only the 0s dominate, ...

    >>> nondominated_ranks([(0.9, -4), (0.8, -1), (0.85, -2), (0.7, -3), (0.6, -5)])
    [0, 0, 0, 1, 2]
    >>> nondominated_ranks([(0.5, -1), (0.5, -1), (0.5, -2), (0.4, -1)])  # equal points share a front
    [0, 0, 1, 1]
    """
    if points and len(points[0]) == 2:
        return _ranks_2d(points)
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    front = 0
    while left:
        current = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in current:
            ranks[i] = front
        left -= current
        front += 1
    return ranks


def _ranks_2d(points: Sequence[Point]) -> list[int]:
    """`nondominated_ranks` of 2-D points in O(n log n): a rung of a thousand trials is
    sorted at every decision, and the general method is cubic.

    Points are taken best first on the first coordinate. A front's members then come with
    the second coordinate rising, so its latest member is the one most able to dominate
    the next point; fronts are searched by bisection for the first whose latest member
    does not dominate it.
    """
    ranks = [0] * len(points)
    latest: list[Point] = []  # per front, its member seen last
    for i in sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1])):
        p = points[i]
        low, high = 0, len(latest)
        while low < high:
            middle = (low + high) // 2
            q = latest[middle]  # q[0] >= p[0] by the order; an equal point does not dominate
            if q[1] > p[1] or (q[1] == p[1] and q[0] > p[0]):
                low = middle + 1
            else:
                high = middle
        if low == len(latest):
            latest.append(p)
        else:
            latest[low] = p
        ranks[i] = low
    return ranks


def crowding_distances(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance of each point within one front (inf at the ends).

    Per coordinate, the gap between a point's two neighbours divided by the front's range;
    summed over coordinates. A point in a sparse part of the front scores high.

    The middle point: (0.9 - 0.8) / 0.1 on accuracy plus (-1 - -4) / 3 on cost.

    >>> crowding_distances([(0.9, -4), (0.8, -1), (0.85, -2)])
    [inf, inf, 2.0]
    >>> [round(d, 4) for d in crowding_distances([(0.9, -4), (0.8, -1), (0.85, -2), (0.88, -3)])]
    [inf, inf, 1.4667, 1.1667]
    """
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for axis in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][axis])
        low, high = points[order[0]][axis], points[order[-1]][axis]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(order, order[1:], order[2:]):
            distance[here] += (points[after][axis] - points[before][axis]) / (high - low)
    return distance


def pareto_order(points: Sequence[Point]) -> list[int]:
    """Indices best first: by front, then by crowding distance within the front (sparser
    first), then by position (earlier first), so ties never favour a newcomer.

    >>> pareto_order([(0.7, -3), (0.9, -4), (0.8, -1), (0.85, -2), (0.88, -3)])
    [1, 2, 3, 4, 0]
    """
    ranks = nondominated_ranks(points)
    crowd = [0.0] * len(points)
    for front in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == front]
        for i, d in zip(members, crowding_distances([points[i] for i in members])):
            crowd[i] = d
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowd[i], i))


def promote(recorded: dict[str, Point], key: str, point: Point, reduction_factor: int) -> bool:
    """MO-ASHA's rule at one rung: True to promote `point` (trial `key`) given the points
    already `recorded` there.

    The n points at the rung, the new one included (last, so it loses ties), are put in
    `pareto_order`; the top ceil(n / reduction_factor) go on. With one objective this is
    ASHA's rule (`search.tune.rungs.judge`), except that ASHA cuts at an interpolated quantile:
    a value between the two recorded values around the cut may be judged differently.

    >>> promote({}, "a", (0.1, -9), 3)
    True
    >>> rung = {"a": (0.9, -4.0), "b": (0.8, -1.0), "c": (0.7, -3.0)}
    >>> promote(rung, "d", (0.6, -5.0), 3), promote(rung, "d", (0.95, -5.0), 3)
    (False, True)
    >>> promote(rung, "d", (0.85, -2.0), 3)  # on the front, but its two ends go first
    False
    """
    keys = [k for k in recorded if k != key] + [key]
    points = [recorded[k] for k in keys[:-1]] + [point]
    keep = math.ceil(len(points) / reduction_factor)
    return pareto_order(points).index(len(points) - 1) < keep


def front_indices(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points (front 0), in the order given."""
    return [i for i, r in enumerate(nondominated_ranks(points)) if r == 0]


def knee(front: Sequence[tuple[float, float]]) -> int | None:
    """Index of the knee of a 2-D front of (accuracy, cost) pairs (cost to be minimised):
    the point furthest from the straight line between the front's two ends, both axes
    scaled to [0, 1]. With fewer than three points, the most accurate one.

    >>> knee([(0.80, 1.0), (0.90, 2.0), (0.91, 8.0)]), knee([(0.8, 1.0), (0.9, 2.0)])
    (1, 1)
    """
    if not front:
        return None
    if len(front) < 3:
        return max(range(len(front)), key=lambda i: front[i][0])
    accs, costs = [p[0] for p in front], [p[1] for p in front]
    span_a, span_c = (max(accs) - min(accs)) or 1.0, (max(costs) - min(costs)) or 1.0
    scaled = [((a - min(accs)) / span_a, (c - min(costs)) / span_c) for a, c in front]
    first, last = min(scaled, key=lambda p: p[1]), max(scaled, key=lambda p: p[1])
    dx, dy = last[1] - first[1], last[0] - first[0]
    norm = math.hypot(dx, dy) or 1.0
    # Distance above the chord (accuracy side): a knee gains accuracy early for little cost.
    return max(range(len(front)), key=lambda i: ((scaled[i][0] - first[0]) * dx - (scaled[i][1] - first[1]) * dy) / norm)


def hypervolume(points: Sequence[tuple[float, float]], reference_cost: float, reference_acc: float = 0.0) -> float:
    """The area that (accuracy, cost) pairs dominate, up to the reference point
    (`reference_acc`, `reference_cost`), with cost scaled by `reference_cost`: 1.0 would be
    accuracy 1 at cost 0. Points at or past the reference add nothing.

    0.8 x (4 - 1) / 4 for the first point, plus the 0.1 the second adds x (4 - 2) / 4;
    a dominated point and one past the reference change nothing:

    >>> round(hypervolume([(0.8, 1.0), (0.9, 2.0)], reference_cost=4.0), 6)
    0.65
    >>> round(hypervolume([(0.8, 1.0), (0.9, 2.0), (0.7, 3.0), (0.99, 5.0)], reference_cost=4.0), 6)
    0.65
    """
    inside = sorted((c, a) for a, c in points if c < reference_cost and a > reference_acc)
    area, best = 0.0, reference_acc
    for cost, acc in inside:  # cheapest first: each point adds the accuracy it gains over all cheaper ones
        if acc > best:
            area += (acc - best) * (reference_cost - cost) / reference_cost
            best = acc
    return area
