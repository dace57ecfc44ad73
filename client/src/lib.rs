//! Hanmadi client library.
