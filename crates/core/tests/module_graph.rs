//! No import circles in carnet-core: the modules form layers (docs/architecture.md, "Modules").
//!
//! The rule: for every module, the graph of its direct children is acyclic, where a child A
//! points to a sibling B when anything in A (or below it) names anything in B (or below it),
//! through `crate::` or `super::` paths, directly or through the crate root's re-exports. A
//! module naming its own ancestors is not counted: that is how `impl Vault` blocks in
//! `vault/*.rs` reach the type their parent declares. Unit tests (`mod tests` at the bottom of
//! a file) are left out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test: failing is the point

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path, `crate::vault::notes` as `["vault", "notes"]` (the root is empty).
type Module = Vec<String>;

/// The module a source file defines, from its path under `src/`.
fn module_of(relative: &Path) -> Module {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.strip_suffix(".rs").unwrap().to_string();
    if stem != "mod" && stem != "lib" {
        parts.push(stem);
    }
    parts
}

/// The code of a file without comments and without its unit tests.
fn code(source: &str) -> String {
    let mut out = String::new();
    let mut in_block = false;
    for line in source.lines() {
        if line.trim_start().starts_with("mod tests") {
            break;
        }
        let mut rest = line;
        loop {
            if in_block {
                match rest.find("*/") {
                    Some(i) => {
                        rest = &rest[i + 2..];
                        in_block = false;
                    }
                    None => break,
                }
            } else {
                let line_comment = rest.find("//");
                let block = rest.find("/*");
                match (line_comment, block) {
                    (Some(l), b) if b.is_none_or(|b| l < b) => {
                        out.push_str(&rest[..l]);
                        break;
                    }
                    (_, Some(b)) => {
                        out.push_str(&rest[..b]);
                        rest = &rest[b + 2..];
                        in_block = true;
                    }
                    _ => {
                        out.push_str(rest);
                        break;
                    }
                }
            }
        }
        out.push('\n');
    }
    out
}

/// A tiny reader of `use` trees and paths: `a::b::{c, d::{e as f}, *}`.
struct Paths<'a> {
    s: &'a [u8],
    at: usize,
}

impl Paths<'_> {
    fn skip_space(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.skip_space();
        let start = self.at;
        while self.at < self.s.len()
            && (self.s[self.at].is_ascii_alphanumeric() || self.s[self.at] == b'_')
        {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.s[self.at..].starts_with(token.as_bytes()) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    /// Every full path of the tree starting here, each prefixed by `prefix`.
    fn tree(&mut self, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        loop {
            if self.eat("{") {
                loop {
                    if self.eat("}") {
                        return;
                    }
                    self.tree(path.clone(), out);
                    if !self.eat(",") {
                        self.eat("}");
                        return;
                    }
                }
            }
            if self.eat("*") {
                out.push(path);
                return;
            }
            match self.ident() {
                Some(id) if id == "self" => {}
                Some(id) => path.push(id),
                None => {
                    out.push(path);
                    return;
                }
            }
            if !self.eat("::") {
                if self.eat("as") {
                    self.ident();
                }
                out.push(path);
                return;
            }
        }
    }
}

/// Every path named after `crate::` or `super::` in `code`, made absolute for `module`.
fn named_paths(code: &str, module: &Module) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for (prefix, is_super) in [("crate::", false), ("super::", true)] {
        let mut from = 0;
        while let Some(i) = code[from..].find(prefix) {
            let start = from + i;
            from = start + prefix.len();
            let before = start.checked_sub(1).map(|j| bytes[j]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            let mut base = if is_super {
                let mut m = module.clone();
                m.pop();
                m
            } else {
                Vec::new()
            };
            let mut p = Paths { s: bytes, at: from };
            while p.eat("super::") {
                base.pop();
            }
            let mut paths = Vec::new();
            p.tree(base, &mut paths);
            out.extend(paths);
        }
    }
    out
}

/// The modules of a crate and, per module, the modules it names.
struct Graph {
    modules: BTreeSet<Module>,
    names: BTreeMap<Module, BTreeSet<Module>>,
}

/// Builds the graph from (path under `src/`, source) pairs.
fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<Module> = files.iter().map(|(p, _)| module_of(Path::new(p))).collect();
    // What the crate root re-exports, by name: `pub use vault::{Vault, ..}` names `vault`.
    let mut reexports: BTreeMap<String, Module> = BTreeMap::new();
    let resolve = |path: &[String], reexports: &BTreeMap<String, Module>| -> Option<Module> {
        let deepest = (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| modules.contains(m))?;
        if deepest.is_empty() {
            return path.first().and_then(|name| reexports.get(name).cloned());
        }
        Some(deepest)
    };
    if let Some((_, lib)) = files.iter().find(|(p, _)| p == "lib.rs") {
        let lib = code(lib);
        for stmt in lib.split(';') {
            let Some(tail) = stmt.trim().strip_prefix("pub use ") else {
                continue;
            };
            let mut paths = Vec::new();
            Paths {
                s: tail.as_bytes(),
                at: 0,
            }
            .tree(Vec::new(), &mut paths);
            for path in paths {
                if let (Some(name), Some(m)) = (path.last(), resolve(&path, &BTreeMap::new())) {
                    if !m.is_empty() {
                        reexports.insert(name.clone(), m);
                    }
                }
            }
        }
    }
    let mut names = BTreeMap::new();
    for (p, source) in files {
        let module = module_of(Path::new(p));
        let named: BTreeSet<Module> = named_paths(&code(source), &module)
            .iter()
            .filter_map(|path| resolve(path, &reexports))
            .collect();
        names.insert(module, named);
    }
    Graph { modules, names }
}

