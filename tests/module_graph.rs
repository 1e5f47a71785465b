//! The crate's modules import each other one way only: shared vocabulary
//! at the bottom, the daemon and the command line at the top, and no ring
//! anywhere. A ring hides where a change must go, so this test reads the
//! sources, builds the graph of which module names which, and fails with
//! every cycle it finds.
//!
//! What counts as a reference, in every file under `src/` but `lib.rs`
//! and `main.rs` (with `#[cfg(test)] mod tests` blocks and `//` comment
//! lines, doc comments included, left out):
//! - `crate::a::b…`,
//! - `super::x…` (from `foo.rs` or `foo/mod.rs`, `super` is foo's
//!   parent) and `self::x…`,
//! - in a file that declares child modules (`mod child;`), `child::…`.
//!
//! Each resolves to the longest module path it starts with; a module
//! naming itself is not an edge. Grouped imports (`use super::{a, b::C}`)
//! count for each path in the group.
//!
//! `cargo test --test module_graph -- --nocapture` prints the layers: each
//! module in the lowest layer above everything it uses.
//!
//! The top-level modules also keep the order `lib.rs` documents on its
//! line `Imports point one way, lowest first: a, b ← c ← …`: a module may
//! use only modules in groups to its left. The test reads that line, so
//! the documented order and the checked one cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One module: its path (`proxy::h1::codec`), its file, and its code with
/// tests and comment lines removed, each kept line with its number.
struct Module {
    name: String,
    file: PathBuf,
    lines: Vec<(usize, String)>,
    children: BTreeSet<String>,
}

/// Where an edge was seen: file, line, the path as written.
type Evidence = (PathBuf, usize, String);

/// `from → to`, with the first place each was seen.
type Graph = BTreeMap<String, BTreeMap<String, Evidence>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/proxy/h1/codec.rs` → `proxy::h1::codec`, `src/config/mod.rs` →
/// `config`.
fn module_name(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code that runs outside tests: `#[cfg(test)] mod tests { … }`
/// (rustfmt closes it with a `}` in the column it opened in) and comment
/// lines dropped.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
        if t.starts_with("#[cfg(test)]")
            && (next.starts_with("mod tests") || next.starts_with("pub mod tests"))
            && next.trim_end().ends_with('{')
        {
            let indent = &line[..line.len() - t.len()];
            let close = format!("{indent}}}");
            i += 2;
            while i < lines.len() && lines[i].trim_end() != close {
                i += 1;
            }
            i += 1;
            continue;
        }
        if !t.starts_with("//") {
            out.push((i + 1, line.to_string()));
        }
        i += 1;
    }
    out
}

/// The modules a file declares as its children (`mod x;`, `pub mod x;`).
fn children(lines: &[(usize, String)]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|(_, l)| {
            let t = l.trim();
            let t = t
                .strip_prefix("pub(crate) ")
                .or_else(|| t.strip_prefix("pub "))
                .unwrap_or(t);
            let name = t.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every path in `code` that starts with one of `roots` (at a word
/// boundary, not after `::` or `.`) and goes on with `::`, with the byte
/// offset it starts at; group imports expanded, across lines too:
/// `super::{a, b::{C, D}}` gives `super::a`, `super::b::C`, `super::b::D`.
fn paths_in(code: &str, roots: &BTreeSet<&str>) -> Vec<(usize, Vec<String>)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !is_ident(b[i])
            || (i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b'.' || b[i - 1] == b':'))
        {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        let word = &code[start..i];
        if roots.contains(word) && code[i..].starts_with("::") {
            let mut found = Vec::new();
            i = path_tail(code, i, vec![word.to_string()], &mut found);
            out.extend(found.into_iter().map(|p| (start, p)));
        }
    }
    out
}

fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
        i += 1;
    }
    i
}

