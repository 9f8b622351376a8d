"""The model core: configuration, the RMT / RMT-R model, the recurrence over segments, the
answer (loss and greedy decoding) and streaming. It needs jax, flax and optax only: no data
pipeline (grain), no dataset builder (TFDS), no run layer; the training and evaluation layer
(`rmt_jax.train_lib`, `rmt_jax.evaluate_lib`, ...) sits beside it and imports it."""
