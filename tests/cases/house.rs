//! The house's layering, read off the code: every path that starts with `crate::` (in a `use`
//! or inline, tests included) names a module of a lower layer than the one it is in, or its
//! own; no outlet names another outlet; and inside `config/` too imports run one way
//! (`CONFIG_FILES`). The layers are the crate doc's (`src/lib.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Lowest first. A module may name its own layer's family only if it is that family.
const LAYERS: &[&[&str]] = &[
    &["units", "limit", "client"],
    &["files"],
    &["secret"],
    &["forecast"],
    &["policy"],
    &["sources"],
    &["status"],
    &["outlets", "fleet"],
    &["monitor"],
    &["config"],
    &["sidecar"],
    &["tools"],
    &["cli"],
];

/// `config/`'s files, lowest first: each may name a lower one, never a higher one (its
/// `mod.rs`'s own items are the family's, named by all). Its unit tests read everything.
const CONFIG_FILES: &[&str] = &["flags", "check", "values", "tests"];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::b` path in a file, as its first two segments, and every `super::x`.
#[derive(Default)]
struct Named {
    crate_paths: BTreeSet<(String, Option<String>)>,
    super_names: BTreeSet<String>,
}

impl Named {
    fn segments(&mut self, first: &str, rest: &[String]) {
        match first {
            "crate" if !rest.is_empty() => {
                self.crate_paths
                    .insert((rest[0].clone(), rest.get(1).cloned()));
            }
            "super" if !rest.is_empty() => {
                self.super_names.insert(rest[0].clone());
            }
            _ => {}
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.leaf(prefix, n.ident.to_string()),
            syn::UseTree::Rename(r) => self.leaf(prefix, r.ident.to_string()),
            syn::UseTree::Glob(_) => self.leaf(prefix, String::new()),
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }

    fn leaf(&mut self, prefix: &[String], name: String) {
        let mut all: Vec<String> = prefix.to_vec();
        if !name.is_empty() && name != "self" {
            all.push(name);
        }
        if let Some((first, rest)) = all.split_first() {
            self.segments(first, rest);
        }
    }
}

impl<'ast> Visit<'ast> for Named {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let all: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some((first, rest)) = all.split_first() {
            self.segments(first, rest);
        }
        syn::visit::visit_path(self, path);
    }
}

#[test]
fn imports_run_one_way_and_outlets_never_name_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let outlets: BTreeSet<String> = std::fs::read_dir(src.join("outlets"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".rs").unwrap_or(&name).to_string();
            (stem != "mod").then_some(stem)
        })
        .collect();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let parts: Vec<String> = relative
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        let module = parts[0].as_str();
        // The executables' mains (src/main.rs, src/bin/*) use the crate as its users do.
        if module == "main" || module == "lib" || module == "bin" {
            continue;
        }
        let Some(own) = layer(module) else {
            wrong.push(format!(
                "{}: module {module} has no layer in LAYERS",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let syntax = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", relative.display()));
        let mut named = Named::default();
        named.visit_file(&syntax);
        checked += 1;
        for (first, second) in &named.crate_paths {
            match layer(first) {
                Some(l) if first == module || l < own => {}
                Some(_) => wrong.push(format!(
                    "{}: names crate::{first}, a layer at or above {module}'s",
                    relative.display()
                )),
                // Items of the crate root (re-exports) are only for main and tests.
                None => wrong.push(format!(
                    "{}: names crate::{first}, which is not a module of a layer",
                    relative.display()
                )),
            }
            let member = parts.get(1).map(String::as_str);
            if module == "outlets"
                && first == "outlets"
                && let (Some(member), Some(other)) = (member, second)
                && outlets.contains(other)
                && member != other
                && member != "mod"
            {
                wrong.push(format!(
                    "{}: outlet {member} names outlet {other}",
                    relative.display()
                ));
            }
        }
        // Inside config/, a file names only the files below it, by `super::` or `crate::`.
        if module == "config" && parts.len() == 2 && parts[1] != "mod" {
            let own = CONFIG_FILES.iter().position(|f| *f == parts[1]);
            let Some(own) = own else {
                wrong.push(format!(
                    "{}: a file of config/ not in CONFIG_FILES",
                    relative.display()
                ));
                continue;
            };
            let via_crate = named
                .crate_paths
                .iter()
                .filter(|(first, _)| first == "config")
                .filter_map(|(_, second)| second.clone());
            for name in named.super_names.iter().cloned().chain(via_crate) {
                if let Some(other) = CONFIG_FILES.iter().position(|f| *f == name)
                    && other > own
                {
                    wrong.push(format!(
                        "{}: config's {} names config's {name}, which is above it",
                        relative.display(),
                        parts[1]
                    ));
                }
            }
        }
        // An outlet's own file may name its parent's items, never a sibling outlet.
        if module == "outlets" && parts.len() == 2 && parts[1] != "mod" {
            for name in &named.super_names {
                if outlets.contains(name) {
                    wrong.push(format!(
                        "{}: outlet {} names outlet {name}",
                        relative.display(),
                        parts[1]
                    ));
                }
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} files read under {}",
        src.display()
    );
    assert!(
        wrong.is_empty(),
        "imports that run the wrong way:\n{}",
        wrong.join("\n")
    );
}
