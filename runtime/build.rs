//! Link skiff-runtime as a position-dependent executable: the dynamic loader then has
//! almost nothing to relocate at start-up (a PIE has ~8,000 relative relocations), which
//! is a measurable part of a container start (see hack/bench-runtime).
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
