"""Groups of K images for the group-wise classifier: the paper's greedy rule, the release's, and
a balanced variant of the greedy rule (`_balanced_partners`).

Paper, "Training details" (greedy mini-batch sampling): every image is once the anchor of a group
per epoch; its K-1 partners are the images sharing as many classes with it as possible, ties broken
at random. Two nodes are linked only if they share a class, every node has a self-edge (the edge
set E of the problem definition), so each group comes with its [K, K] adjacency.

Both rules are vectorised in numpy. The greedy rule works on the M distinct label vectors (M is
much smaller than N on real data). For every distinct vector it finds the best overlap level that
still offers K-1 partners, and the candidate vectors at or above it, by looking the vector's
t-class subsets up in a sorted index of the t-class subsets of all vectors (a vector shares >= t
classes with the anchor exactly when it contains one of them), so the cost follows the candidates
found rather than M^2; vectors for which that would cost more (level 0, very large label sets)
get their row of the [M, M] overlap matrix from a matmul instead. Partners above the level are all
taken, those at the level are drawn uniformly without replacement by rank (a cumulative sum over
the candidates' multiplicities and a `searchsorted`). `benchmark()` times two epochs of COCO-sized
data.
"""

import hashlib
import itertools
import math
import time

import numpy as np

from gwsss_jax.common.errors import UserError

RULES = ('greedy', 'release', 'balanced')
# 'balanced' keeps every vector's candidate images in memory: at most this many in all.
_BALANCED_BUDGET = 1 << 26
_RELEASE_DRAWS = 1000  # the release's attempts at finding an identical label vector


def make_groups(label_matrix, num_nodes: int, seed: int, epoch: int, rule: str = 'greedy'):
  """Groups for one epoch: every image is the anchor of exactly one group.

  Args:
    label_matrix: [N, L] bool image-level labels.
    num_nodes: K, images per group.
    seed, epoch: the groups are a deterministic function of (seed, epoch).
    rule: 'greedy' (paper), 'release' (identical label vector within 1000 random draws,
      else any image sharing one random class of the anchor: `_release_partners`) or
      'balanced' (greedy's candidates, the least used first: `_balanced_partners`).

  Returns:
    groups: int32 [N, K]; row i is anchor i followed by its K-1 partners (no repeats under the
      greedy rule; the release's may repeat a partner or the anchor).
    adjacency: float32 [N, K, K]; 1 where two members share a class, and on the diagonal.
      Partners chosen by the fallback (no image shares a class with the anchor) show as 0.
  """
  labels = np.asarray(label_matrix).astype(bool)
  if labels.ndim != 2:
    raise ValueError(f'label_matrix must be [N, L], got shape {labels.shape}')
  n = labels.shape[0]
  if num_nodes < 1:
    raise UserError(f'config.model.num_nodes={num_nodes}: must be >= 1')
  if n < num_nodes:
    raise UserError(f'config.model.num_nodes={num_nodes}: the training split has only {n} '
                    'images, fewer than one group')
  if rule not in RULES:
    raise UserError(f'config.train.group_rule={rule!r}: choose from '
                    f'{", ".join(map(repr, RULES))}')
  rng = np.random.default_rng([seed, epoch, 0x67726f75])
  anchors = np.arange(n, dtype=np.int64)
  if num_nodes == 1:
    partners = np.zeros((n, 0), np.int64)
  elif rule == 'greedy':
    partners = _greedy_partners(labels, num_nodes - 1, rng)
  elif rule == 'balanced':
    partners = _balanced_partners(labels, num_nodes - 1, rng)
  else:
    partners = _release_partners(labels, num_nodes - 1, rng)
  groups = np.concatenate([anchors[:, None], partners], axis=1).astype(np.int32)
  return groups, adjacency_of(labels, groups)


def adjacency_of(label_matrix, groups) -> np.ndarray:
  """[N, K, K] float32: 1 where two group members share a class, 1 on the diagonal."""
  members = np.asarray(label_matrix, bool)[groups].astype(np.float32)  # [N, K, L]
  shared = np.einsum('nkl,njl->nkj', members, members) > 0
  k = groups.shape[1]
  return (shared | np.eye(k, dtype=bool)[None]).astype(np.float32)


