//! Hanmadi wire protocol: schema, generated types and frame codec.
