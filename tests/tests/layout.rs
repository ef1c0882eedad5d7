//! The shape of cargo-memleak's source: no two modules import each other, however far round,
//! and the README's layout table names every module there is.
//!
//! A module is a file (`commands/mod.rs` is `commands`). It imports another when it names a path
//! into it (`use crate::gate::Judgement`, `super::list::TestCase`, `crate::user::RunAs` in an
//! expression); a module naming its own submodules does not count (that is what declaring them
//! is), a submodule naming its parent does. Unit tests (`#[cfg(test)]`) are left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use syn::visit::Visit;

/// The module path of every source file under `src`, with its parsed contents.
fn modules(src: &Path) -> BTreeMap<Vec<String>, syn::File> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            // main.rs is the binary, a crate of its own that reaches the library by its name.
            if path.extension().is_none_or(|ext| ext != "rs") || path.ends_with("main.rs") {
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut segments: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
                segments.pop();
            }
            let text = std::fs::read_to_string(&path).expect("source file");
            let file = syn::parse_file(&text)
                .unwrap_or_else(|err| panic!("{} does not parse: {err}", path.display()));
            found.insert(segments, file);
        }
    }
    found
}

/// Every path a module names that starts at `crate`, `super` or `self`, made absolute.
struct Paths<'a> {
    module: &'a [String],
    found: BTreeSet<Vec<String>>,
}

impl Paths<'_> {
    /// `first` resolved against this module: its absolute prefix, or `None` for a path that
    /// starts elsewhere (a crate, a local name).
    fn base(&self, first: &str) -> Option<Vec<String>> {
        match first {
            "crate" => Some(Vec::new()),
            "self" | "super" => Some(self.module.to_vec()),
            _ => None,
        }
    }

    fn add(&mut self, segments: &[String]) {
        let Some(first) = segments.first() else {
            return;
        };
        let Some(mut absolute) = self.base(first) else {
            return;
        };
        let mut rest = &segments[1..];
        if first == "super" {
            absolute.pop();
            while rest.first().is_some_and(|segment| segment == "super") {
                absolute.pop();
                rest = &rest[1..];
            }
        }
        absolute.extend(rest.iter().cloned());
        self.found.insert(absolute);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                prefix.push(name.ident.to_string());
                if name.ident != "self" {
                    self.add(prefix);
                } else {
                    self.add(&prefix[..prefix.len() - 1]);
                }
                prefix.pop();
            }
            syn::UseTree::Rename(rename) => {
                prefix.push(rename.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.add(prefix),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path
            .segments
            .iter()
            .map(|segment| segment.ident.to_string())
            .collect();
        self.add(&segments);
        syn::visit::visit_path(self, path);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        let cfg_test = item.attrs.iter().any(|attr| {
            attr.path().is_ident("cfg")
                && attr
                    .parse_args::<syn::Ident>()
                    .is_ok_and(|ident| ident == "test")
        });
        if !cfg_test {
            syn::visit::visit_item_mod(self, item);
        }
    }
}

/// Which modules each module imports.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let name = |segments: &[String]| segments.join("::");
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let mut paths = Paths {
            module,
            found: BTreeSet::new(),
        };
        paths.visit_file(file);
        let targets: BTreeSet<String> = paths
            .found
            .iter()
            .filter_map(|path| {
                // The longest prefix that is a module.
                (1..=path.len())
                    .rev()
                    .map(|len| &path[..len])
                    .find(|prefix| modules.contains_key(*prefix))
            })
            .filter(|target| !target.starts_with(module))
            .map(name)
            .collect();
        graph.insert(name(module), targets);
    }
    graph
}

/// The groups of modules that reach each other (Tarjan's strongly connected components), with
/// more than one module.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        circles: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let index = state.index.len();
        state.index.insert(node, index);
        state.low.insert(node, index);
        state.stack.push(node);
        for next in state.graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !state.index.contains_key(next) {
                visit(state, next);
                let low = state.low[node].min(state.low[next]);
                state.low.insert(node, low);
            } else if state.stack.contains(&next) {
                let low = state.low[node].min(state.index[next]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut circle = Vec::new();
            while let Some(member) = state.stack.pop() {
                circle.push(member.to_owned());
                if member == node {
                    break;
                }
            }
            if circle.len() > 1 {
                circle.sort();
                state.circles.push(circle);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        circles: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.circles
}

fn source() -> std::path::PathBuf {
    memleak_tests::workspace_root().join("cargo-memleak/src")
}

#[test]
fn no_module_of_cargo_memleak_imports_one_that_imports_it_back() {
    let graph = imports(&source());
    assert!(
        graph.len() > 40 && graph["testrun::run"].contains("session"),
        "the import graph looks wrong: {graph:#?}"
    );
    let circles = circles(&graph);
    let described: Vec<String> = circles
        .iter()
        .map(|circle| {
            let edges: Vec<String> = circle
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| circle.contains(to))
                        .map(move |to| format!("{from} -> {to}"))
                })
                .collect();
            edges.join(", ")
        })
        .collect();
    assert!(
        circles.is_empty(),
        "import circles: move the type both sides use below both\n{}",
        described.join("\n")
    );
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &["a"][..]),
    ]
    .into_iter()
    .map(|(from, to)| {
        (
            from.to_owned(),
            to.iter().map(|to| (*to).to_owned()).collect(),
        )
    })
    .collect();
    assert_eq!(circles(&graph), [["a", "b", "c"]]);
}

/// The README's layout table names each top-level module of cargo-memleak (as `` `name` ``),
/// and names no module that is not there.
#[test]
fn the_readme_layout_names_every_module() {
    let readme = std::fs::read_to_string(memleak_tests::workspace_root().join("README.md"))
        .expect("README.md");
    let row = readme
        .lines()
        .find(|line| line.starts_with("| `cargo-memleak/` |"))
        .expect("the layout table has a row for cargo-memleak/");
    let graph = imports(&source());
    let top: BTreeSet<&str> = graph
        .keys()
        .filter(|module| !module.is_empty() && !module.contains("::"))
        .map(String::as_str)
        .collect();
    // Each module is named at the start of an item: `` the CLI and library: `name` (what), ``.
    let named: BTreeSet<&str> = row
        .split(['|', ',', ':'])
        .filter_map(|item| item.trim().strip_prefix('`')?.split('`').next())
        .filter(|name| !name.contains('/'))
        .collect();
    let missing: Vec<&&str> = top.difference(&named).collect();
    let extra: Vec<&&str> = named.difference(&top).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README layout: modules not named {missing:?}, named but absent {extra:?}"
    );
}
