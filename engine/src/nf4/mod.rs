//! NF4 / FP4 4-bit quantization with double quantization, bit-compatible with bitsandbytes.