/// The first cycle among the children of some module, as the children's names in order.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    for parent in &g.modules {
        let children: Vec<&Module> = g
            .modules
            .iter()
            .filter(|m| m.len() == parent.len() + 1 && m.starts_with(parent))
            .collect();
        // Child → children it names (through anything in its subtree, into theirs).
        let mut edges: BTreeMap<&Module, BTreeSet<&Module>> = BTreeMap::new();
        for (from, named) in &g.names {
            let Some(a) = children.iter().find(|c| from.starts_with(c)) else {
                continue;
            };
            for to in named {
                if let Some(b) = children.iter().find(|c| to.starts_with(c)) {
                    if a != b {
                        edges.entry(a).or_default().insert(b);
                    }
                }
            }
        }
        // Depth-first search for a back edge.
        fn visit<'a>(
            m: &'a Module,
            edges: &BTreeMap<&'a Module, BTreeSet<&'a Module>>,
            stack: &mut Vec<&'a Module>,
            done: &mut BTreeSet<&'a Module>,
        ) -> Option<Vec<String>> {
            if let Some(i) = stack.iter().position(|s| *s == m) {
                let mut cycle: Vec<String> = stack[i..].iter().map(|s| s.join("::")).collect();
                cycle.push(m.join("::"));
                return Some(cycle);
            }
            if !done.insert(m) {
                return None;
            }
            stack.push(m);
            for next in edges.get(m).into_iter().flatten() {
                if let Some(c) = visit(next, edges, stack, done) {
                    return Some(c);
                }
            }
            stack.pop();
            None
        }
        let mut done = BTreeSet::new();
        for c in &children {
            if let Some(cycle) = visit(c, &edges, &mut Vec::new(), &mut done) {
                return Some(cycle);
            }
        }
    }
    None
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn carnet_core_has_no_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    let g = graph(&files);
    assert!(
        g.modules.len() > 25,
        "the walk found the modules: {:?}",
        g.modules
    );
    // The graph sees the layers it should: the vault names the keys, its reads name its
    // patients, and re-exports resolve (`crate::Error` is the error module).
    let vault_notes = g.names[&vec!["vault".to_string(), "notes".to_string()]].clone();
    assert!(vault_notes.contains(&vec!["vault".to_string(), "patients".to_string()]));
    assert!(vault_notes.contains(&vec!["error".to_string()]));
    assert!(g.names[&vec!["keys".to_string()]].contains(&vec!["records".to_string()]));
    if let Some(cycle) = find_cycle(&g) {
        panic!("an import circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_check_finds_a_planted_cycle() {
    let files = |extra: &str| {
        vec![
            (
                "lib.rs".to_string(),
                "mod a; mod b; mod c; pub use a::Thing;".to_string(),
            ),
            (
                "a.rs".to_string(),
                "use crate::b::X; pub struct Thing;".to_string(),
            ),
            ("b.rs".to_string(), "use crate::c::{Y, z::W};".to_string()),
            ("c.rs".to_string(), extra.to_string()),
            (
                "c/z.rs".to_string(),
                "use super::super::a::Thing;".to_string(),
            ),
        ]
    };
    // c/z.rs names `a`, and a -> b -> c: a cycle through a child and a nested group.
    let cycle = find_cycle(&graph(&files("pub struct Y;"))).expect("the cycle is found");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"a".to_string()) && cycle.contains(&"c".to_string()));
    // Through a re-export of the crate root, in code, not in a comment.
    let mut no_cycle = files("pub struct Y; // crate::a::Thing");
    no_cycle[4].1 = String::new();
    assert_eq!(find_cycle(&graph(&no_cycle)), None);
    no_cycle[3].1 = "fn f() -> crate::Thing { todo!() }".to_string();
    assert!(find_cycle(&graph(&no_cycle)).is_some());
}
