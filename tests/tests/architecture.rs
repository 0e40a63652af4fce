//! The crate and module boundaries of docs/DESIGN.md, checked on the source: leaf crates import
//! no sibling, nothing in the binary below `main.rs` imports the CLI, and no crate has an
//! import cycle between its modules (each file is a module; an edge is a `crate::` or
//! `super::` path in it, outside its inline test module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ignite_e2e::repo_root;

const LEAVES: &[&str] = &["archive", "netboot", "profiles", "vmm"];
const CRATES: &[&str] = &[
    "archive", "netboot", "profiles", "vmm", "recovery", "ignite",
];

#[test]
fn leaf_crates_depend_on_no_sibling() {
    for leaf in LEAVES {
        let manifest = std::fs::read_to_string(repo_root().join(leaf).join("Cargo.toml")).unwrap();
        let mut section = "";
        for line in manifest.lines() {
            if line.starts_with('[') {
                section = line.trim();
                continue;
            }
            let name = line.split('=').next().unwrap_or("").trim();
            // The test-support crate depends on none of ours; leaves may test with it, and
            // with their own test-only features.
            let own = format!("ignite-{leaf}");
            if section == "[dev-dependencies]" && (name == "ignite-e2e" || name == own) {
                continue;
            }
            if section == "[package]" {
                continue;
            }
            assert!(
                !name.starts_with("ignite"),
                "{leaf}/Cargo.toml depends on {name}: leaves share through recovery or ignite"
            );
        }
    }
}

#[test]
fn only_main_imports_the_cli() {
    let src = repo_root().join("ignite/src");
    for (module, file) in modules(&src) {
        if module.first().is_some_and(|m| m == "cli") || module.is_empty() {
            continue;
        }
        let text = code_without_tests(&file);
        assert!(
            !text.contains("crate::cli"),
            "{} imports the CLI; move what it needs below the CLI",
            file.display()
        );
    }
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut cycles = Vec::new();
    for krate in CRATES {
        let src = repo_root().join(krate).join("src");
        let mods = modules(&src);
        let names: BTreeSet<Vec<String>> = mods.keys().cloned().collect();
        let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
        for (module, file) in &mods {
            let targets = edges.entry(module.clone()).or_default();
            for path in paths_in(&code_without_tests(file), module) {
                // The longest module prefix of the path is the module it reaches.
                if let Some(t) = (1..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|p| names.contains(p))
                {
                    if &t != module {
                        targets.insert(t);
                    }
                }
            }
        }
        if let Some(cycle) = find_cycle(&edges) {
            let shown: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            cycles.push(format!("{krate}: import cycle {}", shown.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "{}", cycles.join("\n"));
}

/// Every module file under `src`, keyed by its path (`["steps", "gpt"]`; the root is `[]`).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            // Binaries beside the library (src/bin/*) are their own crates.
            if parts.first().is_some_and(|p| p == "bin") {
                continue;
            }
            out.insert(parts, p);
        }
    }
    out
}

/// The file's code up to its inline `#[cfg(test)]` module (always last in this code base).
fn code_without_tests(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let start = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ]
    .iter()
    .filter_map(|m| text.find(m))
    .min();
    match start {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Module paths named by `crate::a::b` and `super::a` in `text`, written in `module`,
/// including those inside `use crate::{a, b::c}` groups.
fn paths_in(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent(module))] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut base = base.clone();
            let mut tail = rest;
            // super::super::x
            while prefix == "super::" && tail.starts_with("super::") {
                base.pop();
                tail = &tail["super::".len()..];
            }
            for p in expand(tail) {
                let mut full = base.clone();
                full.extend(p);
                out.push(full);
            }
        }
    }
    out
}

/// `a::b::C` → [[a, b, C]]; `{a, b::c}` → [[a], [b, c]] (one level of braces is enough here).
fn expand(tail: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        let mut out = Vec::new();
        for seg in s.split("::") {
            let name: String = seg
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let whole = name.len() == seg.len();
            if !name.is_empty() {
                out.push(name);
            }
            if !whole || out.is_empty() {
                break;
            }
        }
        out
    };
    if let Some(inner) = tail.strip_prefix('{') {
        let end = inner.find('}').unwrap_or(inner.len());
        return inner[..end]
            .split(',')
            .map(|s| ident(s.trim()))
            .filter(|p| !p.is_empty())
            .collect();
    }
    let head: String = tail
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':' || *c == '{')
        .collect();
    if let Some((before, _)) = head.split_once('{') {
        let before = before.trim_end_matches("::");
        let mut base = ident(before);
        let group = &tail[head.find('{').unwrap()..];
        let mut out = Vec::new();
        for p in expand(group) {
            let mut full = base.clone();
            full.extend(p);
            out.push(full);
        }
        if out.is_empty() {
            out.push(std::mem::take(&mut base));
        }
        return out;
    }
    vec![ident(tail)]
}

fn parent(module: &[String]) -> Vec<String> {
    module[..module.len().saturating_sub(1)].to_vec()
}

/// A cycle in the graph, if any (depth-first search with colours).
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        colour: &mut BTreeMap<Vec<String>, Colour>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        colour.insert(n.clone(), Colour::Grey);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match colour.get(m).copied().unwrap_or(Colour::White) {
                Colour::Grey => {
                    let start = stack.iter().position(|x| x == m).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Colour::White => {
                    if let Some(c) = visit(m, edges, colour, stack) {
                        return Some(c);
                    }
                }
                Colour::Black => {}
            }
        }
        stack.pop();
        colour.insert(n.clone(), Colour::Black);
        None
    }
    let mut colour = BTreeMap::new();
    for n in edges.keys() {
        if colour.get(n).copied().unwrap_or(Colour::White) == Colour::White {
            if let Some(c) = visit(n, edges, &mut colour, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_checker_sees_a_cycle_and_group_imports() {
    let m = |s: &str| -> Vec<String> {
        s.split("::")
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    };
    let found = paths_in(
        "use crate::{a::B, c};\nuse super::d::E;\nlet x = crate::f::g();",
        &m("x::y"),
    );
    assert!(found.contains(&m("a::B")), "{found:?}");
    assert!(found.contains(&m("c")), "{found:?}");
    assert!(found.contains(&m("x::d::E")), "{found:?}");
    assert!(found.contains(&m("f::g")), "{found:?}");
    let mut edges = BTreeMap::new();
    edges.insert(m("a"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("a")]));
    assert!(find_cycle(&edges).is_some());
    edges.insert(m("b"), BTreeSet::new());
    assert!(find_cycle(&edges).is_none());
}
