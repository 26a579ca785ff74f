//! Memory and CPU use of a container, from its cgroup (for `/metrics`).
