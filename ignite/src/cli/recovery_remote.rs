//! `ignite recovery capture NAME | restore | clone | prune … --server URL`: the same work as a
//! job of the server's management API (`/api/v1/recovery/{name}/…`), followed to its end with
//! its log printed as it runs. The server does the work on its own guests, store and disks:
//! `--to` names the server's files, and the new guests are the server's.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::{json, Value};

use super::remote::{segment, Remote};
use crate::server::api_v1::jobs::JobRef;
use crate::state::schedules::Keep;

/// `NAME`, `NAME@latest` or `NAME@ID`: the guest, and the capture id when one is named.
pub fn split_capture(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((name, "latest")) => (name, None),
        Some((name, id)) => (name, Some(id)),
        None => (spec, None),
    }
}

/// `POST /api/v1/recovery/{name}/{what}` with `body`, then the job to its end.
fn job(r: &Remote, name: &str, what: &str, body: Option<Value>) -> Result<Value> {
    let path = format!("/api/v1/recovery/{}/{what}", segment(name));
    let j: JobRef = r.call("POST", &path, body)?;
    r.wait_job_logged(j.job)
}

pub fn capture(r: &Remote, name: &str) -> Result<()> {
    job(r, name, "capture", None).map(drop)
}

/// The fields of an instant restore or clone in a request.
fn instant_fields(body: &mut Value, instant: Option<u64>) {
    if let Some(rate) = instant {
        body["instant"] = json!(true);
        if rate > 0 {
            body["rate"] = json!(rate);
        }
    }
}

/// `instant`: Some(rate) for an instant restore (0: no limit).
pub fn restore(
    r: &Remote,
    spec: &str,
    to: &[PathBuf],
    as_guest: Option<&str>,
    instant: Option<u64>,
) -> Result<()> {
    let (name, id) = split_capture(spec);
    let mut body = json!({ "snapshot": id });
    // The server says what is missing or wrong (targets per disk, relative paths).
    match as_guest {
        Some(new) => body["as_guest"] = json!(new),
        None => body["to"] = json!(to),
    }
    instant_fields(&mut body, instant);
    job(r, name, "restore", Some(body)).map(drop)
}

pub fn clone(
    r: &Remote,
    spec: &str,
    new: &str,
    hostname: Option<&str>,
    macs: &[String],
    instant: Option<u64>,
) -> Result<()> {
    let (name, id) = split_capture(spec);
    let mut body = json!({ "snapshot": id, "as": new, "hostname": hostname, "mac": macs });
    instant_fields(&mut body, instant);
    job(r, name, "clone", Some(body)).map(drop)
}

pub fn prune(r: &Remote, name: &str, keep: &Keep, dry_run: bool) -> Result<()> {
    let body = json!({
        "keep_last": keep.last, "keep_daily": keep.daily, "keep_weekly": keep.weekly,
        "keep_monthly": keep.monthly, "dry_run": dry_run,
    });
    job(r, name, "prune", Some(body)).map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_capture_names_its_guest_and_maybe_an_id() {
        use super::split_capture;
        assert_eq!(split_capture("web1"), ("web1", None));
        assert_eq!(split_capture("web1@latest"), ("web1", None));
        assert_eq!(split_capture("web1@0a1b2c"), ("web1", Some("0a1b2c")));
    }
}
