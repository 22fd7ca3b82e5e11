//! No module imports a module that imports it back (docs/architecture.md, "Rules the code keeps"): the `crate::…` and
//! `super::…` paths of every source file of the workspace form no cycle, neither between files nor between the
//! top-level modules they belong to. A parent and its own submodules are one unit and may refer to each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`sync::walk`, `` for the crate root) → its file, for one crate's `src/`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            (parts.join("::"), file)
        })
        .collect()
}

fn ident_at(text: &str, at: usize) -> Option<&str> {
    let rest = &text[at..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// The paths (as segments after `crate`/`super…`, with the base they start from) that `source` names.
fn referenced_paths(module: &str, source: &str) -> Vec<Vec<String>> {
    // Unit tests may reach anywhere.
    let source = source.split("#[cfg(test)]\nmod tests").next().unwrap_or(source);
    let module_parts: Vec<&str> = if module.is_empty() { vec![] } else { module.split("::").collect() };
    let mut paths = Vec::new();
    for (at, _) in source.match_indices("::") {
        let start = source[..at].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        if start > 0 && source[..start].ends_with("::") {
            continue; // not the first segment of its path
        }
        let mut base: Vec<String> = match &source[start..at] {
            "crate" => vec![],
            "super" => module_parts[..module_parts.len().saturating_sub(1)].iter().map(|s| s.to_string()).collect(),
            _ => continue,
        };
        let mut pos = at + 2;
        while source[pos..].starts_with("super::") {
            base.pop();
            pos += "super::".len();
        }
        let segments = |mut pos: usize| {
            let mut segs = Vec::new();
            while let Some(id) = ident_at(source, pos) {
                segs.push(id.to_owned());
                pos += id.len();
                if !source[pos..].starts_with("::") {
                    break;
                }
                pos += 2;
            }
            segs
        };
        if source[pos..].starts_with('{') {
            let group = &source[pos + 1..pos + source[pos..].find('}').unwrap_or(1)];
            for item in group.split(',') {
                let item = item.trim();
                let offset = pos + 1 + (item.as_ptr() as usize - group.as_ptr() as usize);
                let segs = segments(offset);
                if !segs.is_empty() && segs[0] != "self" {
                    paths.push(base.iter().cloned().chain(segs).collect());
                }
            }
        } else {
            paths.push(base.into_iter().chain(segments(pos)).collect());
        }
    }
    paths
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &[String], modules: &BTreeMap<String, PathBuf>) -> String {
    (0..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains_key(m)).unwrap_or_default()
}

fn nested(a: &str, b: &str) -> bool {
    a.is_empty() || b.is_empty() || a == b || b.starts_with(&format!("{a}::")) || a.starts_with(&format!("{b}::"))
}

/// A cycle of `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    return Some(stack[from..].iter().cloned().chain([next.clone()]).collect());
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node)
            && let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

/// Module → modules it names, between modules that are not nested in each other.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let source = std::fs::read_to_string(file).unwrap();
        for path in referenced_paths(module, &source) {
            let target = resolve(&path, &modules);
            if !nested(module, &target) {
                graph.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    graph
}

fn top_level(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_owned();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in graph {
        for to in targets {
            if top(from) != top(to) {
                out.entry(top(from)).or_default().insert(top(to));
            }
        }
    }
    out
}

fn source_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        dirs.push(entry.unwrap().path().join("src"));
    }
    dirs
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    for src in source_dirs() {
        let graph = import_graph(&src);
        assert!(graph.values().map(BTreeSet::len).sum::<usize>() > 0 || src.ends_with("devin-api-model/src"));
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{}: modules import each other: {}", src.display(), cycle.join(" → "));
        }
        if let Some(cycle) = find_cycle(&top_level(&graph)) {
            panic!("{}: top-level modules import each other: {}", src.display(), cycle.join(" → "));
        }
    }
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    // What a cycle looks like to the check: `a` names `b::f` and `b` names `a` back through a group.
    let paths_a = referenced_paths("a", "use crate::b::f;\nfn g() { super::c::h(); }");
    assert_eq!(paths_a, vec![vec!["b".to_owned(), "f".to_owned()], vec!["c".to_owned(), "h".to_owned()]]);
    let paths_b = referenced_paths("b::x", "use crate::{a, b::y};\nuse super::super::a::Z;");
    assert_eq!(
        paths_b,
        vec![vec!["a".to_owned()], vec!["b".to_owned(), "y".to_owned()], vec!["a".to_owned(), "Z".to_owned()]]
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert!(nested("store", "store::load") && !nested("store", "sync"));
}
