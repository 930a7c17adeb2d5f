//! Checks the layering of `src/`: each top-level module (`src/NAME/` or
//! `src/NAME.rs`) is a layer, and may use through `crate::` paths only itself
//! and the layers that `layers.txt` lists for it. The list must be acyclic, so
//! each layer uses only the layers below it and the architecture stays a
//! stack; see ARCHITECTURE.md.
//!
//! The source is read as tokens, without comments and literals: every
//! `crate::` path (grouped imports included) names a layer it uses, or a
//! `#[macro_export]` macro, which counts as its defining layer. A `super::`
//! chain that reaches the crate root is forbidden, as it would slip past the
//! check; a `crate::` path says the same thing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each layer and the layers it may use.
type Layers = BTreeMap<String, BTreeSet<String>>;

/// A token of source, with its line.
type Token = (usize, String);

/// What a file has: a `crate::NAME` path, a `super::` chain of that length
/// reaching the root, or the definition of an exported macro.
#[derive(Debug, PartialEq)]
enum Found {
    Crate(String),
    Climb(usize),
    Macro(String),
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_ident(w: &str) -> bool {
    w.starts_with(|c: char| c.is_alphabetic() || c == '_') && w.chars().all(is_ident_char)
}

/// Parses `layers.txt`: one `NAME: DEP DEP ...` per line, `#` comments.
fn parse_layers(text: &str) -> Result<Layers, String> {
    let mut layers = Layers::new();
    for (i, raw) in text.lines().enumerate() {
        let (n, line) = (i + 1, raw.split('#').next().unwrap_or("").trim());
        let malformed = || format!("layers.txt:{n}: expected `NAME: DEP DEP ...`, got `{raw}`");
        if line.is_empty() {
            continue;
        }
        let (name, deps) = line.split_once(':').ok_or_else(malformed)?;
        let (name, deps) = (name.trim(), deps.split_whitespace().map(String::from));
        let deps: BTreeSet<String> = deps.collect();
        if !is_ident(name) || !deps.iter().all(|d| is_ident(d)) {
            return Err(malformed());
        }
        if layers.insert(name.to_string(), deps).is_some() {
            return Err(format!("layers.txt:{n}: layer {name} is listed twice"));
        }
    }
    for (name, deps) in &layers {
        if let Some(dep) = deps.iter().find(|d| !layers.contains_key(*d)) {
            return Err(format!(
                "layers.txt: {name} uses {dep}, which is not a layer"
            ));
        }
    }
    Ok(layers)
}

/// Returns a cycle among the edges as `[a, b, ..., a]`, if there is one.
fn find_cycle(layers: &Layers) -> Option<Vec<String>> {
    fn visit<'a>(
        l: &'a str,
        layers: &'a Layers,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| *p == l) {
            let cycle = path[at..].iter().chain([&l]);
            return Some(cycle.map(|s| s.to_string()).collect());
        }
        if !done.insert(l) {
            return None;
        }
        path.push(l);
        let mut deps = layers[l].iter().filter(|d| *d != l); // a layer may use itself
        let cycle = deps.find_map(|d| visit(d, layers, path, done));
        path.pop();
        cycle
    }
    let mut done = BTreeSet::new();
    layers
        .keys()
        .find_map(|l| visit(l, layers, &mut Vec::new(), &mut done))
}

