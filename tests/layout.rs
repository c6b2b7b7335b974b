//! The layout rules ARCHITECTURE.md states, checked so they stay true: the binary stays thin,
//! and no two modules of the library crate (`crates/core/src/`, and of `crates/model/src/`)
//! import each other (directly or through others), at the top level and between the files of
//! each folder. That a lower crate imports nothing of the ones above is the compiler's to
//! check: `crates/model` cannot name `sleuth`, and `sleuth` cannot name the binary's `cli`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The sources of each library crate, top layer first: `sleuth`, `sleuth-retrieval`,
/// `sleuth-model`.
fn crate_sources() -> Vec<PathBuf> {
    ["core", "retrieval", "model"]
        .iter()
        .map(|c| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("crates")
                .join(c)
                .join("src")
        })
        .collect()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The code of a file: comment lines dropped (doc links are not imports) and everything from
/// its unit-test module on (tests may reach anywhere).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module names that follow `prefix` in `code` (`crate::eval::…` → `eval`), including
/// each name of a `prefix{a, b::c}` group.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(group[..end].split(',').map(ident));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// A cycle in `graph`, if any (depth-first search; the returned path starts and ends at the
/// same node).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// The name of the module a path under `base` belongs to: its first component, without `.rs`.
fn module_of(base: &Path, path: &Path) -> String {
    let first = path
        .strip_prefix(base)
        .unwrap()
        .components()
        .next()
        .unwrap();
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

#[test]
fn the_binary_only_parses_and_dispatches() {
    let main =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs")).unwrap();
    let lines = main.lines().count();
    assert!(
        lines < 400,
        "src/main.rs has {lines} lines; command bodies belong in src/cli/"
    );
    assert!(
        !main.contains("run_steps") && !main.contains("for step"),
        "src/main.rs runs a training loop; the loop is rl::run::run_steps"
    );
}

/// Which of the crate's top-level modules (files and folders under `base`) each imports.
fn module_graph(base: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(base) {
        let module = module_of(base, &file);
        if module == "lib" || module == "main" {
            continue;
        }
        let deps = names_after(&code(&file), "crate::");
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(deps.into_iter().filter(|d| *d != module));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

#[test]
fn top_level_modules_import_no_cycle() {
    // Between crates the compiler keeps each layer from importing the ones above; inside
    // each crate no two top-level modules may import each other.
    for src in crate_sources() {
        let graph = module_graph(&src);
        assert!(
            graph.len() >= 8,
            "{}: found only {:?}",
            src.display(),
            graph.keys()
        );
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "modules of {} import each other: {}",
                src.display(),
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn files_of_a_folder_import_no_cycle() {
    for base in crate_sources() {
        files_of_each_folder_import_no_cycle(&base);
    }
}

/// No two files of one folder of `base` import each other.
fn files_of_each_folder_import_no_cycle(base: &Path) {
    for folder in std::fs::read_dir(base).unwrap() {
        let folder = folder.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        let top = module_of(base, &folder);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in rust_files(&folder) {
            let module = module_of(&folder, &file);
            if matches!(module.as_str(), "mod" | "tests" | "test_writer") {
                continue;
            }
            let text = code(&file);
            let mut deps = names_after(&text, &format!("crate::{top}::"));
            // A file of a nested folder (`graph/kg.rs`) names its own siblings with `super::`,
            // not this folder's; only a direct child's `super::` counts here.
            if file.parent() == Some(folder.as_path()) {
                deps.extend(names_after(&text, "super::"));
            }
            let entry = graph.entry(module.clone()).or_default();
            entry.extend(deps.into_iter().filter(|d| *d != module));
        }
        let modules: BTreeSet<String> = graph.keys().cloned().collect();
        for deps in graph.values_mut() {
            deps.retain(|d| modules.contains(d));
        }
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "files of {}/{top}/ import each other: {}",
                base.display(),
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g = |edges: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c")])), None);
    let c = find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4);
    assert_eq!(
        names_after("use crate::{eval::x, rl};\ncrate::model::Llama", "crate::"),
        ["eval", "model", "rl"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}
