//! Randomized robustness: mutated profiles never panic, every error has a real position, and
//! whatever loads also renders (or fails to render) without panicking.

use ignite_profiles::*;
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "{",
    "}",
    ",",
    "\n",
    "#",
    " ",
    ".",
    "..",
    "%",
    "rest",
    "10G",
    "0",
    "-1",
    "99999999999999999999",
    "é",
    "\u{1F600}",
    "true",
    "x",
    "mount",
    "size",
    "fs",
    "\"/\"",
    "\"efi\"",
    "extends",
    "\"base\"",
    "\"web\"",
    "{mac6}",
    "{",
    "\\",
    "\t",
    "\r\n",
    "uid",
    "1e3",
    "2026-11-27",
    "[disk]",
    "[[disk.partitions]]",
    "[boot]",
    "firmware = \"uefi\"",
];

fn char_floor(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut s = text.to_string();
    for _ in 0..1 + rng.below(4) {
        let at = char_floor(&s, rng.below(s.len() + 1));
        match rng.below(6) {
            0 => {
                let end = char_floor(&s, at + rng.below(20));
                s.replace_range(at..end.max(at), "");
            }
            1 | 2 => s.insert_str(at, PIECES[rng.below(PIECES.len())]),
            3 => {
                let lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let l = lines[rng.below(lines.len())].to_string();
                    s.insert_str(at, &format!("\n{l}\n"));
                }
            }
            4 => {
                let mut lines: Vec<String> = s.lines().map(str::to_string).collect();
                if lines.len() > 1 {
                    let a = rng.below(lines.len());
                    let b = rng.below(lines.len());
                    lines.swap(a, b);
                }
                s = lines.join("\n");
            }
            _ => s.truncate(at),
        }
    }
    s
}

fn check_positions(e: &Errors, files: &[(&str, &str)]) {
    assert!(!e.0.is_empty());
    for d in &e.0 {
        let text = files
            .iter()
            .find(|f| f.0 == d.file)
            .unwrap_or_else(|| panic!("unknown file in {d}"))
            .1;
        assert!(d.line >= 1 && d.col >= 1, "{d}");
        let lines: Vec<&str> = text.split('\n').collect();
        assert!(d.line <= lines.len(), "{d}: line beyond the file");
        let len = lines[d.line - 1].chars().count();
        assert!(
            d.col <= len + 1,
            "{d}: column beyond the line ({len} chars)"
        );
        assert!(!d.message.is_empty(), "{d}");
    }
}

#[test]
fn mutated_profiles_never_panic_and_errors_have_positions() {
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let base = std::fs::read_to_string(ex.join("base.toml")).unwrap();
    let web = std::fs::read_to_string(ex.join("web.toml")).unwrap();
    let uefi = std::fs::read_to_string(ex.join("uefi.toml")).unwrap();
    let seed = std::env::var("IGNITE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1234_5678_9abc_def1u64);
    let iterations: usize = std::env::var("IGNITE_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng(seed);
    let (mut ok, mut bad) = (0, 0);
    for i in 0..iterations {
        let (top, top_name) = match i % 3 {
            0 => (&base, "base.toml"),
            1 => (&web, "web.toml"),
            _ => (&uefi, "uefi.toml"),
        };
        let top_m = mutate(&mut rng, top);
        // sometimes the base is broken too
        let base_m = if rng.below(4) == 0 {
            mutate(&mut rng, &base)
        } else {
            base.clone()
        };
        let mut resolve = |n: &str| -> Result<(String, String), String> {
            match n {
                "base" => Ok(("base.toml".into(), base_m.clone())),
                "web" => Ok(("web.toml".into(), web.clone())),
                _ => Err(format!("no {n}.toml")),
            }
        };
        let files = [
            (top_name, top_m.as_str()),
            ("base.toml", base_m.as_str()),
            ("web.toml", web.as_str()),
        ];
        let files: Vec<(&str, &str)> = if top_name == "base.toml" {
            vec![files[0], files[2]]
        } else {
            files.to_vec()
        };
        match Profile::from_str_with(top_name, &top_m, &mut resolve) {
            Ok(p) => {
                ok += 1;
                for size in [0u64, 1 << 20, 3 << 20, 1 << 30, 64 << 30] {
                    let facts = ClientFacts {
                        mac: "52:54:00:12:34:56".into(),
                        disks: vec![DiskFact {
                            path: "/dev/vda".into(),
                            size,
                            serial: None,
                            sector_size: 512,
                            ..Default::default()
                        }],
                        hostname: Some("h".into()),
                    };
                    if let Ok(plan) = p.render(&facts) {
                        let end = plan
                            .disk
                            .partitions
                            .last()
                            .map(|x| (x.end_sector + 1) * 512);
                        assert!(
                            end.unwrap_or(0) + 33 * 512 <= size,
                            "layout beyond the disk"
                        );
                    }
                }
            }
            Err(e) => {
                bad += 1;
                check_positions(&e, &files);
            }
        }
    }
    eprintln!("{iterations} mutations: {ok} loaded, {bad} rejected");
    assert!(
        bad > iterations / 10,
        "mutations should break most profiles"
    );
}
