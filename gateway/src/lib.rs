//! Hanmadi gateway: listeners, connection tasks and the connection registry.
