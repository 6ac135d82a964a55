pub fn run(_bin: &std::path::Path) -> anyhow::Result<()> {
    todo!()
}
