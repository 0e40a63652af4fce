//! The archive on real data: a debootstrap root file system as a tar and as an ext4 image,
//! and a five-generation nightly series.

use ignite_e2e::*;
use std::path::Path;

fn prerequisites() -> bool {
    require(is_root(), "root (debootstrap, chroot, mknod)")
        && require(
            have("debootstrap"),
            "debootstrap (scripts/setup installs it)",
        )
        && require(have("mke2fs") && have("e2fsck"), "e2fsprogs")
}

fn store_in(dir: &Path) -> String {
    let s = dir.join("store");
    ignite(&["archive", "--store", s.to_str().unwrap(), "init"]);
    s.to_str().unwrap().to_string()
}

#[test]
fn debootstrap_tree_round_trip_is_exact() {
    if !prerequisites() {
        return;
    }
    let paths = fixture("rootfs");
    let (base, tar) = (paths[0].to_str().unwrap(), paths[1].to_str().unwrap());
    let t = tempfile::tempdir().unwrap();
    let s = store_in(t.path());
    ignite(&[
        "archive",
        "--store",
        &s,
        "import",
        "--name",
        "debian-12",
        tar,
    ]);
    let out = t.path().join("out");
    let out = out.to_str().unwrap();
    ignite(&[
        "archive",
        "--store",
        &s,
        "export",
        "debian-12",
        "--dir",
        out,
    ]);
    // GNU tar: contents, modes, owners, mtimes, link targets, device numbers.
    sh(&format!(
        "tar --numeric-owner --xattrs --xattrs-include='*' -C {out} --compare -f {tar}"
    ));
    // Ours: also xattrs and hard-link structure, and the source directory agrees too.
    ignite(&[
        "archive", "--store", &s, "import", "--name", "exported", out,
    ]);
    ignite(&["archive", "--store", &s, "import", "--name", "source", base]);
    for other in ["exported", "source"] {
        let d = ignite_json(&[
            "archive",
            "--store",
            &s,
            "diff",
            "debian-12",
            other,
            "--json",
        ]);
        assert_eq!(d["changes"].as_array().unwrap().len(), 0, "{other}: {d}");
    }
    let links = sh(&format!("find {out} -type f -links +1 | wc -l"));
    let src_links = sh(&format!("find {base} -type f -links +1 | wc -l"));
    assert_eq!(links, src_links);
    // And the tar we write back out carries the same tree.
    let ours = t.path().join("ours.tar");
    sh(&format!(
        "{} archive --store {s} export debian-12 --tar - > {}",
        ignite_bin().display(),
        ours.display()
    ));
    sh(&format!(
        "tar --numeric-owner -C {base} --compare -f {}",
        ours.display()
    ));
    ignite(&["archive", "--store", &s, "verify"]);
}

#[test]
fn ext4_image_round_trip_is_byte_identical() {
    if !prerequisites() {
        return;
    }
    let base = fixture("rootfs")[0].clone();
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("root.img");
    sh(&format!(
        "mke2fs -q -t ext4 -d {} {} 1G",
        base.display(),
        img.display()
    ));
    let s = store_in(t.path());
    ignite(&[
        "archive",
        "--store",
        &s,
        "import",
        "--name",
        "root-img",
        "--image",
        img.to_str().unwrap(),
    ]);
    let out = t.path().join("out.img");
    ignite(&[
        "archive",
        "--store",
        &s,
        "export",
        "root-img",
        "--image",
        out.to_str().unwrap(),
    ]);
    sh(&format!("cmp {} {}", img.display(), out.display()));
    sh(&format!("e2fsck -fn {}", out.display()));
    // Sparse: the export allocates about what the file system uses, not 1 GiB.
    let used: u64 = sh(&format!("du -B1 {} | cut -f1", out.display()))
        .trim()
        .parse()
        .unwrap();
    let src_used: u64 = sh(&format!("du -B1 {} | cut -f1", img.display()))
        .trim()
        .parse()
        .unwrap();
    assert!(
        used <= src_used + (16 << 20),
        "export uses {used}, source {src_used}"
    );
}