fn load_layers() -> Layers {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("layers.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let layers = parse_layers(&text).unwrap_or_else(|e| panic!("{e}"));
    if let Some(cycle) = find_cycle(&layers) {
        panic!("layers.txt has a cycle: {}", cycle.join(" -> "));
    }
    layers
}

/// Where the comment or string or char literal starting at `c[i]` ends, if one does.
fn skip_literal(c: &[char], i: usize) -> Option<usize> {
    let at = |j: usize| c.get(j).copied();
    // The end of the first `pat` at or after `from`, or the end of the input.
    let find = |from: usize, pat: &[char]| {
        let start = (from..c.len()).find(|&j| c[j..].starts_with(pat));
        start.map_or(c.len(), |j| j + pat.len())
    };
    match (c[i], at(i + 1), at(i + 2)) {
        ('/', Some('/'), _) => Some(find(i, &['\n'])),
        ('/', Some('*'), _) => {
            let (mut j, mut depth) = (i, 0); // block comments nest
            while j < c.len() && (j == i || depth > 0) {
                match (c[j], at(j + 1)) {
                    ('/', Some('*')) => (depth, j) = (depth + 1, j + 2),
                    ('*', Some('/')) => (depth, j) = (depth - 1, j + 2),
                    _ => j += 1,
                }
            }
            Some(j)
        }
        ('"', _, _) => {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            Some(j + 1)
        }
        ('b', Some('r'), _) => skip_literal(c, i + 1),
        ('r', Some('"' | '#'), _) => {
            let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
            let close: Vec<char> = ['"'].into_iter().chain(vec!['#'; hashes]).collect();
            (at(i + 1 + hashes) == Some('"')).then(|| find(i + 2 + hashes, &close))
        }
        ('\'', Some('\\'), _) => Some(find(i + 3, &['\''])),
        ('\'', Some(_), Some('\'')) => Some(i + 3),
        _ => None, // also a lifetime such as 'a
    }
}

/// Splits source into identifiers, `::` and single characters, each with its
/// line, leaving out whitespace, comments and string and char literals.
fn tokens(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let (mut out, mut i, mut line) = (Vec::new(), 0, 1);
    while i < c.len() {
        let (end, keep) = match skip_literal(&c, i) {
            Some(end) => (end.min(c.len()), false),
            None if is_ident_char(c[i]) => {
                let len = c[i..].iter().take_while(|&&ch| is_ident_char(ch)).count();
                (i + len, true)
            }
            None if c[i..].starts_with(&[':', ':']) => (i + 2, true),
            None => (i + 1, !c[i].is_whitespace()),
        };
        if keep {
            out.push((line, c[i..end].iter().collect()));
        }
        line += c[i..end].iter().filter(|&&ch| ch == '\n').count();
        i = end;
    }
    out
}

/// After `crate::`: the first segment of each path in `x::...` or `{x::..., {y, z::w}}`.
fn first_segments(t: &[Token], i: usize, out: &mut Vec<(usize, Found)>) {
    let Some((line, word)) = t.get(i) else { return };
    if word == "{" {
        first_segments(t, i + 1, out);
        let mut depth = 1;
        for (j, (_, w)) in t.iter().enumerate().skip(i + 1) {
            match w.as_str() {
                "," if depth == 1 => first_segments(t, j + 1, out),
                "{" => depth += 1,
                "}" if depth == 1 => return,
                "}" => depth -= 1,
                _ => {}
            }
        }
    } else if word == "*" || (is_ident(word) && word != "self") {
        out.push((*line, Found::Crate(word.clone())));
    }
}

/// Scans the source of a module `depth` levels below the crate root.
fn scan(src: &str, depth: usize) -> Vec<(usize, Found)> {
    let t = tokens(src);
    let word = |j: usize| t.get(j).map_or("", |(_, w)| w.as_str());
    let (mut found, mut i, mut exported) = (Vec::new(), 0, false);
    // For each open brace, whether it opened a `mod x { ... }`, which nests one level deeper.
    let (mut opened, mut in_mod) = (Vec::new(), false);
    while i < t.len() {
        match word(i) {
            "mod" => in_mod = true,
            ";" => in_mod = false,
            "{" => opened.push(std::mem::take(&mut in_mod)),
            "}" => _ = opened.pop(),
            "crate" if word(i + 1) == "::" => first_segments(&t, i + 2, &mut found),
            "macro_export" => exported = true,
            "macro_rules" if std::mem::take(&mut exported) && word(i + 1) == "!" => {
                found.push((t[i].0, Found::Macro(word(i + 2).to_string())));
            }
            "super" => {
                let (line, mut supers) = (t[i].0, 0);
                while word(i + 1) == "::" {
                    supers += 1;
                    if word(i + 2) != "super" {
                        break;
                    }
                    i += 2;
                }
                let nested = opened.iter().filter(|&&m| m).count();
                if supers > 0 && supers >= depth + nested {
                    found.push((line, Found::Climb(supers)));
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
    for path in entries.map(|entry| entry.expect("directory entry").path()) {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn layers_txt_is_a_valid_stack() {
    load_layers();
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let (layers, root) = (load_layers(), Path::new(env!("CARGO_MANIFEST_DIR")));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let (mut errors, mut modules, mut scanned) = (Vec::new(), BTreeSet::new(), Vec::new());
    let mut macros = BTreeMap::new();
    for path in &files {
        let shown = path.strip_prefix(root).unwrap().display().to_string();
        let parts: Vec<&str> = shown.split('/').skip(1).collect();
        if shown == "src/main.rs" || shown == "src/lib.rs" {
            continue; // the crate root
        }
        let layer = parts[0].strip_suffix(".rs").unwrap_or(parts[0]).to_string();
        if !layers.contains_key(&layer) && !modules.contains(&layer) {
            let module: String = shown.split_inclusive('/').take(2).collect();
            errors.push(format!("{module}: layer {layer} is not in layers.txt"));
        }
        let depth = parts.len() - usize::from(parts.last() == Some(&"mod.rs"));
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{shown}: {e}"));
        let found = scan(&text, depth);
        for (_, f) in &found {
            if let Found::Macro(name) = f {
                macros.insert(name.clone(), layer.clone()); // used as crate::name
            }
        }
        scanned.push((found, layer.clone(), shown));
        modules.insert(layer);
    }
    for (found, layer, shown) in &scanned {
        let Some(allowed) = layers.get(layer) else {
            continue;
        };
        for (line, found) in found {
            let error = match found {
                Found::Crate(name) => match macros.get(name).unwrap_or(name) {
                    dep if dep == layer || allowed.contains(dep) => continue,
                    dep if layers.contains_key(dep) => {
                        format!("{layer} uses {dep}, which layers.txt does not allow")
                    }
                    _ => format!("{layer} uses crate::{name}, which is not a layer"),
                },
                Found::Climb(n) => format!(
                    "{} climbs out of {layer} to the crate root; use a crate:: path",
                    vec!["super"; *n].join("::")
                ),
                Found::Macro(_) => continue,
            };
            errors.push(format!("{shown}:{line}: {error}"));
        }
    }
    for stale in layers.keys().filter(|l| !modules.contains(*l)) {
        errors.push(format!(
            "layers.txt: layer {stale} has no src/{stale}/ or src/{stale}.rs"
        ));
    }
    let hint = "move the code, or add the edge to layers.txt if it belongs there";
    assert!(
        errors.is_empty(),
        "layering errors:\n{}\n{hint}",
        errors.join("\n")
    );
}

/// Unit tests of the scanner and of the `layers.txt` parser, on strings.
mod parser {
    use super::*;

    fn uses(line: usize, layer: &str) -> (usize, Found) {
        (line, Found::Crate(layer.to_string()))
    }

    #[test]
    fn comments_and_literals_are_ignored() {
        let src = "// crate::a\n/* crate::b /* nested */ crate::c */ let s = \"crate::d \\\" e\";\n\
                   let r = br#\"crate::f \"# ; let q = '\"'; let t: &'a str = crate::g::X; // crate::h";
        assert_eq!(scan(src, 1), [uses(3, "g")]);
        let words = |src| tokens(src).into_iter().map(|(_, w)| w).collect::<Vec<_>>();
        assert_eq!(words("x // y"), ["x"]);
        assert_eq!(
            words("a // b\nc::d \"e\" /* f */ 'g' 'h"),
            ["a", "c", "::", "d", "'", "h"]
        );
    }

    #[test]
    fn grouped_imports_and_inline_paths() {
        let src = "use crate::{engine::X, tree::{inode::Ino, chunks}};\n\
                   fn f() { crate :: ops::mirror::MirrorFs::new() }\n\
                   use crate::{self, {sys, control::{a, b}},\n    fuse::*,}; pub(crate) fn g() {}";
        let want = [
            uses(1, "engine"),
            uses(1, "tree"),
            uses(2, "ops"),
            uses(3, "sys"),
        ];
        assert_eq!(scan(src, 1)[..4], want);
        assert_eq!(scan(src, 1)[4..], [uses(3, "control"), uses(4, "fuse")]);
        assert_eq!(scan("use crate::*;", 1), [uses(1, "*")]);
        let src = "#[macro_export]\nmacro_rules! m { () => { $crate::x::Y } }";
        assert_eq!(scan(src, 1), [(2, Found::Macro("m".into())), uses(2, "x")]);
    }

    #[test]
    fn super_may_not_reach_the_crate_root() {
        let src = "use super::x;\nmod tests { use super::*; }\npub(super) fn f() {}";
        assert_eq!(scan(src, 1), [(1, Found::Climb(1))]); // src/a.rs or src/a/mod.rs
        let src = "mod tests { use super::super::y; }\nuse super::super::x;";
        assert_eq!(scan(src, 2), [(2, Found::Climb(2))]); // src/a/b.rs
        assert_eq!(scan("use super::super::x;", 3), []); // src/a/b/c.rs
    }

    #[test]
    fn layers_txt_errors() {
        for (text, error) in [
            ("a\n", "layers.txt:1: expected `NAME: DEP DEP ...`, got `a`"),
            ("a: b c:\n", "layers.txt:1: expected"),
            ("a:\na: # again\n", "layers.txt:2: layer a is listed twice"),
            ("# x\na: b\n", "layers.txt: a uses b, which is not a layer"),
        ] {
            assert_eq!(parse_layers(text).unwrap_err()[..error.len()], *error);
        }
        let layers = parse_layers("a: b\nb: c a\nc:\n").unwrap();
        assert_eq!(find_cycle(&layers).unwrap(), ["a", "b", "a"]);
        let layers = parse_layers("a: a b # comment\nb:").unwrap();
        assert_eq!(find_cycle(&layers), None);
    }
}
