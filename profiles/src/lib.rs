//! Install profiles (TOML): disk layout, file systems, golden archive, identity, network, hooks.
