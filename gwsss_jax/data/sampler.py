"""Groups of K images for the group-wise classifier: the paper's greedy rule and the release's.

Paper, "Training details" (greedy mini-batch sampling): every image is once the anchor of a group
per epoch; its K-1 partners are the images sharing as many classes with it as possible, ties broken
at random. Two nodes are linked only if they share a class, every node has a self-edge (the edge
set E of the problem definition), so each group comes with its [K, K] adjacency.

Both rules are vectorised in numpy. The greedy rule works on the M distinct label vectors (M is
much smaller than N on real data): a blocked [B, M] overlap matrix (a matmul, which is the inverted
index over classes in dense form) gives for every distinct vector the best overlap level that
still offers K-1 partners; partners above that level are all taken, those at that level are drawn
uniformly without replacement by rank (a cumulative sum over the candidates' multiplicities and a
`searchsorted`). `benchmark()` times an epoch of COCO-sized data.
"""

import hashlib
import time

import numpy as np

from gwsss_jax.common.errors import UserError

RULES = ('greedy', 'release')
_RELEASE_DRAWS = 1000  # the release's attempts at finding an identical label vector


def make_groups(label_matrix, num_nodes: int, seed: int, epoch: int, rule: str = 'greedy'):
  """Groups for one epoch: every image is the anchor of exactly one group.

  Args:
    label_matrix: [N, L] bool image-level labels.
    num_nodes: K, images per group.
    seed, epoch: the groups are a deterministic function of (seed, epoch).
    rule: 'greedy' (paper) or 'release' (identical label vector within 1000 random draws,
      else any image sharing one random class of the anchor).

  Returns:
    groups: int32 [N, K]; row i is anchor i followed by its K-1 partners (no repeats).
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
    raise UserError(f"config.train.group_rule={rule!r}: choose from 'greedy', 'release'")
  rng = np.random.default_rng([seed, epoch, 0x67726f75])
  anchors = np.arange(n, dtype=np.int64)
  if num_nodes == 1:
    partners = np.zeros((n, 0), np.int64)
  elif rule == 'greedy':
    partners = _greedy_partners(labels, num_nodes - 1, rng)
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
  """Distinct label vectors, each image's vector id, and members grouped by vector."""
  uniq, inverse, counts = np.unique(labels, axis=0, return_inverse=True, return_counts=True)
  inverse = inverse.reshape(-1)
  order = np.argsort(inverse, kind='stable')
  start = np.concatenate([[0], np.cumsum(counts)[:-1]])
  pos_in_vector = np.empty(len(inverse), np.int64)
  pos_in_vector[order] = np.arange(len(inverse)) - start[inverse[order]]
  return uniq, inverse, counts.astype(np.int64), order, start, pos_in_vector


def _expand(starts, lengths):
  """For ranges [starts[i], starts[i] + lengths[i]): (range id, position) of every element."""
  lengths = np.asarray(lengths, np.int64)
  owner = np.repeat(np.arange(len(lengths)), lengths)
  offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  return owner, np.repeat(np.asarray(starts, np.int64), lengths) + offset


_STRUCTURE_CACHE = {}


def _greedy_structure(uniq, counts, need, block=256):
  """Per distinct label vector: its level and candidates, which do not depend on the epoch.

  The level t of a vector S with s classes is the highest overlap such that the images sharing
  >= t classes with S (the anchor excluded) number at least `need`; level 0 is the fallback to
  any image. The overlaps come a block of rows at a time from a [B, M] matmul (the inverted
  index over classes in dense form, O(M^2 L) for M distinct vectors).

  Returns:
    level [M]; and the candidate pairs (row vector, column vector, overlap) with overlap >=
    level, sorted by (row, column).
  """
  m = len(uniq)
  uf = uniq.astype(np.float32)
  sizes = uniq.sum(1).astype(np.float32)
  cnt = counts.astype(np.float32)
  level = np.zeros(m, np.int64)
  pairs = []
  for b0 in range(0, m, block):
    overlap = uf[b0:b0 + block] @ uf.T  # exact small integers
    lv = sizes[b0:b0 + block].copy()
    avail = (overlap >= lv[:, None]).astype(np.float32) @ cnt - 1
    todo = np.nonzero(avail < need)[0]
    while todo.size:
      lv[todo] -= 1
      avail[todo] = (overlap[todo] >= lv[todo, None]).astype(np.float32) @ cnt - 1
      todo = todo[avail[todo] < need]
    level[b0:b0 + block] = lv.astype(np.int64)
    r, v = np.nonzero(overlap >= lv[:, None])
    pairs.append((r + b0, v, overlap[r, v].astype(np.int64)))
  pr, pv, ov = (np.concatenate(x) for x in zip(*pairs))
  return level, pr, pv, ov


