"""Fast scoring for cloze models: the engine behind ``RewardModel.compare_batch`` (``engine``) and the
ONNX Runtime export (``export``)."""
