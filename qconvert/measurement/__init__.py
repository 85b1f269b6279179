"""A model measured against its FP32 original: metrics, validation with gates, interleaved benchmarks,
and per-node error analysis."""
