//! sd_notify(3).
