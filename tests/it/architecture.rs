//! The module order of docs/architecture.md, enforced: a module under `src/` may name
//! (`crate::x`) only modules below it, and every module `src/lib.rs` declares has a place
//! in the order.
//!
//! Paths are read from the source text: `crate::x` anywhere (in `use` lines, groups such
//! as `use crate::{x, y::z}` and expressions), in code and in its unit tests alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The numbered list under "## Module order": module names, bottom first.
fn documented_order(doc: &str) -> Vec<String> {
    let section = doc
        .split("## Module order")
        .nth(1)
        .expect("docs/architecture.md has a \"## Module order\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| {
            let (number, rest) = line.split_once(". `")?;
            number.trim().parse::<u32>().ok()?;
            Some(rest.split('`').next()?.to_string())
        })
        .collect()
}

/// `pub mod x;` / `mod x;` declarations in `src/lib.rs`.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`src/cache/store.rs` -> `cache`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(m) => Some(m.to_string()),
        None => Some(first.to_string()),
    }
}

/// Every module named after `crate::` in `text`, with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            // `regcache::crate::` cannot occur; `$crate::` in a macro is the crate too.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                out.extend(group_heads(group, text, n).into_iter().map(|m| (n + 1, m)));
            } else {
                let ident: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push((n + 1, ident));
            }
        }
    }
    out
}

/// The first segment of each path in a `crate::{...}` group, which may span lines.
fn group_heads(first_line_rest: &str, text: &str, line: usize) -> Vec<String> {
    let mut group = first_line_rest.to_string();
    for l in text.lines().skip(line + 1) {
        if group.contains('}') && brace_closed(&group) {
            break;
        }
        group.push(' ');
        group.push_str(l);
    }
    let mut heads = Vec::new();
    let (mut depth, mut expecting) = (0, true);
    let mut ident = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                if !ident.is_empty() {
                    heads.push(std::mem::take(&mut ident));
                }
                expecting = true;
            }
            c if expecting && depth == 0 && (c.is_alphanumeric() || c == '_') => ident.push(c),
            _ if expecting && !ident.is_empty() => {
                heads.push(std::mem::take(&mut ident));
                expecting = false;
            }
            _ => {}
        }
    }
    if !ident.is_empty() {
        heads.push(ident);
    }
    heads
}

fn brace_closed(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return true,
            '}' => depth -= 1,
            _ => {}
        }
    }
    false
}

/// Violations: `file:line: module a names module b, which is above it`.
fn violations(src: &Path, order: &[String]) -> Vec<String> {
    let rank: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        let Some(&own) = rank.get(module.as_str()) else {
            out.push(format!(
                "{}: module {module} has no place in the documented order",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, named) in crate_paths(&text) {
            match rank.get(named.as_str()) {
                Some(&other) if other > own => out.push(format!(
                    "{}:{line}: module {module} names crate::{named}, which is above it",
                    file.strip_prefix(root()).unwrap_or(&file).display()
                )),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn modules_import_only_modules_below_them() {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let order = documented_order(&doc);
    assert!(order.len() >= 10, "module order not found: {order:?}");
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut declared = declared_modules(&lib);
    let mut documented = order.clone();
    declared.sort();
    documented.sort();
    assert_eq!(
        declared, documented,
        "src/lib.rs and docs/architecture.md's module order list different modules"
    );
    let found = violations(&root().join("src"), &order);
    assert!(found.is_empty(), "upward imports:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_paths_in_every_form() {
    let text = "use crate::cache::CacheReader;\n\
                use crate::{\n    image::{Digest, Platform},\n    api,\n};\n\
                let x = crate::runtime::Metrics::new(); // crate::cli in a comment\n\
                use crate::{warmer::Warmer, crd};\n";
    let named: Vec<String> = crate_paths(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        named,
        ["cache", "image", "api", "runtime", "warmer", "crd"],
        "{named:?}"
    );
    let order = ["image", "cache", "api"].map(String::from);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("cache")).unwrap();
    std::fs::write(
        dir.path().join("cache/mod.rs"),
        "use crate::image::Digest;\nuse crate::api::ApiError;\n",
    )
    .unwrap();
    let found = violations(dir.path(), &order);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("cache names crate::api"), "{found:?}");
}
