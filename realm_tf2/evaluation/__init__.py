"""Answer normalisation, EM / regex matching, QA/retrieval metrics (ORQA's, original §3.5)."""
import realm_tf2  # noqa: F401
from realm_tf2.evaluation.answers import (exact_match, has_answer, has_answer_normalized, is_correct,
                                          normalize_answer, regex_match)
from realm_tf2.evaluation.metrics import (ORQA_TOP_KS, EvaluationInputError, evaluate_predictions,
                                          first_answer_rank, match_at_k, recall_at_k, reference_map)
