//! The book in `docs/` (mdBook) builds, and none of its links is broken: mdbook builds it into a
//! temporary directory, and every relative `href` and `src` of the generated HTML, with its
//! `#anchor`, must lead to a file of the book and an `id` in that file. The links of `README.md`
//! are checked too: those into `docs/src/` against the generated pages and their anchors, the
//! others against the files of the repository. Every page under `docs/src` must be in the book
//! (named in `SUMMARY.md`). The test fails listing every broken link.
//!
//! mdbook comes from `ANODE_MDBOOK`, else `target/test-tools/mdbook/bin/mdbook`, where
//! `scripts/test.sh` installs the pinned version.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The repository's root (the workspace).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The mdbook binary: `ANODE_MDBOOK`, else the one `scripts/test.sh` installs.
fn mdbook() -> PathBuf {
    if let Some(path) = std::env::var_os("ANODE_MDBOOK") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ANODE_MDBOOK is {}, which is not a file: point it at an mdbook binary, or unset it \
             and run scripts/test.sh, which installs the pinned mdbook",
            path.display()
        );
        return path;
    }
    let installed = root().join("target/test-tools/mdbook/bin/mdbook");
    assert!(
        installed.is_file(),
        "mdbook is missing, so the book in docs/ cannot be built and its links checked: run \
         scripts/test.sh (it installs the pinned mdbook into target/test-tools/mdbook), or \
         install mdbook (`cargo install --locked mdbook`) and set ANODE_MDBOOK to its path"
    );
    installed
}

#[test]
fn the_book_builds_and_no_link_in_it_or_in_the_readme_is_broken() {
    let root = root();
    let out = tempfile::tempdir().expect("a temporary directory");
    let built = Command::new(mdbook())
        .arg("build")
        .arg(root.join("docs"))
        .arg("--dest-dir")
        .arg(out.path())
        .output()
        .expect("mdbook runs");
    assert!(
        built.status.success(),
        "mdbook could not build docs/ ({}):\n{}{}",
        built.status,
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    let book = Book::read(out.path());
    assert!(
        book.pages.contains_key(Path::new("index.html")),
        "mdbook wrote no index.html into {}",
        out.path().display()
    );
    let mut broken = Vec::new();
    for (page, html) in &book.pages {
        for link in attribute_values(html, &["href", "src"]) {
            if let Err(why) = book.check(page, &link) {
                broken.push(format!("{}: {link}: {why}", where_from(&root, page)));
            }
        }
    }
    broken.extend(readme_links(&root, &book));
    broken.extend(pages_outside_the_book(&root.join("docs/src"), &book));

    assert!(
        broken.is_empty(),
        "{} broken link(s) in the book or README.md:\n  {}",
        broken.len(),
        broken.join("\n  ")
    );
}

/// The generated book: every HTML page (relative to the output directory) with its text, the
/// anchors (`id`s and `name`s) of each, and every other file.
struct Book {
    dir: PathBuf,
    pages: BTreeMap<PathBuf, String>,
    anchors: BTreeMap<PathBuf, BTreeSet<String>>,
    files: BTreeSet<PathBuf>,
}

impl Book {
    fn read(dir: &Path) -> Book {
        let mut book = Book {
            dir: dir.to_path_buf(),
            pages: BTreeMap::new(),
            anchors: BTreeMap::new(),
            files: BTreeSet::new(),
        };
        let mut todo = vec![dir.to_path_buf()];
        while let Some(next) = todo.pop() {
            for entry in std::fs::read_dir(&next).expect("the book's directory is readable") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    todo.push(path);
                    continue;
                }
                let relative = path
                    .strip_prefix(dir)
                    .expect("inside the book")
                    .to_path_buf();
                if path.extension().is_some_and(|e| e == "html") {
                    let html = std::fs::read_to_string(&path).expect("a page is UTF-8");
                    let ids = attribute_values(&html, &["id", "name"])
                        .into_iter()
                        .map(|id| percent_decoded(&id))
                        .collect();
                    book.anchors.insert(relative.clone(), ids);
                    book.pages.insert(relative.clone(), html);
                }
                book.files.insert(relative);
            }
        }
        book
    }

    /// Whether `link`, found in `page`, leads somewhere that exists.
    fn check(&self, page: &Path, link: &str) -> Result<(), String> {
        if is_external(link) {
            return Ok(());
        }
        let (path, fragment) = split_link(link);
        let target = if path.is_empty() {
            page.to_path_buf()
        } else if let Some(absolute) = path.strip_prefix('/') {
            // From the book's root, as when it is served at the root of a site.
            normalised(Path::new(&percent_decoded(absolute)))
                .ok_or("it leads outside the book".to_owned())?
        } else {
            // A page with `<base href="/">` (the 404 page) resolves from the book's root.
            let from = match base_href(&self.pages[page]) {
                Some(base) if base.starts_with('/') => PathBuf::from(base.trim_start_matches('/')),
                Some(base) => page.parent().unwrap_or(Path::new("")).join(base),
                None => page.parent().unwrap_or(Path::new("")).to_path_buf(),
            };
            normalised(&from.join(percent_decoded(path)))
                .ok_or("it leads outside the book".to_owned())?
        };
        self.check_target(&target, fragment)
    }

    /// Whether `target` (relative to the book's root) exists and has the anchor `fragment`.
    fn check_target(&self, target: &Path, fragment: &str) -> Result<(), String> {
        let target = if target.as_os_str().is_empty() || self.dir.join(target).is_dir() {
            target.join("index.html")
        } else {
            target.to_path_buf()
        };
        if !self.files.contains(&target) {
            return Err(format!("no file {} in the book", target.display()));
        }
        let fragment = percent_decoded(fragment);
        if fragment.is_empty() {
            return Ok(());
        }
        match self.anchors.get(&target) {
            Some(ids) if ids.contains(&fragment) => Ok(()),
            Some(_) => Err(format!("{} has no anchor #{fragment}", target.display())),
            // Anchors into files that are not pages (a script, a style sheet) are not checked.
            None => Ok(()),
        }
    }
}