def _distinct_ranks(rng, sizes, excluded, count):
  """Uniform draws without replacement: `count` ranks in [0, sizes) avoiding `excluded`.

  Args:
    rng: numpy Generator.
    sizes: [A] int, the size of each row's candidate range (excluded ranks included).
    excluded: [A, E] int, ranks to avoid, or -1 (none); distinct within a row.
    count: [A] int, draws per row; count + #excluded <= sizes.

  Returns:
    [A, max(count)] int64 ranks, -1 beyond a row's count.
  """
  sizes = np.asarray(sizes, np.int64)
  count = np.asarray(count, np.int64)
  width = int(count.max(initial=0))
  out = np.full((len(sizes), width), -1, np.int64)
  taken = np.where(excluded >= 0, excluded, np.iinfo(np.int64).max)
  for k in range(width):
    active = count > k
    free = sizes - (taken < np.iinfo(np.int64).max).sum(1)
    x = np.floor(rng.random(len(sizes)) * np.maximum(free, 1)).astype(np.int64)
    # The x-th free rank: walk the taken ranks in increasing order, stepping over each.
    for t in np.sort(taken, axis=1).T:
      x = x + (x >= t)
    out[:, k] = np.where(active, x, -1)
    taken = np.concatenate([taken, np.where(active, x, np.iinfo(np.int64).max)[:, None]], 1)
  return out


def _unique_vectors(labels):
  """Distinct label vectors, each image's vector id, and members grouped by vector.

  The distinct vectors come in lexicographic order (as `np.unique(labels, axis=0)`): each row is
  packed into big-endian 64-bit words, whose numeric order is the rows' lexicographic order, and
  sorted with a stable `lexsort`, which also lists each vector's images in index order.

  Returns:
    uniq [M, L] bool; inverse [N] (vector of each image); counts [M]; order [N] (the images
    grouped by vector); start [M] (offset of each vector's group in `order`); pos_in_vector [N]
    (rank of each image within its vector's group).
  """
  n = labels.shape[0]
  packed = np.packbits(labels, axis=1)
  pad = -packed.shape[1] % 8 if packed.shape[1] else 8
  words = np.pad(packed, ((0, 0), (0, pad))).view('>u8').astype(np.uint64)
  order = np.lexsort(words.T[::-1])  # the last key is the primary one
  ordered = words[order]
  new = np.ones(n, bool)
  new[1:] = (ordered[1:] != ordered[:-1]).any(1)
  vector_of_sorted = np.cumsum(new) - 1
  inverse = np.empty(n, np.int64)
  inverse[order] = vector_of_sorted
  start = np.flatnonzero(new).astype(np.int64)
  counts = np.diff(np.append(start, n))
  pos_in_vector = np.empty(n, np.int64)
  pos_in_vector[order] = np.arange(n) - start[vector_of_sorted]
  return labels[order[start]], inverse, counts, order, start, pos_in_vector


def _expand(starts, lengths):
  """For ranges [starts[i], starts[i] + lengths[i]): (range id, position) of every element."""
  lengths = np.asarray(lengths, np.int64)
  owner = np.repeat(np.arange(len(lengths)), lengths)
  offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  return owner, np.repeat(np.asarray(starts, np.int64), lengths) + offset


_STRUCTURE_CACHE = {}
# Beyond these the greedy structure takes a vector's overlap row from the matmul instead.
_INDEX_BUDGET = 1 << 22  # most (subset, vector) entries in the index of one subset size t
_QUERY_BUDGET = 1 << 10  # most t-subsets one vector looks up
_MIN_HEAVY = 1024  # a vector with more candidates than this and M / 8 takes the matmul row
_CHUNK = 1 << 21  # most candidate entries resolved at once (bounds the memory)


def _subset_keys(classes, subsets, num_classes):
  """[n, C] int64 keys of the subsets `subsets` ([C, t] positions) of sorted class lists [n, k].

  A key is the subset's sorted classes as the digits of a base-L number: exact while L^t < 2^63.
  """
  keys = np.zeros((len(classes), len(subsets)), np.int64)
  for j in range(subsets.shape[1]):
    keys = keys * num_classes + classes[:, subsets[:, j]]
  return keys


def _subset_index(by_size, t, num_classes):
  """Every t-subset of every distinct vector, as (sorted keys, vector of each key)."""
  keys, vectors = [], []
  for k, (rows, classes) in by_size.items():
    if k >= t:
      subsets = np.array(list(itertools.combinations(range(k), t)), np.int64)
      keys.append(_subset_keys(classes, subsets, num_classes).reshape(-1))
      vectors.append(np.repeat(rows, len(subsets)))
  keys, vectors = np.concatenate(keys), np.concatenate(vectors)
  order = np.argsort(keys, kind='stable')
  return keys[order], vectors[order]


