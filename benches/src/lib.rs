//! Shared helpers for Hanmadi benchmarks.
