//! `genbench info`: what this binary is, what machine it runs on, and which kernel route runs.

pub fn run() -> anyhow::Result<()> {
    let info = genbench_runtime::info::runtime_info();
    println!("genbench {}", env!("CARGO_PKG_VERSION"));
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}
