"""embed_corpus: bucketing, corpus order, strategy, encoded.ckpt contract, SavedModel embedder."""
import realm_tf2  # noqa: F401

import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from realm_tf2 import tokenization
from realm_tf2.retrieval import block_store as block_store_lib
from realm_tf2.retrieval import embed_corpus
from tests.retrieval import helpers


def _reference(store, embedder):
  """Embeds each block one by one at full length 288 with the NumPy packer."""
  feats = [tokenization.pack_candidate_np(store.title(i), store.body(i), helpers.CLS_ID,
                                          helpers.SEP_ID) for i in range(store.num_blocks)]
  batch = {k: tf.constant(np.stack([f[k] for f in feats])) for k in feats[0]}
  return embedder(batch, training=False).numpy()


@pytest.fixture(scope="module")
def setup():
  titles, bodies = helpers.random_blocks(19, seed=3)
  store = block_store_lib.BlockStore.from_arrays(titles, bodies)
  embedder = helpers.tiny_embedder()
  return store, embedder, _reference(store, embedder)


def test_buckets_and_lengths():
  store = block_store_lib.BlockStore.from_arrays([[5] * 2, [], [5] * 10],
                                                 [[6] * 50, [6] * 62, [6] * 400])
  lengths = embed_corpus.packed_lengths(store)
  np.testing.assert_array_equal(lengths, [55, 65, 288])
  np.testing.assert_array_equal(embed_corpus.assign_buckets(lengths, (64, 128, 192, 288)), [0, 1, 3])


@pytest.mark.parametrize("lengths", [[60] * 9 + [100] * 3 + [150] * 8 + [288],
                                     [60] * 3 + [288],
                                     list(np.random.RandomState(0).randint(10, 289, 300))])
