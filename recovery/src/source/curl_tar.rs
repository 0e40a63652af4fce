//! The install benchmark's baseline: the golden image as a plain tarball over HTTP, unpacked
//! with `curl | tar`, as a site without Ignite would. With `ignite.baseline-tar=URL` on the
//! kernel command line the agent does everything else as usual (plan, partitions, file
//! systems, identity, boot loader, phase reports), so the benchmark compares the extract
//! step alone, in the same guest.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use ignite_profiles::{ArchiveRef, ClientFacts, InstallPlan};

use crate::protocol::{Phase, Source};

pub struct CurlTar {
    pub server: Box<dyn Source>,
    pub url: String,
}

impl Source for CurlTar {
    fn plan(&self, facts: &ClientFacts) -> Result<InstallPlan> {
        self.server.plan(facts)
    }

    fn report(&self, phase: &Phase) -> Result<()> {
        self.server.report(phase)
    }

    fn log(&self, text: &str) -> Result<()> {
        self.server.log(text)
    }

    fn extract(
        &self,
        _archive: &ArchiveRef,
        root: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64> {
        let head = Command::new("curl")
            .args(["-sSfI", &self.url])
            .output()
            .context("cannot run curl (is it in the initramfs?)")?;
        let text = String::from_utf8_lossy(&head.stdout);
        let size: u64 = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .with_context(|| format!("{}: no Content-Length in {text:?}", self.url))?;
        // The pipeline without a shell: busybox's sh would run its own tar applet.
        let mut curl = Command::new("curl")
            .args(["-sSf", &self.url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run curl")?;
        let body = curl.stdout.take().context("curl's output")?;
        let tar = Command::new("tar")
            .args([
                "-x",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-p",
                "-C",
            ])
            .arg(root)
            .stdin(body)
            .output()
            .context("cannot run tar")?;
        let curl = curl.wait_with_output().context("curl")?;
        if !curl.status.success() || !tar.status.success() {
            bail!(
                "curl {} | tar -x -C {}: curl {}, tar {}: {}{}",
                self.url,
                root.display(),
                curl.status,
                tar.status,
                String::from_utf8_lossy(&curl.stderr),
                String::from_utf8_lossy(&tar.stderr)
            );
        }
        progress(size, size);
        Ok(size)
    }
}
