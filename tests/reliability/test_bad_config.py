"""Bad configuration is caught at start-up by the CLIs: one clear message, non-zero exit, in seconds
(no model built, no training step run)."""
import os

import pytest

from tests import tiny_fixtures
from tests.reliability import helpers as h

VOCAB_SIZE = len(tiny_fixtures.tiny_vocab())


@pytest.fixture()
def ict_inputs(tmp_path):
  d = str(tmp_path)
  h.write_vocab(f"{d}/vocab.txt")
  h.write_ict_examples(f"{d}/ex.tfr", tiny_fixtures.tiny_vocab(), num_blocks=4)
  return d


def _ict(d, *extra):
  return ["run_pretrain.py", "--mode=ict", f"--model_dir={d}/m", f"--examples_path={d}/ex.tfr",
          f"--vocab_file={d}/vocab.txt", f"--config_file={h.TINY_CONFIG}", "--num_train_steps=2",
          *extra]


def _fails(proc, *needles):
  assert proc.returncode != 0, proc.stdout[-2000:]
  err = proc.stderr
  for needle in needles:
    assert needle in err, (needle, err[-3000:])
  assert "Traceback" not in err, err[-3000:]
  return err


def test_pretrain_missing_file_and_seq_len_over_max_positions(ict_inputs):
  d = ict_inputs
  proc = h.run(_ict(d, f"--retrieval_corpus_path={d}/nope/blocks-*",
                    "--params_override=task.model.ict_block_seq_len=600"))
  _fails(proc, "run_pretrain: cannot start:",
         f"--retrieval_corpus_path: '{d}/nope/blocks-*' matches no file",
         "task.model.ict_block_seq_len=600 exceeds task.model.bert.max_position_embeddings=512")
  assert not os.path.exists(f"{d}/m/checkpoint")


def test_pretrain_unknown_flag_and_unknown_config_key(ict_inputs):
  d = ict_inputs
  _fails(h.run(_ict(d, "--num_train_stepz=3")), "Unknown command line flag 'num_train_stepz'")
  _fails(h.run(_ict(d, "--params_override=task.model.no_such_key=1")),
         "run_pretrain: bad configuration:", "no_such_key")


@pytest.mark.slow
def test_pretrain_vocab_differs_from_init_checkpoint(ict_inputs):
  d = ict_inputs
  init = h.write_fake_export(f"{d}/bert", vocab_rows=VOCAB_SIZE + 7)
  _fails(h.run(_ict(d, f"--bert_hub_module_handle={init}")),
         f"--bert_hub_module_handle: '{init}' has a word-embedding table of {VOCAB_SIZE + 7} rows "
         f"but the vocab (--vocab_file / task.model.bert.vocab_size) has {VOCAB_SIZE} entries")


def _realm(d, *extra):
  return ["run_pretrain.py", "--mode=realm", f"--model_dir={d}/m", f"--pretrain_corpus_path={d}/p.tfr",
          f"--retrieval_corpus_path={d}/blocks-00000-of-00001", f"--vocab_file={d}/vocab.txt",
          f"--config_file={h.TINY_CONFIG}", "--num_train_steps=2", *extra]


@pytest.mark.slow
def test_realm_block_emb_rows_and_k_larger_than_corpus(tmp_path):
  d = str(tmp_path)
  vocab = tiny_fixtures.tiny_vocab()
  h.write_vocab(f"{d}/vocab.txt")
  h.write_retrieval_corpus(f"{d}/blocks-00000-of-00001", 6, vocab)
  open(f"{d}/p.tfr", "wb").close()
  emb = h.write_fake_export(f"{d}/emb", vocab_rows=len(vocab), block_emb_rows=9)
  _fails(h.run(_realm(d, f"--embedder_hub_module_handle={emb}", "--num_candidates=4")),
         "run_pretrain: cannot start:", "9 rows but the retrieval corpus has 6")
  _fails(h.run(_realm(d, f"--embedder_hub_module_handle={emb}", "--num_candidates=8")),
         "task.model.num_candidates=8 (k-1=7 retrieved documents) is larger than the retrieval "
         "corpus (6 blocks)")
  _fails(h.run(_realm(d, "--params_override=task.retriever_learning_rate_multiplier=0")),
         "run_pretrain: cannot start:", "task.retriever_learning_rate_multiplier=0 must be > 0")


def _finetune(d, *extra):
  return ["run_finetune.py", "--mode=train", f"--model_dir={d}/m", f"--vocab_file={d}/vocab.txt",
          f"--config_file={h.TINY_CONFIG}", f"--retriever_module_path={d}/emb",
          f"--block_records_path={d}/blocks.tfr", f"--data_root={d}/qa", "--dataset_name=World",
          "--num_train_steps=2", *extra]


@pytest.mark.slow
def test_finetune_block_emb_rows_seq_len_and_reader_vocab(tmp_path):
  d = str(tmp_path)
  vocab = tiny_fixtures.tiny_vocab()
  h.write_vocab(f"{d}/vocab.txt")
  h.write_blocks_tfr(f"{d}/blocks.tfr", ["john was born in paris", "mary wrote a book", "the river"])
  h.write_qa(f"{d}/qa")
  h.write_fake_export(f"{d}/emb", vocab_rows=len(vocab), block_emb_rows=5)
  h.write_fake_export(f"{d}/reader", vocab_rows=len(vocab) - 3)
  _fails(h.run(_finetune(d, f"--reader_module_path={d}/reader")), "run_finetune: cannot start:",
         f"has a word-embedding table of {len(vocab) - 3} rows but the vocab")
  _fails(h.run(_finetune(d, "--params_override=task.model.reader_seq_len=1000")),
         "task.model.reader_seq_len=1000 exceeds task.model.bert.max_position_embeddings=512")
  _fails(h.run(_finetune(d, "--params_override=task.reader_learning_rate_multiplier=0")),
         "task.reader_learning_rate_multiplier=0 must be > 0")
  _fails(h.run(_finetune(d)), "run_finetune: cannot start:", "block_emb has 5 rows but",
         "has 3 blocks; they must be aligned")
  # (ORQA: a beam larger than the corpus is clamped with a warning by OrqaTask.load_corpus, since
  # the original's retriever_beam_size=5000 default must work on small corpora.)
