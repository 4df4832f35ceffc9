//! Falcon-family causal LMs on top of `engine`.
