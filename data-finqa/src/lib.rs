//! FinQA data pipeline: loading, prompts, labels, batching, metrics.
