//! CUDA C++ kernel sources, their host emulator and the compile gates.
