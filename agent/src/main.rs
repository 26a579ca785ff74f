fn main() -> anyhow::Result<()> {
    eprintln!("skiff: the agent is not built yet; use skiff-runtime (see README.md)");
    std::process::exit(2)
}
