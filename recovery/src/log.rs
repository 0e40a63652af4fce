//! The install log: every line goes to the console (stderr), to the server's log for this
//! install, and into a tail kept for the `Failed` report.

use std::collections::VecDeque;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::protocol::Source;

/// Lines kept for the failure report.
const TAIL_LINES: usize = 40;

pub struct Log<'s> {
    server: &'s dyn Source,
    tail: VecDeque<String>,
    /// Set once sending to the server failed, so a dead server does not flood the console.
    server_failed: bool,
}

impl<'s> Log<'s> {
    pub fn new(server: &'s dyn Source) -> Log<'s> {
        Log {
            server,
            tail: VecDeque::new(),
            server_failed: false,
        }
    }

    pub fn line(&mut self, text: &str) {
        for l in text.lines() {
            eprintln!("ignite-agent: {l}");
            if self.tail.len() == TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(l.to_string());
        }
        if !self.server_failed {
            if let Err(e) = self.server.log(text) {
                self.server_failed = true;
                eprintln!("ignite-agent: cannot send the log to the server: {e:#}");
            }
        }
    }

    pub fn tail(&self) -> String {
        self.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Runs `cmd`, logging the command and its output; a non-zero exit is an error carrying
    /// the last lines of its output.
    pub fn run(&mut self, cmd: &mut Command) -> Result<String> {
        let shown = show(cmd);
        self.line(&format!("$ {shown}"));
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {shown}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let both = format!("{stdout}{stderr}");
        if !both.trim().is_empty() {
            self.line(both.trim_end());
        }
        if !out.status.success() {
            let last: Vec<&str> = both.trim_end().lines().rev().take(3).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            bail!("`{shown}` failed ({}): {}", out.status, last.join(" / "));
        }
        Ok(stdout)
    }
}

/// The command as one would type it.
pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