/// The broken links of `README.md`: into `docs/src/` they must lead to a page of the built book
/// (and its anchor), anywhere else to a file or directory of the repository.
fn readme_links(root: &Path, book: &Book) -> Vec<String> {
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md is readable");
    let mut broken = Vec::new();
    for link in markdown_links(&readme) {
        if is_external(&link) {
            continue;
        }
        let (path, fragment) = split_link(&link);
        if path.is_empty() {
            // An anchor within the README itself: GitHub makes those, not mdbook.
            continue;
        }
        let Some(path) = normalised(Path::new(&percent_decoded(path))) else {
            broken.push(format!(
                "README.md: {link}: it leads outside the repository"
            ));
            continue;
        };
        let result = match path.strip_prefix("docs/src") {
            Ok(page) if page.extension().is_some_and(|e| e == "md") => {
                book.check_target(&page.with_extension("html"), fragment)
            }
            _ if root.join(&path).exists() => Ok(()),
            _ => Err(format!("no file {} in the repository", path.display())),
        };
        if let Err(why) = result {
            broken.push(format!("README.md: {link}: {why}"));
        }
    }
    broken
}

/// Pages under `docs/src` that `SUMMARY.md` does not name, so that the book leaves them out.
fn pages_outside_the_book(src: &Path, book: &Book) -> Vec<String> {
    let mut missing = Vec::new();
    let mut todo = vec![src.to_path_buf()];
    while let Some(next) = todo.pop() {
        for entry in std::fs::read_dir(&next).expect("docs/src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let relative = path.strip_prefix(src).expect("inside docs/src");
            if path.extension().is_some_and(|e| e == "md")
                && relative != Path::new("SUMMARY.md")
                && !book.pages.contains_key(&relative.with_extension("html"))
            {
                missing.push(format!(
                    "docs/src/{}: not in the book (name it in docs/src/SUMMARY.md)",
                    relative.display()
                ));
            }
        }
    }
    missing
}

