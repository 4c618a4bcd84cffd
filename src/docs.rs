//! The man pages and shell completions, generated from the clap definitions (`cli`), so the docs
//! and the binary can never disagree: `hurricane generate-docs DIR` writes them, `scripts/gen-docs`
//! puts them in `man/` and `contrib/completions/`, and a test fails when the checked-in ones differ
//! from what the binary generates.

use std::io;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `DIR/man/*.1` (one page for hurricane and one per command) and
/// `DIR/completions/{hurricane.bash,_hurricane,hurricane.fish}`.
pub fn generate(dir: &Path) -> io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    let mut command = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, "hurricane", &completions)?;
    }
    Ok(())
}
