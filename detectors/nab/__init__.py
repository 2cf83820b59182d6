"""Numenta Anomaly Benchmark (NAB) scoring, reproducing numenta/NAB's scorer in numpy.

Modules: :mod:`.windows` (labels, probation), :mod:`.scoring` (one file at one threshold),
:mod:`.sweep` (one threshold over a corpus, optimization, normalization) and :mod:`.corpus`
(reading data, detector results and NAB's stored scores from a folder you pass in).
"""

from accelpilot.detectors.nab.corpus import (
    DetectorResults,
    StoredFileScore,
    StoredThreshold,
    list_data_files,
    load_detector_corpus,
    load_detector_results,
    load_profiles,
    load_stored_file_scores,
    load_thresholds,
    prepare_file,
)
from accelpilot.detectors.nab.scoring import (
    CostMatrix,
    DetectorFile,
    FileScore,
    RowLayout,
    row_layout,
    row_sweep_scores,
    scaled_sigmoid,
    score_file,
)
from accelpilot.detectors.nab.sweep import (
    BenchmarkScore,
    CorpusScore,
    ThresholdSweep,
    benchmark,
    normalized_score,
    null_score,
    perfect_score,
    score_corpus,
    sweep_thresholds,
)
from accelpilot.detectors.nab.windows import (
    count_windows,
    load_windows,
    probation_rows,
    window_row_spans,
)

__all__ = [
    "BenchmarkScore",
    "CorpusScore",
    "CostMatrix",
    "DetectorFile",
    "DetectorResults",
    "FileScore",
    "RowLayout",
    "StoredFileScore",
    "StoredThreshold",
    "ThresholdSweep",
    "benchmark",
    "count_windows",
    "list_data_files",
    "load_detector_corpus",
    "load_detector_results",
    "load_profiles",
    "load_stored_file_scores",
    "load_thresholds",
    "load_windows",
    "normalized_score",
    "null_score",
    "perfect_score",
    "prepare_file",
    "probation_rows",
    "row_layout",
    "row_sweep_scores",
    "scaled_sigmoid",
    "score_corpus",
    "score_file",
    "sweep_thresholds",
    "window_row_spans",
]
