//! The HTTP API tests.
