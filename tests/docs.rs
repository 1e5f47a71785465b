//! The operator's manual in `docs/` keeps up with the code: every key of
//! the annotated config and every CLI subcommand has an entry there, and
//! every file and link the docs name exists.
//!
//! The rules, kept simple on purpose:
//!
//! - **Config keys.** The keys are those `config/cutover.toml` sets and
//!   those its comments show as examples: a comment line that is itself a
//!   line of TOML (`# listen_tls = ["0.0.0.0:8443"]`, `# [server.error_pages]`).
//!   A key belongs to the `[table]` header above it, with an app's name
//!   written `NAME` (`[apps.NAME.blue]`). It is documented when
//!   `docs/configuration.md` has a heading naming that table in brackets
//!   and, in that heading's section (up to the next heading of the same or
//!   a higher level), the key in backticks: `` `percent` ``, or a span that
//!   starts with it, `` `percent = 10` ``. A key of an inline table
//!   (`health = { rise = 2 }`) or of the tables in an array
//!   (`servers = [{ addr = "…" }]`) counts by its own name, `rise`, or
//!   dotted, `health.rise`.
//! - **Subcommands.** Every subcommand of clap's definition of the CLI,
//!   nested ones included (not clap's own `help`), needs a heading
//!   somewhere in `docs/` whose words include `cutover` and the
//!   subcommand's path: `### cutover rules add`. Backticks and bracketed
//!   placeholders are ignored, so `` ### `cutover rules [APP] add` `` counts.
//! - **Files and links.** A path under `src/`, `tests/`, `benches/`,
//!   `config/`, `fuzz/` or `docs/` named in `README.md` or `docs/` exists,
//!   and a relative Markdown link there points at a file that exists and,
//!   with `#anchor`, at one of its headings.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every Markdown file of `docs/`, by its path relative to the root.
fn docs() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("a readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| {
            let name = format!("docs/{}", p.file_name().unwrap().to_string_lossy());
            (name, read(&p))
        })
        .collect();
    files.sort();
    files
}

/// One heading of a Markdown file and the text under it, up to the next
/// heading of the same or a higher level.
struct Section {
    heading: String,
    body: String,
}

/// The headings of a Markdown file, outside fenced code blocks (where a
/// `#` starts a shell comment), each with its section.
fn sections(markdown: &str) -> Vec<Section> {
    let mut heads: Vec<(usize, usize, String)> = Vec::new(); // line, level, text
    let lines: Vec<&str> = markdown.lines().collect();
    let mut fenced = false;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if !fenced && level > 0 && line[level..].starts_with(' ') {
            heads.push((i, level, line[level..].trim().to_string()));
        }
    }
    heads
        .iter()
        .enumerate()
        .map(|(n, (line, level, heading))| {
            let end = heads[n + 1..]
                .iter()
                .find(|(_, l, _)| l <= level)
                .map_or(lines.len(), |(l, _, _)| *l);
            Section {
                heading: heading.clone(),
                body: lines[*line + 1..end].join("\n"),
            }
        })
        .collect()
}

/// The text inside backticks.
fn code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// One key of the example config: the table it sits under, with app
/// names as `NAME`, and its name (`health.rise` for an inline table's).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    table: String,
    name: String,
}

