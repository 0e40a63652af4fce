//! `ignite generate-docs --root DIR` (hidden): man pages and shell completions made from this
//! very CLI definition, so they cannot drift from it. `scripts/package-deb` runs it into the
//! package tree; nothing generated is checked in. Layout under DIR (Debian's paths):
//!
//! ```text
//! usr/share/man/man1/ignite.1, ignite-<command>[-<subcommand>].1   one page per visible command
//! usr/share/bash-completion/completions/ignite
//! usr/share/zsh/vendor-completions/_ignite
//! usr/share/fish/vendor_completions.d/ignite.fish
//! ```
//!
//! `--openapi FILE` writes the management API's OpenAPI document (checked in as
//! docs/openapi.json; a test fails when it differs from what the code serves).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct Args {
    /// Root of the tree to write into (e.g. a package's staging directory).
    #[arg(long, required_unless_present = "openapi")]
    root: Option<PathBuf>,
    /// Write the /api/v1 OpenAPI document to this file (docs/openapi.json in the repository).
    #[arg(long, value_name = "FILE")]
    openapi: Option<PathBuf>,
}

/// Where each shell looks for completions on Debian, and the file name it expects.
const COMPLETIONS: &[(Shell, &str)] = &[
    (Shell::Bash, "usr/share/bash-completion/completions/ignite"),
    (Shell::Zsh, "usr/share/zsh/vendor-completions/_ignite"),
    (
        Shell::Fish,
        "usr/share/fish/vendor_completions.d/ignite.fish",
    ),
];

pub fn run(a: Args) -> Result<()> {
    if let Some(root) = &a.root {
        for path in generate(root)? {
            println!("{}", path.display());
        }
    }
    if let Some(file) = &a.openapi {
        let doc = crate::server::api_v1::openapi_json();
        println!("{}", write(file, doc.as_bytes())?.display());
    }
    Ok(())
}

/// Writes every page and completion file under `root`; returns their paths.
pub fn generate(root: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = super::Cli::command();
    // Fills in each subcommand's bin name ("ignite server"), which the synopses print.
    cmd.build();
    let mut written = Vec::new();
    let man_dir = root.join("usr/share/man/man1");
    for (name, page) in man_pages(&cmd, None)? {
        written.push(write(&man_dir.join(format!("{name}.1")), &page)?);
    }
    // The shells' generators offer hidden commands too: they get a CLI without them.
    let mut visible = without_hidden(&super::Cli::command());
    for (shell, rel) in COMPLETIONS {
        let mut out = Vec::new();
        clap_complete::generate(*shell, &mut visible, "ignite", &mut out);
        written.push(write(&root.join(rel), &out)?);
    }
    Ok(written)
}

/// `cmd` (as defined, before clap adds its help flags and subcommand) with only its visible
/// arguments and subcommands: what completions should offer.
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    let mut c = clap::Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(without_hidden),
        );
    if let Some(about) = cmd.get_about() {
        c = c.about(about.clone());
    }
    // Only the top command has a version (`ignite -V`).
    if cmd.get_version().is_some() {
        c = c.version(env!("CARGO_PKG_VERSION"));
    }
    c
}

/// One page per visible command, named as man(1) users expect: `ignite-archive-import`.
fn man_pages(cmd: &clap::Command, parent: Option<&str>) -> Result<Vec<(String, Vec<u8>)>> {
    let name = match parent {
        Some(p) => format!("{p}-{}", cmd.get_name()),
        None => cmd.get_name().to_string(),
    };
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone().display_name(&name))
        .render(&mut page)
        .with_context(|| format!("cannot render the man page {name}"))?;
    let mut pages = vec![(name.clone(), page)];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap's own `help` subcommand is documented by every page's option list.
        if sub.get_name() != "help" {
            pages.extend(man_pages(sub, Some(&name))?);
        }
    }
    Ok(pages)
}

fn write(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let dir = path.parent().context("a generated file has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command path of the CLI, as `ignite-a-b` names.
    fn command_names(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        let name = format!("{prefix}{}", cmd.get_name());
        for sub in cmd.get_subcommands() {
            if !sub.is_hide_set() && sub.get_name() != "help" {
                command_names(sub, &format!("{name}-"), out);
            }
        }
        out.push(name);
    }

    #[test]
    fn every_visible_command_has_a_page_and_the_completions_know_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(dir.path()).unwrap();
        let mut want = Vec::new();
        command_names(&crate::cli::Cli::command(), "", &mut want);
        assert!(want.len() > 20, "{want:?}");
        let man = dir.path().join("usr/share/man/man1");
        for name in &want {
            assert!(
                man.join(format!("{name}.1")).is_file(),
                "no page for {name}"
            );
        }
        let pages = std::fs::read_dir(&man).unwrap().count();
        assert_eq!(pages, want.len(), "pages for hidden commands were written");
        assert_eq!(written.len(), want.len() + COMPLETIONS.len());
        let server = std::fs::read_to_string(man.join("ignite-server.1")).unwrap();
        assert!(server.contains(".TH ignite-server 1"), "{server}");
        // The synopsis names the command as typed; roff escapes the dashes of the flags.
        assert!(server.contains("ignite server"), "{server}");
        assert!(server.contains("\\-\\-check"), "{server}");
        let bash = std::fs::read_to_string(
            dir.path()
                .join("usr/share/bash-completion/completions/ignite"),
        )
        .unwrap();
        assert!(bash.contains("--check") && bash.contains("recovery"));
        assert!(!bash.contains("generate-docs") && !bash.contains("install-extract"));
        let fish = std::fs::read_to_string(
            dir.path()
                .join("usr/share/fish/vendor_completions.d/ignite.fish"),
        )
        .unwrap();
        assert!(fish.contains("-l check"), "{fish}");
    }
}
