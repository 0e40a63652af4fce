//! Capture a guest or client disk into the archive, restore it, clone it with a new identity.