def _greedy_partners(labels, need, rng):
  """[N, need] partners maximising the number of shared classes, random tie-break (paper).

  Partners above the anchor's level are all taken (fewer than `need` images); those at the level
  are drawn uniformly without replacement by rank, through the cumulative multiplicities of the
  candidate vectors. The level structure is cached across epochs; only the draws change.
  """
  uniq, inverse, counts, order, start, pos_in_vector = _unique_vectors(labels)
  m = len(uniq)
  key = (hashlib.sha1(np.packbits(labels, axis=1).tobytes()).hexdigest(), labels.shape, need)
  if key not in _STRUCTURE_CACHE:
    _STRUCTURE_CACHE.clear()
    _STRUCTURE_CACHE[key] = _greedy_structure(uniq, counts, need)
  level, pr, pv, ov = _STRUCTURE_CACHE[key]
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


def _release_partners(labels, need, rng):
  """[N, need] partners by the release's rule, one slot at a time for all anchors at once.

  Per slot: the release draws up to 1000 random images looking for one with the anchor's label
  vector; the probability that this succeeds is 1 - (1 - c/(N-1))^1000 for c identical images
  not yet in the group, and the image found is uniform among them. Otherwise it takes a random
  class of the anchor and a uniform image with that class; an anchor with no class, or whose
  classes no other free image has, takes any free image.
  """
  n, num_classes = labels.shape
  uniq, inverse, counts, order, start, pos_in_vector = _unique_vectors(labels)
  del uniq
  # Posting lists: images of class c are post_img[post_start[c]:post_start[c + 1]], sorted.
  cls_of, img_of = np.nonzero(labels.T)
  post_start = np.concatenate([[0], np.cumsum(np.bincount(cls_of, minlength=num_classes))])
  post_key = cls_of.astype(np.int64) * n + img_of
  anchors = np.arange(n, dtype=np.int64)
  group = anchors[:, None]
  num_labels = labels.sum(1)
  for _ in range(need):
    # 1) Identical label vector.
    same = inverse[group] == inverse[anchors][:, None]
    ident_free = counts[inverse] - same.sum(1)
    p_hit = 1.0 - (1.0 - ident_free / max(n - 1, 1)) ** _RELEASE_DRAWS
    hit = rng.random(n) < p_hit
    excl = np.where(same, pos_in_vector[group], -1)
    rank = _distinct_ranks(rng, counts[inverse], excl, hit.astype(np.int64))
    ident_pick = order[start[inverse] + np.maximum(rank[:, 0] if rank.shape[1] else 0, 0)]
    # 2) A random class of the anchor, then an image having it.
    k = np.floor(rng.random(n) * np.maximum(num_labels, 1)).astype(np.int64)
    cls_rank = np.cumsum(labels, axis=1) - 1
    cls = np.argmax((cls_rank == k[:, None]) & labels, axis=1)
    has_cls = labels[group, cls[:, None]]
    post_size = post_start[cls + 1] - post_start[cls]
    post_free = post_size - has_cls.sum(1)
    use_cls = ~hit & (num_labels > 0) & (post_free > 0)
    excl = np.where(has_cls, np.searchsorted(post_key, cls[:, None] * n + group)
                    - post_start[cls][:, None], -1)
    rank = _distinct_ranks(rng, post_size, excl, use_cls.astype(np.int64))
    cls_pick = img_of[post_start[cls] + np.maximum(rank[:, 0] if rank.shape[1] else 0, 0)]
    # 3) Any image not yet in the group.
    use_any = ~hit & ~use_cls
    rank = _distinct_ranks(rng, np.full(n, n), group, use_any.astype(np.int64))
    any_pick = np.maximum(rank[:, 0] if rank.shape[1] else 0, 0)
    pick = np.where(hit, ident_pick, np.where(use_cls, cls_pick, any_pick))
    group = np.concatenate([group, pick[:, None]], axis=1)
  return group[:, 1:]


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
