//! Support code for the workspace-level end-to-end tests.
