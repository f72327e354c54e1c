//! The house rules of the source tree, checked: no file in `src/`, `dataflows/` or
//! `operators/` over 600 lines, and no import cycle between the modules of a crate (a module
//! may use its ancestors' items, as children use the types their parent declares, but two
//! modules that are not each other's ancestors never use each other, directly or around a
//! loop).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under a crate's `src/` (`ingest::sites`; the crate root is "").
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    Some(parts.join("::"))
}

/// The modules a file's code names: `crate::a::b::…` and `super::…` paths, resolved to the
/// longest prefix that is a module of the crate.
fn uses(text: &str, here: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let resolve = |segments: Vec<&str>| -> Option<String> {
        (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| modules.contains(m))
    };
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let path: String = rest[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            if let Some(m) = resolve(segments) {
                out.insert(m);
            }
            rest = &rest[at + 7..];
        }
        if let Some(at) = code.find("super::") {
            // `super` is the parent module, whether the file is `x.rs` or `x/mod.rs`.
            let mut base: Vec<&str> = here.split("::").filter(|s| !s.is_empty()).collect();
            base.pop();
            let path: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut segments: Vec<&str> = base.clone();
            segments.extend(path.split("::").filter(|s| !s.is_empty()));
            if let Some(m) = resolve(segments) {
                out.insert(m);
            }
        }
    }
    out
}

fn is_ancestor(a: &str, of: &str) -> bool {
    a.is_empty() || of.starts_with(&format!("{a}::"))
}

/// A cycle in `edges`, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == next).unwrap_or(0);
                    let mut loop_ = stack[at..].to_vec();
                    loop_.push(next.clone());
                    return Some(loop_);
                }
                Some(_) => {}
                None => {
                    if let Some(found) = visit(next, edges, state, stack) {
                        return Some(found);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            if let Some(found) = visit(node, edges, &mut state, &mut Vec::new()) {
                return Some(found);
            }
        }
    }
    None
}

fn crate_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let Some(here) = module_of(src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        let targets: BTreeSet<String> = uses(&text, &here, &modules)
            .into_iter()
            .filter(|m| *m != here && !is_ancestor(m, &here))
            .collect();
        edges.insert(here, targets);
    }
    edges
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    for dir in ["src", "dataflows/src", "operators/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn no_crate_has_an_import_cycle() {
    for src in ["src", "dataflows/src", "operators/src"] {
        let edges = crate_graph(&root().join(src));
        assert!(edges.len() > 5, "{src}: the modules were found");
        if let Some(found) = cycle(&edges) {
            panic!("{src}: import cycle {}", found.join(" → "));
        }
    }
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let modules: BTreeSet<String> = ["a", "b", "c", "c::d"].map(String::from).into();
    let mut edges = BTreeMap::new();
    edges.insert("a".to_owned(), uses("use crate::b::X;", "a", &modules));
    edges.insert("b".to_owned(), uses("x = crate::c::d::f();", "b", &modules));
    edges.insert(
        "c::d".to_owned(),
        uses("use super::super::a;", "c::d", &modules),
    );
    assert_eq!(edges["b"], ["c::d".to_owned()].into());
    edges.insert(
        "c::d".to_owned(),
        uses("use crate::a::Y;", "c::d", &modules),
    );
    assert!(cycle(&edges).is_some(), "{edges:?}");
    edges.insert("c::d".to_owned(), BTreeSet::new());
    assert!(cycle(&edges).is_none());
}
