"""The train/serve contract: what training writes and the service reads, defined once.

- modelspec: the model.json schema (tasks, feature schema, tensors, scoring defaults) and the
  model-name rule;
- features: the one feature transform, raw values -> the model's input arrays;
- scoring: the ranking formula, score = prod_k p_k^w_k * f(video_len).

NumPy and pydantic only: it imports neither `training` (torch) nor `service` (ONNX Runtime,
Redis, FastAPI), so both sides, and any tool, can import it alone.
"""
