//! `ignite archive`: the chunk store on the command line.

use super::progress::with_progress;
use super::remote::{self, ServerOpts, Upload};
use crate::server::api_v1::archives::{parse_sample, prune, ArchiveDetail, PrunePolicy};
use crate::server::api_v1::jobs::JobRef;
use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use ignite_archive::config::StoreConfig;
use ignite_archive::diff::{Change, DiffReport};
use ignite_archive::import::{ImportOptions, ParentChoice};
use ignite_archive::import_image::ImageSource;
use ignite_archive::retention::Decision;
use ignite_archive::stats::StoreStats;
use ignite_archive::{Manifest, SnapshotKind, Store};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(ClapArgs)]
pub struct Args {
    /// The store directory.
    #[arg(long, env = "IGNITE_STORE", global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an empty store.
    Init {
        /// Chunk size for block-image snapshots.
        #[arg(long, default_value = "64K")]
        block_size: String,
        /// zstd level for chunks (1-19).
        #[arg(long, default_value_t = ignite_archive::config::DEFAULT_ZSTD_LEVEL)]
        zstd_level: i32,
    },
    /// Import a tar stream (plain, gz, zst, xz; `-` for stdin), a directory, or a raw image.
    ///
    /// With --server, a tar file uploaded to the server's store (as a job, followed to its
    /// end).
    Import {
        #[command(flatten)]
        api: ServerOpts,
        #[arg(long)]
        name: String,
        /// Free-form labels, e.g. --label guest=web1.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Use this snapshot as parent (default: the latest of the same name and labels).
        #[arg(long, conflicts_with = "no_parent")]
        parent: Option<String>,
        #[arg(long)]
        no_parent: bool,
        /// Descend into other file systems when importing a directory.
        #[arg(long)]
        cross_file_systems: bool,
        /// A raw disk image or block device to import as a block snapshot.
        #[arg(long, conflicts_with = "source")]
        image: Option<PathBuf>,
        /// FILE.tar[.gz|.zst|.xz], `-` (tar on stdin) or DIR.
        #[arg(required_unless_present = "image")]
        source: Option<String>,
    },
    /// Write a snapshot out: NAME (latest), NAME@ID or an id prefix.
    Export {
        snapshot: String,
        #[arg(long, group = "dest")]
        dir: Option<PathBuf>,
        /// A tar file, or `-` for stdout.
        #[arg(long, group = "dest")]
        tar: Option<String>,
        #[arg(long, group = "dest")]
        image: Option<PathBuf>,
    },
    /// List snapshots.
    List {
        #[command(flatten)]
        api: ServerOpts,
        #[arg(long)]
        json: bool,
        /// Only snapshots of this name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one snapshot.
    Show {
        #[command(flatten)]
        api: ServerOpts,
        snapshot: String,
        #[arg(long)]
        json: bool,
        /// Also list its entries (trees).
        #[arg(long)]
        entries: bool,
    },
    /// What changed between two snapshots.
    Diff {
        from: String,
        to: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Check that every referenced chunk is present and intact.
    Verify {
        /// Read only this fraction of chunks (0.1 or 10%).
        #[arg(long)]
        sample: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Forget snapshots by retention policy (restic semantics, grouped by name and labels).
    Prune {
        #[command(flatten)]
        policy: PrunePolicy,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Remove chunks no snapshot needs (safe while imports run).
    Gc {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ServerOpts,
    },
    /// Sizes, deduplication and compression of the whole store.
    Stats {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ServerOpts,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?}: write it as key=value"))?;
    if k.is_empty() {
        return Err(format!("label {s:?}: the key is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn time_str(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn labels_str(m: &Manifest) -> String {
    m.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn open(store: &Option<PathBuf>) -> Result<Store> {
    let path = store
        .as_ref()
        .context("no store given; pass --store DIR or set IGNITE_STORE")?;
    Ok(Store::open(path)?)
}

/// `archive list`'s table.
fn list_table(snaps: &[Manifest]) -> String {
    let mut out = format!(
        "{:<16}  {:<19}  {:<5}  {:>10}  {:>10}  {:<20} labels\n",
        "id", "time (UTC)", "kind", "size", "added", "name"
    );
    for m in snaps {
        out += &format!(
            "{:<16}  {:<19}  {:<5}  {:>10}  {:>10}  {:<20} {}\n",
            m.id,
            time_str(m.time),
            if m.kind == SnapshotKind::Tree {
                "tree"
            } else {
                "image"
            },
            human(m.stats.logical_bytes),
            human(m.stats.new_stored_bytes),
            m.name,
            labels_str(m)
        );
    }
    out
}

/// `archive show`'s text.
fn show_text(d: &ArchiveDetail) -> String {
    let m = &d.manifest;
    let mut out = format!("id:        {}\n", m.id);
    out += &format!("name:      {}\n", m.name);
    out += &format!("kind:      {:?}\n", m.kind);
    out += &format!("time:      {} UTC\n", time_str(m.time));
    out += &format!("labels:    {}\n", labels_str(m));
    out += &format!("parent:    {}\n", m.parent.as_deref().unwrap_or("-"));
    out += &format!(
        "size:      {} ({} zero)\n",
        human(m.stats.logical_bytes),
        human(m.stats.zero_bytes)
    );
    out += &format!("entries:   {}\n", m.stats.entries);
    out += &format!(
        "chunks:    {} ({} new, {} added)\n",
        m.stats.chunks,
        m.stats.new_chunks,
        human(m.stats.new_stored_bytes)
    );
    for e in d.entries.iter().flatten() {
        out += &format!("{:o} {}:{} {}\n", e.mode, e.uid, e.gid, e.path_str());
    }
    out
}

fn import_summary(m: &Manifest) {
    let s = &m.stats;
    let rate = s.logical_bytes as f64 / s.seconds.max(1e-9) / 1e6;
    println!(
        "snapshot {} {} ({}): {} in {} entries; {} new in {} new of {} chunks; read {}; {:.1}s ({rate:.0} MB/s)",
        m.id,
        m.name,
        match m.kind {
            SnapshotKind::Tree => "tree",
            SnapshotKind::Image => "image",
        },
        human(s.logical_bytes),
        s.entries,
        human(s.new_stored_bytes),
        s.new_chunks,
        s.chunks,
        human(s.read_bytes),
        s.seconds,
    );
}

pub fn run(args: Args) -> Result<()> {
    // Packs and snapshots hold whole systems (shadow files, host keys): private (0600/0700).
    crate::state::private_umask();
    match args.command {
        Cmd::Init {
            block_size,
            zstd_level,
        } => {
            let path = args
                .store
                .context("no store given; pass --store DIR or set IGNITE_STORE")?;
            let bs = ignite_profiles::parse_bytes(&block_size)
                .map_err(|e| anyhow::anyhow!("block size: {e}"))?;
            let mut cfg = StoreConfig {
                block_size: u32::try_from(bs).context("block size too large")?,
                ..Default::default()
            };
            cfg.compression.level = zstd_level;
            Store::init(&path, cfg)?;
            println!("initialized store {}", path.display());
        }
        Cmd::Import {
            api,
            name,
            labels,
            parent,
            no_parent,
            cross_file_systems,
            image,
            source,
        } => {
            if let Some(r) = api.remote_if_asked(&remote::default_state_dir())? {
                if !labels.is_empty() || parent.is_some() || no_parent || cross_file_systems {
                    bail!("--label, --parent, --no-parent and --cross-file-systems are for local imports; the server's import takes a tar and a name");
                }
                let source = match (&image, source.as_deref()) {
                    (None, Some(s)) if s != "-" && !Path::new(s).is_dir() => s,
                    _ => bail!("with --server, import a tar file (FILE.tar[.gz|.zst|.xz]): the server's import takes a tar"),
                };
                let f = std::fs::File::open(source)
                    .with_context(|| format!("{source}: cannot open it"))?;
                let path = format!("/api/v1/archives/import?name={}", remote::segment(&name));
                let job: JobRef = r.post_body(&path, "application/x-tar", Upload::File(f))?;
                import_summary(&serde_json::from_value(r.wait_job(job.job)?)?);
                return Ok(());
            }
            let store = open(&args.store)?;
            let mut opts = ImportOptions::new(&name);
            opts.labels = labels.into_iter().collect::<BTreeMap<_, _>>();
            opts.one_file_system = !cross_file_systems;
            opts.parent = match (parent, no_parent) {
                (Some(p), _) => ParentChoice::Id(p),
                (None, true) => ParentChoice::None,
                (None, false) => ParentChoice::Auto,
            };
            let m = if let Some(img) = image {
                let total = std::fs::File::open(&img)
                    .ok()
                    .and_then(|f| ignite_archive::fsutil::source_size(&f).ok());
                with_progress(total, "import", |p| {
                    ignite_archive::import_image::import_image(
                        &store,
                        ImageSource {
                            reader: &ignite_archive::FileImage::open(&img)?,
                            changed: None,
                        },
                        &opts,
                        p,
                    )
                })?
            } else {
                let source = source.expect("clap requires source");
                if source == "-" {
                    with_progress(None, "import", |p| {
                        ignite_archive::import_tar::import_tar(
                            &store,
                            std::io::stdin().lock(),
                            &opts,
                            p,
                        )
                    })?
                } else {
                    let path = Path::new(&source);
                    let md = std::fs::metadata(path)
                        .with_context(|| format!("{source}: cannot read it"))?;
                    if md.is_dir() {
                        with_progress(None, "import", |p| {
                            ignite_archive::import_dir::import_dir(&store, path, &opts, p)
                        })?
                    } else {
                        let f = std::fs::File::open(path)
                            .with_context(|| format!("{source}: cannot open it"))?;
                        with_progress(Some(md.len()), "import", |p| {
                            ignite_archive::import_tar::import_tar(&store, f, &opts, p)
                        })?
                    }
                }
            };
            import_summary(&m);
        }
        Cmd::Export {
            snapshot,
            dir,
            tar,
            image,
        } => {
            let store = open(&args.store)?;
            let m = store.resolve(&snapshot)?;
            let total = Some(m.stats.logical_bytes);
            if let Some(dir) = dir {
                let st = with_progress(total, "export", |p| {
                    ignite_archive::export_dir::export_dir(&store, &m, &dir, p)
                })?;
                eprintln!(
                    "exported {} ({}) to {}: {} entries, {}",
                    m.id,
                    m.name,
                    dir.display(),
                    st.entries,
                    human(st.bytes)
                );
                if st.skipped_devices > 0 {
                    eprintln!(
                        "warning: {} device nodes skipped (not root)",
                        st.skipped_devices
                    );
                }
            } else if let Some(tar) = tar {
                if tar == "-" {
                    let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                    ignite_archive::export_tar::export_tar(&store, &m, out)?;
                } else {
                    let f = std::fs::File::create(&tar)
                        .with_context(|| format!("{tar}: cannot create it"))?;
                    ignite_archive::export_tar::export_tar(&store, &m, std::io::BufWriter::new(f))?;
                }
            } else if let Some(image) = image {
                with_progress(total, "export", |p| {
                    ignite_archive::export_image::export_image(&store, &m, &image, p)
                })?;
                eprintln!("exported {} ({}) to {}", m.id, m.name, image.display());
            } else {
                bail!("say where to: --dir DIR, --tar FILE|- or --image FILE");
            }
        }
        Cmd::List { api, json, name } => {
            let snaps: Vec<Manifest> = match api.remote_if_asked(&remote::default_state_dir())? {
                Some(r) => {
                    let query = name
                        .as_deref()
                        .map(|n| format!("?name={}", remote::segment(n)))
                        .unwrap_or_default();
                    r.get(&format!("/api/v1/archives{query}"))?
                }
                None => open(&args.store)?
                    .list_snapshots()?
                    .into_iter()
                    .filter(|m| name.as_ref().is_none_or(|n| &m.name == n))
                    .collect(),
            };
            if json {
                return print_json(&snaps);
            }
            print!("{}", list_table(&snaps));
        }
        Cmd::Show {
            api,
            snapshot,
            json,
            entries,
        } => {
            let d: ArchiveDetail = match api.remote_if_asked(&remote::default_state_dir())? {
                Some(r) => r.get(&format!(
                    "/api/v1/archives/{}?entries={entries}",
                    remote::segment(&snapshot)
                ))?,
                None => {
                    let store = open(&args.store)?;
                    let m = store.resolve(&snapshot)?;
                    let entries = match entries && m.kind == SnapshotKind::Tree {
                        true => Some(store.load_tree(&m)?),
                        false => None,
                    };
                    ArchiveDetail {
                        manifest: m,
                        entries,
                    }
                }
            };
            if json {
                return print_json(&d);
            }
            print!("{}", show_text(&d));
        }
        Cmd::Diff {
            from,
            to,
            json,
            api,
        } => {
            let (a, b, report): (Manifest, Manifest, DiffReport) =
                match api.remote_if_asked(&remote::default_state_dir())? {
                    Some(r) => {
                        let show = |spec: &str| -> Result<Manifest> {
                            let d: ArchiveDetail =
                                r.get(&format!("/api/v1/archives/{}", remote::segment(spec)))?;
                            Ok(d.manifest)
                        };
                        let (a, b) = (show(&from)?, show(&to)?);
                        let path = format!(
                            "/api/v1/archives/diff?from={}&to={}",
                            remote::segment(&a.id),
                            remote::segment(&b.id)
                        );
                        (a, b, r.get(&path)?)
                    }
                    None => {
                        let store = open(&args.store)?;
                        let (a, b) = (store.resolve(&from)?, store.resolve(&to)?);
                        let report = ignite_archive::diff::diff(&store, &a, &b)?;
                        (a, b, report)
                    }
                };
            if json {
                return print_json(&report);
            }
            match report {
                DiffReport::Tree { changes } => {
                    for c in &changes {
                        match c {
                            Change::Added { path } => println!("+ {path}"),
                            Change::Removed { path } => println!("- {path}"),
                            Change::Changed { path, what } => {
                                println!("M {path} ({})", what.join(","))
                            }
                        }
                    }
                    eprintln!("{} changes between {} and {}", changes.len(), a.id, b.id);
                }
                DiffReport::Image {
                    blocks,
                    changed_blocks,
                    changed_bytes,
                } => println!(
                    "{changed_blocks} of {blocks} blocks differ ({})",
                    human(changed_bytes)
                ),
            }
        }
        Cmd::Verify { sample, json, api } => {
            if let Some(r) = api.remote_if_asked(&remote::default_state_dir())? {
                // The job's log is the report (its problems, then the counts).
                let path = match &sample {
                    Some(s) => format!("/api/v1/archives/verify?sample={}", remote::segment(s)),
                    None => "/api/v1/archives/verify".into(),
                };
                let job: JobRef = r.call("POST", &path, None)?;
                let report = if json {
                    r.wait_job(job.job)?
                } else {
                    r.wait_job_logged(job.job)?
                };
                if json {
                    print_json(&report)?;
                }
                return Ok(());
            }
            let store = open(&args.store)?;
            let fraction = match sample {
                None => 1.0,
                Some(s) => parse_sample(&s)?,
            };
            let r = ignite_archive::verify::verify(&store, fraction)?;
            if json {
                print_json(&r)?;
            } else {
                for p in &r.problems {
                    println!("problem: {p}");
                }
                println!(
                    "{}: {} snapshots, {} packs, {} of {} referenced chunks read ({})",
                    if r.ok() { "ok" } else { "DAMAGED" },
                    r.snapshots,
                    r.packs,
                    r.chunks_checked,
                    r.chunks_referenced,
                    human(r.bytes_checked)
                );
            }
            if !r.ok() {
                bail!(
                    "store {} has {} problems",
                    store.root().display(),
                    r.problems.len()
                );
            }
        }
        Cmd::Prune { policy, json, api } => {
            let dry_run = policy.dry_run;
            let decisions: Vec<Decision> = match api.remote_if_asked(&remote::default_state_dir())?
            {
                Some(r) => {
                    let job: JobRef = r.call(
                        "POST",
                        "/api/v1/archives/prune",
                        Some(serde_json::to_value(&policy)?),
                    )?;
                    serde_json::from_value(r.wait_job(job.job)?)?
                }
                None => prune(&open(&args.store)?, &policy.policy()?, dry_run)?,
            };
            if json {
                return print_json(&decisions);
            }
            for d in &decisions {
                println!(
                    "{} {} {} {}  {}",
                    if d.keep {
                        "keep  "
                    } else if dry_run {
                        "would remove"
                    } else {
                        "remove"
                    },
                    d.id,
                    time_str(d.time),
                    d.name,
                    d.reasons.join(", ")
                );
            }
            let gone = decisions.iter().filter(|d| !d.keep).count();
            eprintln!(
                "{} {gone} of {} snapshots; run `ignite archive gc` to free their space",
                if dry_run { "would remove" } else { "removed" },
                decisions.len()
            );
        }
        Cmd::Gc { json, api } => {
            let r: ignite_archive::gc::GcReport =
                match api.remote_if_asked(&remote::default_state_dir())? {
                    Some(r) => {
                        let job: JobRef = r.call("POST", "/api/v1/archives/gc", None)?;
                        serde_json::from_value(r.wait_job(job.job)?)?
                    }
                    None => ignite_archive::gc::gc(&open(&args.store)?)?,
                };
            if json {
                return print_json(&r);
            }
            println!(
                "gc: {} packs: {} deleted, {} repacked, {} rescued for running imports; {} chunks removed; {} freed",
                r.packs_before,
                r.packs_deleted,
                r.packs_repacked,
                r.packs_rescued,
                r.chunks_removed,
                human(r.bytes_freed.max(0) as u64)
            );
        }
        Cmd::Stats { json, api } => {
            let s: StoreStats = match api.remote_if_asked(&remote::default_state_dir())? {
                Some(r) => r.get("/api/v1/archives/stats")?,
                None => ignite_archive::stats::stats(&open(&args.store)?)?,
            };
            if json {
                return print_json(&s);
            }
            println!("snapshots:    {}", s.snapshots);
            println!("logical:      {}", human(s.logical_bytes));
            println!("stored:       {}", human(s.stored_bytes));
            println!(
                "chunks:       {} ({} unique)",
                s.chunks,
                human(s.unique_bytes)
            );
            println!("dedup:        {:.2}x", s.dedup_ratio);
            println!("compression:  {:.2}x", s.compression_ratio);
            println!("total:        {:.2}x", s.total_ratio);
        }
    }
    Ok(())
}
