//! Hanmadi router: authorization, message ids, the appender, presence and delivery.