def test_batch_plan_covers_every_row_once_with_fewest_padded_tokens(lengths):
  buckets, batch = (64, 128, 192, 288), 4
  lengths = np.asarray(lengths)
  which = embed_corpus.assign_buckets(lengths, buckets)
  plan = embed_corpus._batch_plan(which, buckets, batch)  # pylint: disable=protected-access
  rows = np.concatenate([r[v] for _, r, v in plan])
  assert sorted(rows.tolist()) == list(range(len(lengths)))  # each valid row exactly once
  for bucket_len, r, v in plan:
    assert len(r) == batch and np.all(lengths[r] <= bucket_len)  # every row (padding too) fits
  assert sum(not v.all() for _, _, v in plan) <= 1  # at most one part-filled batch
  got = sum(b * len(r) for b, r, _ in plan)
  # Lower bound for ANY static-shape plan: with N_j rows of bucket j or longer, at least
  # ceil(N_j / batch) batches have length >= len_j; the cost is batch * sum_j (len_j - len_{j-1}) *
  # (batches of length >= len_j).
  bound = batch * sum((buckets[j] - (buckets[j - 1] if j else 0)) * -(-np.sum(which >= j) // batch)
                      for j in range(len(buckets)))
  pad_every_bucket = sum(b * batch * -(-np.sum(which == j) // batch) for j, b in enumerate(buckets))
  assert got == bound <= pad_every_bucket
  if len(lengths) == 21:  # the hand-made case: one part-filled batch instead of one per bucket
    assert got == 3456 and pad_every_bucket == 3968


@pytest.mark.parametrize("seed", range(40))
def test_choose_buckets_is_the_cheapest_plan_of_at_most_k_buckets(seed):
  rng = np.random.RandomState(seed)
  lengths = rng.randint(3, 289, rng.randint(1, 60))
  batch, k = rng.randint(1, 8), rng.randint(1, 5)
  penalty = 0 if seed % 2 else rng.randint(0, 3 * batch * 288)  # per-bucket cost in token slots
  got = embed_corpus.choose_buckets(lengths, batch, 288, max_buckets=k, bucket_penalty_tokens=penalty)
  assert 1 <= len(got) <= k and max(got) >= lengths.max() and all(b % 8 == 0 for b in got)
  # Brute force over every set of at most k candidate lengths (the batch heads rounded up to 8).
  heads = np.sort(lengths)[::-1][::batch]
  cands = sorted(set(np.minimum(-(-heads // 8) * 8, 288).tolist()))
  cost = lambda c: embed_corpus.plan_tokens(lengths, c, batch) + penalty * len(c)  # noqa: E731
  best = min(cost(c) for r in range(1, k + 1) for c in itertools.combinations(cands, r)
             if max(c) >= lengths.max())
  assert cost(got) == best
  if k >= 4 and penalty == 0:  # the fixed default buckets are one of the candidate sets
    assert best <= embed_corpus.plan_tokens(lengths, embed_corpus.DEFAULT_BUCKETS, batch)


def test_plan_tokens_is_the_batch_plan_cost():
  lengths = np.random.RandomState(1).randint(3, 289, 300)
  buckets = embed_corpus.choose_buckets(lengths, 16, 288)
  plan = embed_corpus._batch_plan(  # pylint: disable=protected-access
      embed_corpus.assign_buckets(lengths, buckets), buckets, 16)
  assert embed_corpus.plan_tokens(lengths, buckets, 16) == sum(b * len(r) for b, r, _ in plan)
  # On this length mix, 8 chosen lengths pad far less than the fixed 64/128/192/288.
  fixed = embed_corpus.plan_tokens(lengths, embed_corpus.DEFAULT_BUCKETS, 16)
  assert embed_corpus.plan_tokens(lengths, buckets, 16) < 0.93 * fixed
  # A per-bucket compile penalty trades padding for fewer programs: a small corpus gets few buckets.
  few = embed_corpus.choose_buckets(lengths, 16, 288, bucket_penalty_tokens=2 * 16 * 288)
  assert len(few) < len(buckets)
  with pytest.raises(ValueError, match="max_buckets"):
    embed_corpus.choose_buckets(lengths, 16, 288, max_buckets=0)
  with pytest.raises(ValueError, match="exceeds seq_len"):
    embed_corpus.choose_buckets([300, 10], 1, 288)
  # seq_len not a multiple of 8: the longest bucket is capped at it.
  assert embed_corpus.choose_buckets([97, 99, 10], 1, 100, max_buckets=2) == (16, 100)


@pytest.mark.slow  # traces a BERT once: tens of seconds on 2 CPU cores
@pytest.mark.parametrize("xla", [False, True])  # auto (None) picks False for 19 blocks
def test_embed_blocks_matches_unbucketed_reference_in_corpus_order(setup, xla):
  store, embedder, want = setup
  stats = {}
  # buckets="auto" (the default) without the per-bucket compile penalty, so the XLA run also
  # compiles several buckets (with the penalty, 19 blocks would get a single one).
  got = embed_corpus.embed_blocks(store, embedder, helpers.CLS_ID, helpers.SEP_ID, batch_size=4,
                                  stats=stats, xla=xla, bucket_penalty_tokens=0)
  assert got.shape == (19, 8) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert sum(stats["buckets"].values()) == 19 and len([v for v in stats["buckets"].values() if v]) >= 3
  # The lengths chosen for this corpus and batch.
  lengths = embed_corpus.packed_lengths(store)
  assert set(embed_corpus.choose_buckets(lengths, 4)) <= set(stats["bucket_lengths"])
  if xla:  # the default penalty (two full-length batches per compiled bucket): one bucket here
    stats = {}
    embed_corpus.embed_blocks(store, embedder, helpers.CLS_ID, helpers.SEP_ID, batch_size=4,
                              stats=stats, xla=True)
    assert stats["bucket_lengths"] == [288]
  assert stats["padded_tokens"] == embed_corpus.plan_tokens(lengths, stats["bucket_lengths"], 4)
  assert stats["real_tokens"] == lengths.sum() <= stats["padded_tokens"]


@pytest.mark.slow  # tracing BERT replicated over 2 devices: tens of seconds
def test_embed_blocks_under_mirrored_strategy(setup, mirrored_strategy):
  store, embedder, want = setup
  strategy = mirrored_strategy
  got = embed_corpus.embed_blocks(store, embedder, helpers.CLS_ID, helpers.SEP_ID, batch_size=6,
                                  strategy=strategy, buckets=(288,))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_write_encoded_contract_and_row_check(tmp_path):
  emb = np.arange(12, dtype=np.float32).reshape(3, 4)
  prefix = embed_corpus.write_encoded(str(tmp_path / "embedder"), emb, expected_rows=3)
  assert prefix == str(tmp_path / "embedder" / "encoded" / "encoded.ckpt")
  np.testing.assert_array_equal(tf.train.load_checkpoint(prefix).get_tensor("block_emb"), emb)
  assert [p for p in os.listdir(tmp_path / "embedder")] == ["encoded"]
  with pytest.raises(ValueError, match="corpus has 4"):
    embed_corpus.write_encoded(str(tmp_path / "embedder"), emb, expected_rows=4)


# The SavedModel-export path (embed_corpus.embed_corpus with an export dir) is covered end to end
# by test_refresh_cli.py.