/// Where a built page comes from, for messages: its Markdown source, or the page mdbook made.
fn where_from(root: &Path, page: &Path) -> String {
    let source = Path::new("docs/src").join(page.with_extension("md"));
    if root.join(&source).is_file() {
        format!("{} (built as {})", source.display(), page.display())
    } else {
        format!("{} (made by mdbook)", page.display())
    }
}

/// Every value of the named attributes in `html`, by plain scanning (` name="value"`).
fn attribute_values(html: &str, names: &[&str]) -> Vec<String> {
    let mut values = Vec::new();
    for name in names {
        let needle = format!("{name}=\"");
        let mut rest = html;
        while let Some(at) = rest.find(&needle) {
            let preceded_by_space = rest[..at]
                .chars()
                .next_back()
                .is_some_and(char::is_whitespace);
            rest = &rest[at + needle.len()..];
            let Some(end) = rest.find('"') else { break };
            if preceded_by_space {
                values.push(html_unescaped(&rest[..end]));
            }
            rest = &rest[end + 1..];
        }
    }
    values
}

/// The targets of the inline links of a Markdown text (`[text](target)`), outside code.
fn markdown_links(markdown: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Code spans hold no links: drop them first.
        let mut text = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                text.push_str(part);
            }
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            links.push(target.trim_matches(['<', '>']).to_owned());
            rest = &rest[end + 1..];
        }
    }
    links
}

/// A link with a scheme (`https:`, `mailto:`, `data:`) or to another host (`//host/…`).
fn is_external(link: &str) -> bool {
    if link.starts_with("//") {
        return true;
    }
    match link.find(':') {
        Some(colon) => {
            let scheme = &link[..colon];
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// A link's path and its fragment (without the `#`); a query is dropped.
fn split_link(link: &str) -> (&str, &str) {
    let (rest, fragment) = link.split_once('#').unwrap_or((link, ""));
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    (path, fragment)
}

/// The `href` of the page's `<base>` element, if it has one.
fn base_href(html: &str) -> Option<String> {
    let at = html.find("<base ")?;
    let tag = &html[at..at + html[at..].find('>')?];
    attribute_values(tag, &["href"]).into_iter().next()
}

/// `path` with `.` and `..` resolved, or `None` if it climbs above where it starts.
fn normalised(path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// `%XX` escapes decoded (as UTF-8); anything else as it is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The few character references an attribute value may hold.
fn html_unescaped(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[test]
fn the_link_checker_reads_links_as_a_browser_would() {
    let html = r#"<a href="a.html#x">a</a> <img src='q.png'> <p data-href="no"> <h2 id="x">"#;
    assert_eq!(attribute_values(html, &["href"]), ["a.html#x"]);
    assert_eq!(attribute_values(html, &["id"]), ["x"]);
    assert_eq!(split_link("a/b.html?v=1#top"), ("a/b.html", "top"));
    assert_eq!(split_link("#only"), ("", "only"));
    for external in [
        "https://x.org/",
        "mailto:a@b",
        "//cdn/x.js",
        "data:image/png;base64,x",
    ] {
        assert!(is_external(external), "{external}");
    }
    for relative in ["a.html", "../b.html#c:d", "#x", "docs/src/a.md"] {
        assert!(!is_external(relative), "{relative}");
    }
    assert_eq!(
        normalised(Path::new("a/./b/../c.html")),
        Some(PathBuf::from("a/c.html"))
    );
    assert_eq!(normalised(Path::new("../a.html")), None);
    assert_eq!(percent_decoded("caf%C3%A9%2x"), "café%2x");
    let markdown =
        "see [the book](docs/src/a.md#b) and `[not](a link)`\n```\n[no](x)\n```\n[c](<d.md>)";
    assert_eq!(markdown_links(markdown), ["docs/src/a.md#b", "d.md"]);
}
