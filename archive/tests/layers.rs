//! The crate's modules form the one-way stack drawn in `src/lib.rs`: no module uses one of a
//! higher layer, and module uses have no cycle. The drawing is parsed from the crate docs, so
//! the picture and the code cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

fn src() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
}

/// Module → layer, from the `text` block of lib.rs's docs (`//! 3 writer gc ...   what`).
fn layers() -> BTreeMap<String, u32> {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut out = BTreeMap::new();
    let mut layer = None;
    for line in lib.lines().filter_map(|l| l.strip_prefix("//! ")) {
        let names = line.trim_start().split("  ").next().unwrap_or("");
        let mut words = names.split_whitespace().peekable();
        if let Some(n) = words.peek().and_then(|w| w.parse::<u32>().ok()) {
            layer = Some(n);
            words.next();
        } else if !line.starts_with(' ') {
            layer = None; // outside the drawing
            continue;
        }
        if let Some(n) = layer {
            for w in words {
                out.insert(w.to_string(), n);
            }
        }
    }
    out
}

/// The crate modules a module's code (tests and comments left out) refers to.
fn uses(module: &str) -> BTreeSet<String> {
    let text = fs::read_to_string(src().join(format!("{module}.rs"))).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap();
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap();
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                out.insert(name);
            }
        }
        // `use crate::{a, b::c}` groups.
        if let Some(group) = line.trim().strip_prefix("use crate::{") {
            for part in group.split([',', '}']) {
                let name = part.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() && name != module {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn modules_form_the_stack_drawn_in_lib_rs() {
    let layers = layers();
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect();
    let drawn: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(declared, drawn, "every module is drawn in lib.rs, once");
    let mut graph = BTreeMap::new();
    for (m, &layer) in &layers {
        let used = uses(m);
        for u in &used {
            let Some(&ul) = layers.get(u) else {
                panic!("{m} uses crate::{u}, which is not a module of the drawing");
            };
            assert!(
                ul <= layer,
                "{m} (layer {layer}) uses {u} (layer {ul}), which is above it"
            );
        }
        graph.insert(m.clone(), used);
    }
    // No cycle (within a layer modules may use each other, one way only).
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
        }
        path.push(m.to_string());
        for u in &g[m] {
            visit(u, g, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}
