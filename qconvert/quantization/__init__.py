"""Quantization: which nodes (planning), the one adapter to onnxruntime's quantizers, pre-processing,
activation ranges, SmoothQuant, the float-outputs pass, and the job that runs them as steps."""
