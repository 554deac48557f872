"""Servable ORQA QA model: `serving_default(question: string [B])` -> answer (contracts §3).

One SavedModel holding the question tower, the reader, the block index (embeddings and the
pre-tokenized block wordpieces `OrqaModel` reads) and the raw block texts. It runs the model code
of training and evaluation and adds only strings around it:

  question -> TF Text wordpieces (cut to max_question_len)                        (added here)
  -> `OrqaModel.call` (retrieve the top K blocks, read them) -> `orqa_model.predictions`
  -> answer = `RealmTokenizer.span_text` of the predicted block's raw text     (as evaluation)

By default (`mips="brute_force"`) the graph is TF and TF Text ops only (no py_function), so it
loads in a process that imports only `tensorflow` and `tensorflow_text` (and in TF Serving with the
TF Text ops linked). As in the original's PREDICT mode (original §3.3 Retrieve 6), only the K
blocks that are read are retrieved, by exact search over all block embeddings.

With `mips="scann"` the candidates come from a ScaNN index held in the SavedModel (its state as
variables, `ScannIndex.state_module`) and searched with ScaNN's TF ops (CPU), then ordered by exact
dot products as in training. Loading it then needs `import scann` (which registers those ops)
besides `tensorflow_text`, and TF Serving needs ScaNN's op library linked: the brute-force default
keeps the model portable (contracts §3).

Defined behaviour on odd input: an empty question is embedded as `[CLS] [SEP]` and answered normally;
a very long question is cut to `max_question_len` wordpieces; if no span is valid (every read block
empty) the answer is "" with the best (very negative) score.
"""
from typing import Optional

import realm_tf2  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

from realm_tf2 import tokenization
from realm_tf2.export import common
from realm_tf2.modeling import orqa_model
from realm_tf2.retrieval import index as index_lib

MIPS_CHOICES = ("brute_force", "scann")


class _SavedScann(tf.Module):
  """A ScaNN TF-op index whose searcher the SavedModel re-creates from the tracked `state`.

  Args:
    index: a built `ScannIndex(backend="tf")`.
  """

  def __init__(self, index: index_lib.ScannIndex):
    super().__init__()
    self.state = index.state_module()
    self._index = common._Untracked(index)  # pylint: disable=protected-access
    self.num_rows = index.num_rows

  def search_tensors(self, query, k):
    """float32 [B, D] -> (ids int32 [B, k'], distances float32 [B, k']), as `ScannIndex`."""
    return self._index.obj.search_tensors(query, k, state=self.state)


class QAServingModule(tf.Module):
  """The exported QA model.

  Args:
    model: A built `OrqaModel` (its towers and block index are exported as they are).
    block_texts: list of N raw block strings, rows aligned with `model.block_emb`.
    vocab_file / do_lower_case: tokenizer (vocab copied in as an asset); the one `model.block_ids`
      were made with.
    max_question_len: wordpieces kept from the question (Q; as `OrqaTaskConfig.max_question_len`).
    reader_beam_size: blocks retrieved and read per question (K; default and cap: the model's).
    mips: "brute_force" (exact, portable) or "scann" (the model's ScaNN TF-op index when it has
      one, else one built here with `scann_settings`; loading then needs `import scann`).
    scann_settings: overrides of `index.scann_settings_for(N)` (None values left to it).
  """

  def __init__(self, model: orqa_model.OrqaModel, block_texts, vocab_file: str,
               do_lower_case: bool, max_question_len: int = 64,
               reader_beam_size: Optional[int] = None, mips: str = "brute_force",
               scann_settings=None):
    super().__init__()
    if mips not in MIPS_CHOICES:
      raise ValueError(f"mips must be one of {MIPS_CHOICES}, got {mips!r}")
    n = int(model.block_emb.shape[0])
    if len(block_texts) != n:
      raise ValueError(f"{len(block_texts)} block texts but block_emb has {n} rows")
    if max_question_len > model.seq_len - 4:  # as OrqaTask: at least one block wordpiece read
      raise ValueError(f"max_question_len {max_question_len} leaves no room for a block in "
                       f"reader_seq_len {model.seq_len}")
    self._holder = common._Untracked(model)  # pylint: disable=protected-access
    self.tokenizer = tokenization.RealmTokenizer(vocab_file, do_lower_case)
    self.tokenization_info_module = tokenization.TokenizationInfo(vocab_file, do_lower_case)
    # Tracked here (the model keeps its index out of checkpoints), so the SavedModel holds them.
    self.retriever_variables = list(model.retriever.variables)
    self.reader_variables = list(model.reader.variables)
    self.index_variables = [model.block_emb, model.block_ids, model.block_len]
    self.block_texts = tf.Variable(tf.constant(list(block_texts), tf.string), trainable=False,
                                   name="block_texts")  # [N]
    self.index_variables.append(model.block_sep_pos)
    self.max_question_len = int(max_question_len)
    self.num_read = int(min(reader_beam_size or model.reader_beam_size, model.reader_beam_size))
    self.mips = mips
    if mips == "scann":
      index = model.mips_index
      if not (isinstance(index, index_lib.ScannIndex) and index.backend == "tf"):
        index = index_lib.IndexFactory("scann", scann_settings, scann_backend="tf")(
            model.block_emb.numpy())
      self.scann = _SavedScann(index)

  @property
  def model(self) -> orqa_model.OrqaModel:
    return self._holder.obj

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="question")])
  def serve(self, question):
    q_wp = self.tokenizer.tokenize(question)[:, :self.max_question_len]  # ragged int32 [B, (q)]
    features = {"question_ids": q_wp.to_tensor(shape=[None, self.max_question_len]),  # [B, Q]
                "question_len": tf.cast(q_wp.row_lengths(), tf.int32)}  # [B]
    mips_index = self.scann if self.mips == "scann" else orqa_model.BRUTE_FORCE
    outputs = self.model(features, training=False, retriever_beam_size=self.num_read,
                         mips_index=mips_index)
    preds = orqa_model.predictions(outputs)
    block_index = tf.cast(preds["pred_block_id"], tf.int64)  # [B]
    block_text = tf.gather(self.block_texts, block_index)  # [B]
    answer = self.tokenizer.span_text(block_text, preds["pred_first_wordpiece"],
                                      preds["pred_last_wordpiece"])  # [B]
    return {"answer": answer, "score": preds["pred_score"], "block_index": block_index,
            "block_text": block_text}


def export_serving(model, block_texts, vocab_file: str, do_lower_case: bool, export_dir: str,
                   max_question_len: int = 64, reader_beam_size: Optional[int] = None,
                   mips: str = "brute_force", scann_settings=None) -> str:
  """Writes `model_dir/export/serving` atomically (signatures `serving_default`,
  `tokenization_info`); arguments as `QAServingModule`."""
  module = QAServingModule(model, block_texts, vocab_file, do_lower_case, max_question_len,
                           reader_beam_size, mips, scann_settings)
  signatures = {"serving_default": module.serve.get_concrete_function(),
                "tokenization_info": module.tokenization_info_module.__call__.get_concrete_function()}
  return common.save_atomically(module, export_dir, signatures)
