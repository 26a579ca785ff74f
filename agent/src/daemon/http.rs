//! The read-only HTTP status endpoint.
