//! The layout's one rule that a compiler does not check: no import cycle between the
//! crate's top-level modules. Each module's non-test code names other modules as
//! `crate::NAME`; those names make a graph that must have no cycle, so that every module
//! can be read (and replaced) knowing only the ones below it. Comments and `#[cfg(test)]`
//! code are not counted: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every top-level module (a file or a folder in `src/`) and the modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "main" || name == "lib" {
            continue;
        }
        let list = files.entry(name).or_default();
        if path.is_dir() {
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                if !f.to_string_lossy().contains("tests") {
                    list.push(f);
                }
            }
        } else {
            list.push(path);
        }
    }
    let names: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, paths) in &files {
        let mut uses = BTreeSet::new();
        for path in paths {
            let text = std::fs::read_to_string(path).unwrap();
            // Test modules sit at the end of a file.
            let code = text.split("#[cfg(test)]").next().unwrap();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + "crate::".len()..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let used = &rest[..end];
                    if used != module && names.contains(used) {
                        uses.insert(used.to_string());
                    }
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// A cycle through `start`, if there is one: the path back to it.
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> bool {
    for next in &graph[at] {
        if next == start {
            path.push(next.clone());
            return true;
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if cycle_from(graph, start, next, path, seen) {
                return true;
            }
            path.pop();
        }
    }
    false
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = graph();
    assert!(graph.contains_key("proxy") && graph.contains_key("config"));
    assert!(
        graph["proxy"].contains("stages"),
        "the parser found no edges"
    );
    for module in graph.keys() {
        let mut path = vec![module.clone()];
        if cycle_from(&graph, module, module, &mut path, &mut BTreeSet::new()) {
            panic!("import cycle: {}", path.join(" -> "));
        }
    }
}
