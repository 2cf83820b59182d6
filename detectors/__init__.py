"""Anomaly detection over batches of devices (issue #5).

One batch API (:mod:`.base`), one module per detector (:mod:`.robust`, :mod:`.covariance`,
:mod:`.forecaster`, :mod:`.peers`, :mod:`.gaps`, :mod:`.ensemble`), shared calibration
(:mod:`.calibrate`), thresholding apart (:mod:`.threshold`), detectors by name
(:mod:`.registry`), the NAB runner (:mod:`.nab_runner`) and scorer (:mod:`.nab`), and the
throughput benchmark against River (:mod:`.bench`). Nothing heavy is imported here.
"""