def _resolve(rows, lo, hi, index_vectors, s, t, m, cnt, need):
  """Candidates of `rows` (size s) at overlap level t from index ranges [lo, hi) ([n, C]).

  One range per t-subset of the row's vector. A vector v with overlap o >= t with it contains
  C(o, t) of those subsets, so it shows up exactly that many times: the multiplicity gives the
  overlap without a matmul.

  Returns:
    resolved: bool [n], at least need + 1 images (the anchor's included) overlap >= t.
    (row, column, overlap) of the resolved rows, sorted by (row, column).
  """
  num_subsets = lo.shape[1]
  owner, pos = _expand(lo.reshape(-1), (hi - lo).reshape(-1))
  pair, mult = np.unique(rows[owner // num_subsets] * m + index_vectors[pos], return_counts=True)
  row, col = np.divmod(pair, m)
  overlap = np.full(len(pair), t, np.int64)
  for j in range(1, s - t + 1):  # overlap = t + #{j >= 1: C(t + j, t) <= multiplicity}
    overlap += mult >= math.comb(t + j, t)
  slot = np.searchsorted(rows, row)  # rows are sorted
  avail = np.bincount(slot, weights=cnt[col], minlength=len(rows))
  resolved = avail >= need + 1
  keep = resolved[slot]
  return resolved, (row[keep], col[keep], overlap[keep])


def _dense_structure(uniq, counts, need, rows, block=256):
  """Level and candidates of `rows` from [B, M] overlap blocks (a matmul against all vectors).

  The fallback for the rows the subset index does not serve cheaply (level 0, the empty vector,
  very large label sets or candidate lists): O(len(rows) M L).
  """
  m = len(uniq)
  uf = uniq.astype(np.float32)
  sizes = uniq.sum(1).astype(np.float32)
  cnt = counts.astype(np.float32)
  level = np.zeros(len(rows), np.int64)
  pairs = []
  for b0 in range(0, len(rows), block):
    r = rows[b0:b0 + block]
    overlap = uf[r] @ uf.T  # exact small integers
    lv = sizes[r].copy()
    avail = (overlap >= lv[:, None]).astype(np.float32) @ cnt - 1
    todo = np.nonzero(avail < need)[0]
    while todo.size:
      lv[todo] -= 1
      avail[todo] = (overlap[todo] >= lv[todo, None]).astype(np.float32) @ cnt - 1
      todo = todo[avail[todo] < need]
    level[b0:b0 + block] = lv.astype(np.int64)
    flat = np.flatnonzero(overlap >= lv[:, None])  # much faster than a 2-D nonzero
    pairs.append((r[flat // m], flat % m, overlap.reshape(-1)[flat].astype(np.int64)))
  return level, pairs


def _greedy_structure(uniq, counts, need, block=256):
  """Per distinct label vector: its level and candidates, which do not depend on the epoch.

  The level t of a vector S with s classes is the highest overlap such that the images sharing
  >= t classes with S (the anchor excluded) number at least `need`; level 0 is the fallback to
  any image. The vectors sharing >= t classes with S are those containing one of the t-subsets
  of S, so each vector descends t = s, s - 1, ... looking its t-subsets up in a sorted index of
  the t-subsets of all vectors (built once per t) until the candidates found hold enough images.
  The cost follows the candidates found, not M^2: COCO-sized label sets are small (C(s, t)
  subsets each). Vectors for which the index would cost more than a row of the [M, M] overlap
  matrix (level 0, the empty vector, huge label sets or candidate lists) get that row by a
  matmul instead (`_dense_structure`).

  Returns:
    level [M]; and the candidate pairs (row vector, column vector, overlap) with overlap >=
    level, sorted by (row, column).
  """
  m, num_classes = uniq.shape
  sizes = uniq.sum(1).astype(np.int64)
  cnt = counts.astype(np.float64)
  level = np.zeros(m, np.int64)
  by_size, slot = {}, np.zeros(m, np.int64)
  for k in np.unique(sizes[sizes > 0]).tolist():
    rows = np.flatnonzero(sizes == k)
    slot[rows] = np.arange(len(rows))
    by_size[k] = rows, np.nonzero(uniq[rows])[1].reshape(-1, k)  # sorted class lists
  index_sizes = {t: sum(len(rows) * math.comb(k, t) for k, (rows, _) in by_size.items() if k >= t)
                 for t in range(1, num_classes + 1)}
  indexes, found, dense = {}, [], []
  todo, thresh = np.arange(m), sizes.copy()
  while todo.size:
    unresolved = []
    for s, t in sorted(set(zip(sizes[todo].tolist(), thresh[todo].tolist()))):
      rows = todo[(sizes[todo] == s) & (thresh[todo] == t)]
      num_subsets = math.comb(s, t)
      if (t == 0 or num_classes ** t >= 2 ** 63 or index_sizes[t] > _INDEX_BUDGET
          or num_subsets > _QUERY_BUDGET):
        dense.append(rows)
        continue
      if t not in indexes:
        indexes[t] = _subset_index(by_size, t, num_classes)
      keys, index_vectors = indexes[t]
      subsets = np.array(list(itertools.combinations(range(s), t)), np.int64)
      for c0 in range(0, len(rows), max(1, _CHUNK // num_subsets)):
        chunk = rows[c0:c0 + max(1, _CHUNK // num_subsets)]
        query = _subset_keys(by_size[s][1][slot[chunk]], subsets, num_classes)
        lo = np.searchsorted(keys, query, 'left')
        hi = np.searchsorted(keys, query, 'right')
        work = (hi - lo).sum(1)
        heavy = work > max(m // 8, _MIN_HEAVY)  # a matmul row is cheaper than this many
        dense.append(chunk[heavy])
        chunk, lo, hi, work = chunk[~heavy], lo[~heavy], hi[~heavy], work[~heavy]
        if not chunk.size:
          continue
        # Runs of consecutive rows with about _CHUNK candidates each.
        run = (np.cumsum(work) - work) // _CHUNK
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(run)) + 1, [len(chunk)]])
        for a, b in zip(bounds[:-1], bounds[1:]):
          resolved, pairs = _resolve(chunk[a:b], lo[a:b], hi[a:b], index_vectors, s, t, m, cnt,
                                     need)
          level[chunk[a:b][resolved]] = t
          found.append(pairs)
          unresolved.append(chunk[a:b][~resolved])
    todo = np.sort(np.concatenate(unresolved)) if unresolved else np.zeros(0, np.int64)
    thresh[todo] -= 1
  dense = np.sort(np.concatenate(dense)) if dense else np.zeros(0, np.int64)
  if dense.size:
    level[dense], pairs = _dense_structure(uniq, counts, need, dense, block)
    found.extend(pairs)
  pr, pv, ov = (np.concatenate(x).astype(np.int64) for x in zip(*found))
  order = np.argsort(pr * m + pv)
  return level, pr[order], pv[order], ov[order]


def _greedy_partners(labels, need, rng):
  """[N, need] partners maximising the number of shared classes, random tie-break (paper).

  Partners above the anchor's level are all taken (fewer than `need` images); those at the level
  are drawn uniformly without replacement by rank, through the cumulative multiplicities of the
  candidate vectors. The distinct vectors and the level structure are cached across epochs; only
  the draws change.
  """
  (uniq, inverse, counts, order, start, pos_in_vector), structure = _greedy_cache(labels, need)
  level, pr, pv, ov = structure
  m = len(uniq)
  sizes = uniq.sum(1).astype(np.int64)
  # Above the level: fewer than need + 1 images per vector (the anchor's own vector among
  # them when the level is below its label count).
  above = ov > level[pr]
  owner, pos = _expand(start[pv[above]], counts[pv[above]])
  img_row = pr[above][owner]
  fixed_of = np.full((m, need + 1), -1, np.int64)
  fixed_of[img_row, np.arange(len(img_row)) - np.searchsorted(img_row, img_row)] = order[pos]
  weights = np.where(ov == level[pr], counts[pv], 0)
  cum = np.cumsum(weights)
  first = np.searchsorted(pr, np.arange(m))
  row_base = cum[first] - weights[first]
  level_size = np.bincount(pr, weights=weights, minlength=m).astype(np.int64)

  anc = np.arange(labels.shape[0], dtype=np.int64)
  u = inverse
  fixed = fixed_of[u]
  fixed = np.where(fixed == anc[:, None], -1, fixed)
  n_fixed = (fixed >= 0).sum(1)
  own = np.searchsorted(pr * m + pv, u * m + u)
  own_rank = np.where(level[u] == sizes[u],
                      cum[own] - weights[own] - row_base[u] + pos_in_vector, -1)
  draws = _distinct_ranks(rng, level_size[u], own_rank[:, None], need - n_fixed)
  picked = np.full(draws.shape, -1, np.int64)
  ok = draws >= 0
  g = (row_base[u][:, None] + draws)[ok]
  f = np.searchsorted(cum, g, side='right')
  picked[ok] = order[start[pv[f]] + g - (cum[f] - weights[f])]
  both = np.concatenate([fixed, picked], axis=1)
  # Compact each row: the higher-overlap partners first, then the drawn ones.
  keep = np.argsort(both < 0, axis=1, kind='stable')[:, :need]
  return np.take_along_axis(both, keep, axis=1)


def _greedy_cache(labels, need):
  """The distinct label vectors and the greedy structure of `labels` (cached across epochs)."""
  key = (hashlib.sha1(np.packbits(labels, axis=1).tobytes()).hexdigest(), labels.shape, need)
  if key not in _STRUCTURE_CACHE:
    _STRUCTURE_CACHE.clear()
    vectors = _unique_vectors(labels)
    _STRUCTURE_CACHE[key] = vectors, _greedy_structure(vectors[0], vectors[2], need)
  return _STRUCTURE_CACHE[key]


def _balanced_partners(labels, need, rng):
  """[N, need] partners as the greedy rule chooses them, but spread evenly over the images.

  The greedy rule draws an anchor's partners at its level uniformly, so an image that is a candidate
  of many anchors (one with several classes) comes up far more often in an epoch than others, and
  the uniform draws spread the rest: on MSRC-v2's 268 training images with K = 3, 5 to 28 times in
  four epochs against 12 on average. Here the anchors come in a random order, the partners above the
  level are taken as by the greedy rule, and those at the level are the candidates that have
  appeared least so far in the epoch (as anchor or partner; ties at random). The overlap with the
  anchor is what the greedy rule gives; only the choice among equals changes. A loop over the
  anchors, its candidate lists held in memory (at most `_BALANCED_BUDGET` entries): seconds per
  epoch on COCO-sized labels (`benchmark(rule='balanced')`), where the greedy rule takes a
  fraction of a second.
  """
  (uniq, inverse, counts, order, start, _), (level, pr, pv, ov) = _greedy_cache(labels, need)
  n, m = labels.shape[0], len(uniq)
  at_level = ov == level[pr]
  total = int(np.sum(counts[pv[at_level]]))
  if total > _BALANCED_BUDGET:
    raise UserError(f"config.train.group_rule='balanced': {total} candidate entries for "
                    f'{n} images exceed its budget ({_BALANCED_BUDGET}); use the greedy rule')
  bounds = np.searchsorted(pr, np.arange(m + 1))

  def images(vectors):
    if not len(vectors):
      return np.zeros(0, np.int64)
    _, pos = _expand(start[vectors], counts[vectors])
    return order[pos]
  fixed_of, level_of = [], []
  for r in range(m):
    rows = slice(bounds[r], bounds[r + 1])
    fixed_of.append(images(pv[rows][~at_level[rows]]))
    level_of.append(images(pv[rows][at_level[rows]]))
  used = np.ones(n, np.float64)  # every image anchors once
  partners = np.full((n, need), -1, np.int64)
  for a in rng.permutation(n):
    r = inverse[a]
    fixed = fixed_of[r][fixed_of[r] != a][:need]
    cand = level_of[r][level_of[r] != a]
    rest = need - len(fixed)
    # The fewest uses first; a uniform draw in [0, 1) breaks ties between equal counts. Only
    # the `rest` smallest keys are sorted: a full sort of a large class's candidates per anchor
    # was most of an epoch's time.
    keys = used[cand] + rng.random(len(cand))
    few = np.argpartition(keys, rest - 1)[:rest] if 0 < rest < len(keys) else np.arange(len(keys))
    pick = cand[few[np.argsort(keys[few], kind='stable')]][:rest]
    chosen = np.concatenate([fixed, pick])
    partners[a, :len(chosen)] = chosen
    used[chosen] += 1
  return partners


def _release_partners(labels, need, rng):
  """[N, need] partners by the release's rule (utils/LoadData.py, VOCDataset.__getitem__).

  The release draws a random class f of the anchor once; then, for each partner slot
  independently, it draws image indices uniformly from 1 .. N-2 (`np.random.randint(1, N-1)`:
  the first and the last image of the list are never partners) until one has the anchor's label
  vector, or, after 1000 draws, one that has class f. So a slot finds an identical image with
  probability 1 - (1 - c / (N-2))^1000 for the c pool images with the anchor's vector (the
  anchor itself among them: a group may hold the anchor twice), uniform among them; otherwise it
  takes an image with class f, uniform among the pool's. Slots may repeat each other. Where the
  release would fail (an anchor without a class) or loop forever (no pool image has class f),
  the slot takes a uniform pool image.
  """
  n = labels.shape[0]
  if n < 3:
    raise UserError(f"config.train.group_rule='release': the release draws partners from "
                    f'images 1 .. N-2 and needs N >= 3 training images, not {n}')
  num_classes = labels.shape[1]
  pool = np.arange(1, n - 1)
  _, inverse, _, _, _, _ = _unique_vectors(labels)
  # Pool images grouped by label vector: those of vector v are by_vector[first[v]:][:count[v]].
  by_vector = pool[np.argsort(inverse[pool], kind='stable')]
  count = np.bincount(inverse[pool], minlength=inverse.max() + 1)
  first = np.cumsum(count) - count
  # Pool images grouped by class (posting lists).
  cls_of, img_of = np.nonzero(labels[pool].T)
  post_size = np.bincount(cls_of, minlength=num_classes)
  post_start = np.cumsum(post_size) - post_size
  anchors = np.arange(n)
  num_labels = labels.sum(1)
  # The class f of each anchor: its k-th class, k uniform.
  k = np.floor(rng.random(n) * np.maximum(num_labels, 1)).astype(np.int64)
  flag = np.argmax((np.cumsum(labels, axis=1) - 1 == k[:, None]) & labels, axis=1)
  same = count[inverse[anchors]]
  p_hit = 1.0 - (1.0 - same / len(pool)) ** _RELEASE_DRAWS
  with_flag = np.where(num_labels > 0, post_size[flag], 0)
  out = np.empty((n, need), np.int64)
  for slot in range(need):
    hit = rng.random(n) < p_hit
    u = rng.random(n)
    ident = by_vector[np.minimum(first[inverse] + np.floor(u * same).astype(np.int64),
                                 len(pool) - 1)]
    cls_pick = pool[img_of[np.minimum(post_start[flag] + np.floor(u * with_flag).astype(np.int64),
                                      max(len(img_of) - 1, 0))]] if len(img_of) else anchors
    any_pick = pool[np.floor(u * len(pool)).astype(np.int64)]
    out[:, slot] = np.where(hit, ident, np.where(with_flag > 0, cls_pick, any_pick))
  return out


def coco_like_labels(num_images: int = 82783, num_classes: int = 80, mean_labels: float = 2.9,
                     seed: int = 0) -> np.ndarray:
  """Synthetic [N, L] labels with COCO's size and a skewed class frequency (benchmarks)."""
  rng = np.random.default_rng(seed)
  freq = 1.0 / np.arange(1, num_classes + 1) ** 0.9
  freq /= freq.sum()
  num = np.clip(rng.poisson(mean_labels - 1, num_images) + 1, 1, num_classes)
  # Gumbel top-k: `num[i]` distinct classes drawn without replacement with probability `freq`.
  keys = np.log(freq)[None, :] - np.log(-np.log(rng.random((num_images, num_classes))))
  rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
  labels = rank < num[:, None]
  return labels


def benchmark(num_images: int = 82783, num_classes: int = 80, num_nodes: int = 4,
              rule: str = 'greedy') -> list:
  """Prints and returns the seconds taken by two epochs of groups on COCO-sized labels.

  The first greedy epoch includes the epoch-independent level structure (cached after it).
  """
  labels = coco_like_labels(num_images, num_classes)
  _STRUCTURE_CACHE.clear()
  distinct = len(np.unique(labels, axis=0))
  times = []
  for epoch in range(2):
    t0 = time.perf_counter()
    make_groups(labels, num_nodes, seed=0, epoch=epoch, rule=rule)
    times.append(time.perf_counter() - t0)
    print(f'make_groups rule={rule} N={num_images} L={num_classes} K={num_nodes} '
          f'({distinct} distinct label vectors) epoch {epoch}: {times[-1]:.2f} s')
  return times