/// A `[table]` or `[[table]]` header's path, app names as `NAME`.
fn table_path(header: &str) -> String {
    let inner = header.trim_matches(|c| c == '[' || c == ']');
    let parts: Vec<&str> = inner.split('.').collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i == 1 && parts[0] == "apps" {
                "NAME"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The key of one line of TOML, with the keys of an inline table or of
/// the inline tables of an array as `key.sub`.
fn line_keys(table: &str, parsed: &toml::Table, out: &mut BTreeSet<Key>) {
    for (key, value) in parsed {
        let key_of = |name: String| Key {
            table: table.to_string(),
            name,
        };
        out.insert(key_of(key.clone()));
        let inner: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(items) => items.iter().filter_map(|v| v.as_table()).collect(),
            _ => vec![],
        };
        for sub in inner.iter().flat_map(|t| t.keys()) {
            out.insert(key_of(format!("{key}.{sub}")));
        }
    }
}

/// Every key of the example config, live or shown in a comment.
fn config_keys(config: &str) -> BTreeSet<Key> {
    let mut keys = BTreeSet::new();
    let mut table = String::new();
    for (n, raw) in config.lines().enumerate() {
        let commented = raw.trim_start().starts_with('#');
        let line = if commented {
            let rest = raw.trim_start().trim_start_matches('#');
            rest.strip_prefix(' ').unwrap_or(rest)
        } else {
            raw
        };
        let parsed = match line.parse::<toml::Table>() {
            Ok(t) => t,
            // A comment that is prose, not an example.
            Err(_) if commented => continue,
            Err(e) => panic!(
                "config/cutover.toml line {}: {e}: keep each key and its value on one line",
                n + 1
            ),
        };
        if line.trim_start().starts_with('[') {
            table = table_path(line.trim());
        } else {
            line_keys(&table, &parsed, &mut keys);
        }
    }
    keys
}

/// The keys `configuration` does not document, each in words.
fn undocumented_keys(config: &str, configuration: &str) -> Vec<String> {
    let sections = sections(configuration);
    let mut missing = Vec::new();
    for key in config_keys(config) {
        let bracketed = format!("[{}]", key.table);
        let names = [key.name.rsplit('.').next().unwrap(), key.name.as_str()];
        let documented = sections
            .iter()
            .filter(|s| s.heading.contains(&bracketed))
            .flat_map(|s| code_spans(&s.body))
            .any(|span| {
                names.iter().any(|n| {
                    span == *n
                        || span
                            .strip_prefix(n)
                            .is_some_and(|rest| rest.starts_with([' ', '=']))
                })
            });
        if !documented {
            missing.push(format!(
                "`{}` of {bracketed}: docs/configuration.md needs a heading naming {bracketed} \
                 with `{}` in backticks under it",
                key.name, names[0]
            ));
        }
    }
    missing
}

#[test]
fn every_config_key_is_documented_in_the_configuration_reference() {
    let config = read(&root().join("config/cutover.toml"));
    let configuration = read(&root().join("docs/configuration.md"));
    assert!(
        config_keys(&config).len() > 100,
        "the example config's keys were not found"
    );
    let missing = undocumented_keys(&config, &configuration);
    assert!(
        missing.is_empty(),
        "config keys missing from the docs:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_key_check_names_a_key_the_docs_leave_out() {
    let config = "[apps.shop.mirror]\npercent = 0\n# max_in_flight = 64\n";
    let docs = "# Config\n\n## [apps.NAME.mirror]\n\n- `percent = 10`: the share.\n\n\
                ## [server]\n\n- `max_in_flight`: elsewhere.\n";
    let missing = undocumented_keys(config, docs);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].starts_with("`max_in_flight` of [apps.NAME.mirror]"),
        "{}",
        missing[0]
    );
}

/// Every subcommand's path (`["rules", "add"]`), nested ones included.
fn subcommands(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_string());
        subcommands(sub, &path, out);
        out.push(path);
    }
}

/// A heading's words, backticks and `[PLACEHOLDERS]` left out.
fn heading_words(heading: &str) -> Vec<String> {
    heading
        .replace('`', "")
        .split_whitespace()
        .filter(|w| !(w.starts_with('[') && w.ends_with(']')))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The subcommands no heading of `docs` names, as `cutover PATH`.
fn subcommands_without_entry(cmd: &clap::Command, docs: &[(String, String)]) -> Vec<String> {
    let headings: Vec<Vec<String>> = docs
        .iter()
        .flat_map(|(_, text)| sections(text))
        .map(|s| heading_words(&s.heading))
        .collect();
    let mut paths = Vec::new();
    subcommands(cmd, &[], &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let mut words = vec!["cutover".to_string()];
            words.extend(path);
            words
        })
        .filter(|words| {
            !headings
                .iter()
                .any(|h| h.windows(words.len()).any(|w| w == words))
        })
        .map(|words| words.join(" "))
        .collect()
}

