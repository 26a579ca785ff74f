//! skiff-images: the agent's supply line (registry client, content-addressed store,
//! safe layer unpacking, overlay rootfs, OCI bundle generation).
//!
//! Not built yet: see issue 3. The crate exists so the workspace shows the architecture.