/// Read `::seg::seg…` (and a `::{…}` group) after `prefix`, from byte
/// `i`; push each full path to `out`; return where reading stopped.
fn path_tail(
    code: &str,
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let b = code.as_bytes();
    while code[i..].starts_with("::") {
        i += 2;
        if b.get(i) == Some(&b'{') {
            i += 1;
            loop {
                i = skip_blanks(b, i);
                if i >= b.len() || b[i] == b'}' {
                    return i + 1;
                }
                let s = i;
                while i < b.len() && (is_ident(b[i]) || b[i] == b'*') {
                    i += 1;
                }
                if s == i {
                    return i;
                }
                let mut item = prefix.clone();
                let seg = &code[s..i];
                if seg != "self" {
                    item.push(seg.to_string());
                }
                i = path_tail(code, i, item, out);
                // `name as alias`
                let j = skip_blanks(b, i);
                if code[j..].starts_with("as ") {
                    let k = skip_blanks(b, j + 3);
                    i = k + b[k..].iter().take_while(|&&c| is_ident(c)).count();
                }
            }
        }
        let s = i;
        while i < b.len() && (is_ident(b[i]) || b[i] == b'*') {
            i += 1;
        }
        if s == i {
            break;
        }
        prefix.push(code[s..i].to_string());
    }
    out.push(prefix);
    i
}

/// The graph of `src/`, and the modules in it.
fn graph() -> (Graph, BTreeSet<String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: Vec<Module> = files
        .iter()
        .filter(|f| {
            let rel = f.strip_prefix(&src).unwrap();
            rel != Path::new("lib.rs") && rel != Path::new("main.rs")
        })
        .map(|f| {
            let lines = code_lines(&fs::read_to_string(f).unwrap());
            Module {
                name: module_name(&src, f),
                file: f.strip_prefix(src.parent().unwrap()).unwrap().to_path_buf(),
                children: children(&lines),
                lines,
            }
        })
        .collect();
    let known: BTreeSet<String> = modules.iter().map(|m| m.name.clone()).collect();
    let mut g = Graph::new();
    for m in &modules {
        g.entry(m.name.clone()).or_default();
        let here: Vec<&str> = m.name.split("::").collect();
        let mut roots: BTreeSet<&str> = ["crate", "super", "self"].into();
        roots.extend(m.children.iter().map(String::as_str));
        // One text, so that a group import over several lines reads whole;
        // each kept line's start, to name the line an edge was seen on.
        let mut code = String::new();
        let mut starts = Vec::new();
        for (n, line) in &m.lines {
            starts.push((code.len(), *n));
            code.push_str(line);
            code.push('\n');
        }
        for (at, path) in paths_in(&code, &roots) {
            let n = &starts[starts.partition_point(|(s, _)| *s <= at) - 1].1;
            {
                let Some(abs) = absolute(&here, &m.children, &path) else {
                    continue;
                };
                let Some(to) = longest_module(&known, &abs) else {
                    continue;
                };
                if to != m.name {
                    g.get_mut(&m.name)
                        .unwrap()
                        .entry(to)
                        .or_insert_with(|| (m.file.clone(), *n, path.join("::")));
                }
            }
        }
    }
    (g, known)
}

