"""Answer normalisation, EM / regex matching and QA/retrieval metrics (ORQA semantics, reference §3.5)."""
import realm_tf2  # noqa: F401
from realm_tf2.evaluation.answers import (exact_match, has_answer, has_answer_normalized, is_correct,
                                          normalize_answer, regex_match)
from realm_tf2.evaluation.metrics import (EvaluationInputError, evaluate_predictions, first_answer_rank,
                                          reader_oracle, reader_oracle_from_correct, recall_at_k)