#[test]
fn nightly_series_costs_only_what_changed() {
    if !prerequisites() {
        return;
    }
    let paths = fixture("nightly");
    let t = tempfile::tempdir().unwrap();
    let s = store_in(t.path());
    let mut tree_added = Vec::new();
    let mut image_added = Vec::new();
    for g in 1..=5 {
        let dir = paths
            .iter()
            .find(|p| p.ends_with(format!("gen{g}")))
            .expect("genN dir");
        let img = paths
            .iter()
            .find(|p| p.ends_with(format!("gen{g}.img")))
            .expect("genN.img");
        ignite(&[
            "archive",
            "--store",
            &s,
            "import",
            "--name",
            "nightly",
            dir.to_str().unwrap(),
        ]);
        ignite(&[
            "archive",
            "--store",
            &s,
            "import",
            "--name",
            "nightly-img",
            "--image",
            img.to_str().unwrap(),
        ]);
        let list = ignite_json(&["archive", "--store", &s, "list", "--json"]);
        let added = |name: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .rfind(|m| m["name"] == name)
                .unwrap()["stats"]["new_stored_bytes"]
                .as_u64()
                .unwrap()
        };
        tree_added.push(added("nightly"));
        image_added.push(added("nightly-img"));
    }
    // What really changed each night, measured independently of the archive: bytes of
    // regular files that are new or differ, and 64 KiB image blocks that differ.
    let gen_path = |suffix: String| paths.iter().find(|p| p.ends_with(&suffix)).unwrap().clone();
    println!("gen  tree-added  files-changed  image-added  blocks-changed  (bytes)");
    for g in 0..5 {
        let (files, blocks) = if g == 0 {
            (0, 0)
        } else {
            (
                changed_file_bytes(
                    &gen_path(format!("gen{g}")),
                    &gen_path(format!("gen{}", g + 1)),
                ),
                changed_block_bytes(
                    &gen_path(format!("gen{g}.img")),
                    &gen_path(format!("gen{}.img", g + 1)),
                ),
            )
        };
        println!(
            "gen{}  {:>10}  {:>13}  {:>11}  {:>14}",
            g + 1,
            tree_added[g],
            files,
            image_added[g],
            blocks
        );
        if g > 0 {
            // A nightly import stores no more than what changed (compressed), plus its packing.
            assert!(
                tree_added[g] <= files + (1 << 20),
                "tree gen{}: {} > {files}",
                g + 1,
                tree_added[g]
            );
            assert!(
                image_added[g] <= blocks + (1 << 20),
                "image gen{}: {} > {blocks}",
                g + 1,
                image_added[g]
            );
        }
    }
    ignite(&["archive", "--store", &s, "verify"]);
}

fn changed_file_bytes(prev: &Path, cur: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(cur.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_file() {
                let new = std::fs::read(cur.join(&r)).unwrap();
                let same = std::fs::symlink_metadata(prev.join(&r)).is_ok_and(|m| m.is_file())
                    && std::fs::read(prev.join(&r)).unwrap() == new;
                if !same {
                    total += new.len() as u64;
                }
            }
        }
    }
    total
}

fn changed_block_bytes(prev: &Path, cur: &Path) -> u64 {
    use std::io::Read;
    const BS: usize = 64 << 10;
    let (mut a, mut b) = (
        std::fs::File::open(prev).unwrap(),
        std::fs::File::open(cur).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; BS], vec![0u8; BS]);
    let mut total = 0;
    loop {
        let n = b.read(&mut bb).unwrap();
        if n == 0 {
            return total;
        }
        a.read_exact(&mut ba[..n]).unwrap();
        if ba[..n] != bb[..n] {
            total += n as u64;
        }
    }
}