/// `path` as written in module `here`, from the crate root.
fn absolute(here: &[&str], children: &BTreeSet<String>, path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = here.iter().map(|s| s.to_string()).collect();
    let mut rest = path;
    match path[0].as_str() {
        "crate" => {
            base.clear();
            rest = &path[1..];
        }
        "self" => rest = &path[1..],
        "super" => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        child if children.contains(child) => {}
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

fn longest_module(known: &BTreeSet<String>, abs: &[String]) -> Option<String> {
    (1..=abs.len())
        .rev()
        .map(|n| abs[..n].join("::"))
        .find(|m| known.contains(m))
}

/// Strongly connected components (Tarjan), each sorted.
fn components(g: &Graph) -> Vec<Vec<String>> {
    struct Walk<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on_stack.insert(v);
        for to in w.g[v].keys() {
            let to = to.as_str();
            if !w.index.contains_key(to) {
                visit(w, to);
                let l = w.low[v].min(w.low[to]);
                w.low.insert(v, l);
            } else if w.on_stack.contains(to) {
                let l = w.low[v].min(w.index[to]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut c = Vec::new();
            loop {
                let x = w.stack.pop().unwrap();
                w.on_stack.remove(x);
                c.push(x.to_string());
                if x == v {
                    break;
                }
            }
            c.sort();
            w.out.push(c);
        }
    }
    let mut w = Walk {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.out
}

/// The shortest cycle from `start` back to it inside `members`.
fn shortest_cycle(g: &Graph, members: &BTreeSet<&str>, start: &str) -> Vec<String> {
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for to in g[v].keys().map(String::as_str) {
            if !members.contains(to) {
                continue;
            }
            if to == start {
                let mut path = vec![start.to_string()];
                let mut at = v;
                while at != start {
                    path.push(at.to_string());
                    at = prev[at];
                }
                path.push(start.to_string());
                path.reverse();
                return path;
            }
            if !prev.contains_key(to) {
                prev.insert(to, v);
                queue.push_back(to);
            }
        }
    }
    unreachable!("{start} is in a strongly connected component")
}

/// The cycles of `g`, each as `a -> b -> a` with where each edge is.
fn cycles(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for c in components(g).into_iter().filter(|c| c.len() > 1) {
        let members: BTreeSet<&str> = c.iter().map(String::as_str).collect();
        let mut seen = BTreeSet::new();
        for start in &c {
            let cycle = shortest_cycle(g, &members, start);
            // The same ring seen from each of its members: once.
            let mut key: Vec<String> = cycle[1..].to_vec();
            key.sort();
            if !seen.insert(key) {
                continue;
            }
            let mut text = cycle.join(" -> ");
            for pair in cycle.windows(2) {
                let (file, line, path) = &g[&pair[0]][&pair[1]];
                text += &format!(
                    "\n      {} -> {}: {}:{line} `{path}`",
                    pair[0],
                    pair[1],
                    file.display()
                );
            }
            out.push(text);
        }
    }
    out
}

/// Layer 0 uses no other module; layer n uses only layers below n.
/// `None` if a cycle leaves some module without a layer.
fn layers(g: &Graph) -> Option<Vec<Vec<String>>> {
    let mut layer: BTreeMap<&str, usize> = BTreeMap::new();
    while layer.len() < g.len() {
        let ready: Vec<(&str, usize)> = g
            .iter()
            .filter(|(v, _)| !layer.contains_key(v.as_str()))
            .filter_map(|(v, to)| {
                let below: Option<Vec<usize>> =
                    to.keys().map(|t| layer.get(t.as_str()).copied()).collect();
                Some((
                    v.as_str(),
                    below?.into_iter().map(|l| l + 1).max().unwrap_or(0),
                ))
            })
            .collect();
        if ready.is_empty() {
            return None;
        }
        layer.extend(ready);
    }
    let mut out = vec![Vec::new(); layer.values().max().map_or(0, |m| m + 1)];
    for (v, l) in layer {
        out[l].push(v.to_string());
    }
    Some(out)
}

fn print_layers(g: &Graph) {
    if let Some(layers) = layers(g) {
        println!("layers, bottom first (each uses only those below it):");
        for (i, l) in layers.iter().enumerate() {
            println!("  {i}: {}", l.join(", "));
        }
    }
}

fn assert_no_cycles(g: &Graph, what: &str) {
    let found = cycles(g);
    assert!(
        found.is_empty(),
        "{what}: {} cycle(s):\n  {}",
        found.len(),
        found.join("\n  ")
    );
    print_layers(g);
}

/// The layer order from `lib.rs`: groups of top-level modules, lowest
/// first.
fn documented_layers() -> Vec<Vec<String>> {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let marker = "Imports point one way, lowest first:";
    // The sentence may wrap over several `//!` lines; it ends with a `.`.
    let text: String = lib
        .lines()
        .map(|l| l.trim_start_matches("//!").trim())
        .collect::<Vec<_>>()
        .join(" ");
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("src/lib.rs has no line `{marker} …`"));
    let rest = &text[at + marker.len()..];
    let order = &rest[..rest
        .find('.')
        .expect("the layer sentence ends with a full stop")];
    order
        .split('←')
        .map(|group| group.split(',').map(|m| m.trim().to_string()).collect())
        .collect()
}

/// Every import between top-level modules that does not point down the
/// `layers` (lowest first), or that involves a module not in them, with
/// where it was seen.
fn against_layers(g: &Graph, layers: &[Vec<String>]) -> Vec<String> {
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, group)| group.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut out = Vec::new();
    for (from, tos) in g {
        for (to, (file, line, path)) in tos {
            let (a, b) = (top(from), top(to));
            if a == b {
                continue;
            }
            let verdict = match (rank.get(a.as_str()), rank.get(b.as_str())) {
                (Some(ra), Some(rb)) if rb < ra => continue,
                (Some(_), Some(_)) => format!("`{a}` may not use `{b}`, a layer at or above it"),
                (None, _) => format!("`{a}` is not in lib.rs's layer order"),
                (_, None) => format!("`{b}` is not in lib.rs's layer order"),
            };
            out.push(format!("{verdict}: {}:{line} `{path}`", file.display()));
        }
    }
    out
}

#[test]
fn no_module_imports_against_the_layer_order_lib_rs_documents() {
    let (g, _) = graph();
    let found = against_layers(&g, &documented_layers());
    assert!(
        found.is_empty(),
        "{} import(s) against the layer order in src/lib.rs:\n  {}",
        found.len(),
        found.join("\n  ")
    );
}

#[test]
fn the_layer_check_catches_an_import_that_points_up() {
    let layers: Vec<Vec<String>> = vec![
        vec!["model".into()],
        vec!["route".into()],
        vec!["proxy".into()],
    ];
    let edge = |from: &str, to: &str| {
        let mut g = Graph::new();
        let seen = (PathBuf::from("src/x.rs"), 7, format!("crate::{to}"));
        g.entry(from.to_string())
            .or_default()
            .insert(to.to_string(), seen);
        against_layers(&g, &layers)
    };
    assert!(edge("proxy::handler", "route::snapshot").is_empty());
    assert!(edge("proxy::handler", "proxy::io").is_empty());
    let up = edge("route::snapshot", "proxy::io");
    assert_eq!(up.len(), 1);
    assert!(up[0].contains("`route` may not use `proxy`"), "{up:?}");
    assert!(up[0].contains("src/x.rs:7"), "{up:?}");
    let unknown = edge("api", "model");
    assert!(
        unknown[0].contains("`api` is not in lib.rs's layer order"),
        "{unknown:?}"
    );
    // The documented order is read as groups, lowest first.
    let documented = documented_layers();
    assert_eq!(documented[0].first().map(String::as_str), Some("model"));
}

#[test]
fn no_module_imports_from_a_module_that_imports_it_back() {
    let (g, _) = graph();
    assert_no_cycles(&g, "the crate's modules");
}

#[test]
fn the_reader_finds_what_the_graph_is_built_from() {
    let roots: BTreeSet<&str> = ["crate", "super", "self", "rule"].into();
    let paths = |l: &str| -> Vec<String> {
        paths_in(l, &roots)
            .into_iter()
            .map(|(_, p)| p.join("::"))
            .collect()
    };
    assert_eq!(
        paths("use super::{rule::{Rule, RuleSpec}, sticky, self};"),
        [
            "super::rule::Rule",
            "super::rule::RuleSpec",
            "super::sticky",
            "super"
        ]
    );
    assert_eq!(
        paths("let x = crate::config::Color::Blue;"),
        ["crate::config::Color::Blue"]
    );
    assert_eq!(paths("pub(crate) fn f(x: rule::Rule) {}"), ["rule::Rule"]);
    assert_eq!(
        paths("x.rule::y; my_rule::z; a::rule::b"),
        Vec::<String>::new()
    );
    assert_eq!(paths("use super::*;"), ["super::*"]);
    assert_eq!(
        paths("use crate::route::{\n    rule::Rule as R,\n    Snapshot,\n};"),
        ["crate::route::rule::Rule", "crate::route::Snapshot"]
    );

    let here = ["proxy", "h1", "codec"];
    let kids = BTreeSet::new();
    let abs = |p: &str| {
        absolute(
            &here,
            &kids,
            &p.split("::").map(String::from).collect::<Vec<_>>(),
        )
    };
    assert_eq!(abs("super::io::X").unwrap().join("::"), "proxy::h1::io::X");
    assert_eq!(abs("super::super::body").unwrap().join("::"), "proxy::body");
    assert_eq!(
        abs("crate::route::rule::Rule").unwrap().join("::"),
        "route::rule::Rule"
    );

    let text = "use a;\n/// crate::doc::link\n#[cfg(test)]\nmod tests {\n    use crate::x::y;\n}\nfn after() {}\n";
    let kept: Vec<String> = code_lines(text).into_iter().map(|(_, l)| l).collect();
    assert_eq!(kept, ["use a;", "fn after() {}"]);
}