#[test]
fn every_cli_subcommand_has_an_entry_in_the_docs() {
    let cli = cutover::cli::Cli::command();
    assert!(cli.get_subcommands().count() > 10, "no subcommands found");
    let missing = subcommands_without_entry(&cli, &docs());
    assert!(
        missing.is_empty(),
        "subcommands without a heading in docs/ (e.g. `### {}`):\n{}",
        missing.first().map_or("", String::as_str),
        missing.join("\n")
    );
}

#[test]
fn the_subcommand_check_names_a_nested_subcommand_the_docs_leave_out() {
    let cli = clap::Command::new("cutover")
        .subcommand(clap::Command::new("flip"))
        .subcommand(
            clap::Command::new("rules")
                .subcommand(clap::Command::new("add"))
                .subcommand(clap::Command::new("remove")),
        );
    let docs = vec![(
        "docs/cli.md".to_string(),
        "# CLI\n\n## `cutover flip [APP]`\n\n### cutover rules [APP] add\n\n\
         ```sh\n# cutover rules remove NAME\n```\n"
            .to_string(),
    )];
    assert_eq!(
        subcommands_without_entry(&cli, &docs),
        vec!["cutover rules remove".to_string()]
    );
}

/// A heading's anchor as GitHub makes it: lower case, spaces to `-`,
/// anything but letters, digits, `-` and `_` left out.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// What is wrong with the files and links one Markdown file names.
fn broken_references(file: &str, text: &str, problems: &mut String) {
    // Not after a `/` or a word: `admin/src/server.rs` is another project's.
    let path_re =
        regex::Regex::new(r"(?:^|[^/\w.-])((?:src|tests|benches|config|fuzz|docs)/[\w./-]*)")
            .expect("a valid regex");
    for cap in path_re.captures_iter(text) {
        let path = cap[1].trim_end_matches(['.', ',']);
        if !root().join(path).exists() {
            let _ = writeln!(problems, "{file} names {path}, which does not exist");
        }
    }
    let link_re = regex::Regex::new(r"\]\(([^)\s]+)\)").expect("a valid regex");
    let dir = Path::new(file).parent().unwrap_or(Path::new(""));
    for cap in link_re.captures_iter(text) {
        let target = &cap[1];
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
        let resolved = if path.is_empty() {
            root().join(file)
        } else {
            root().join(dir).join(path)
        };
        if !resolved.exists() {
            let _ = writeln!(problems, "{file} links to {target}: no such file");
            continue;
        }
        if !fragment.is_empty() {
            let anchors: Vec<String> = sections(&read(&resolved))
                .iter()
                .map(|s| anchor(&s.heading))
                .collect();
            if !anchors.iter().any(|a| a == fragment) {
                let _ = writeln!(problems, "{file} links to {target}: no such heading");
            }
        }
    }
}

#[test]
fn every_file_and_link_the_docs_name_exists() {
    let mut files = docs();
    files.push(("README.md".to_string(), read(&root().join("README.md"))));
    files.push((
        "benches/README.md".to_string(),
        read(&root().join("benches/README.md")),
    ));
    let mut problems = String::new();
    for (file, text) in &files {
        broken_references(file, text, &mut problems);
    }
    assert!(problems.is_empty(), "{problems}");
}

#[test]
fn the_readme_stays_short_and_keeps_its_headline_markers() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; the manual belongs in docs/"
    );
    // benches/compare.py --headline rewrites what lies between these two.
    let start = readme.find("<!-- headline: written by benches/compare.py --headline -->");
    let end = readme.find("<!-- /headline -->");
    assert!(
        matches!((start, end), (Some(a), Some(b)) if a < b),
        "README.md lost its headline markers"
    );
    let benches = read(&root().join("benches/README.md")).lines().count();
    assert!(benches <= 150, "benches/README.md has {benches} lines");
}
