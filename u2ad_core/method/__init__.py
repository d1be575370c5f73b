"""The U2AD method: the EdgeMAE model, mask samplers, the Monte-Carlo uncertainty engine,
pretraining and uncertainty-guided adaptation, scoring (anomaly map, curve, segment and patient
scores) and ``u2ad infer``. Imports ``core``, ``data`` and ``metrics``."""
