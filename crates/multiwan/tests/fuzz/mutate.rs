//! TOML mutations of `examples/*.toml` and the golden configs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::generate::{
    list, BOOLS, CHECK_KEYS, DURATIONS, FALLBACKS, GATEWAYS, LINK_KEYS, PORTS, PREFIXES, SETTINGS,
    SMALL, TARGETS,
};
use super::Tape;

/// `examples/*.toml` and `tests/golden/*.toml`: (name, text).
pub fn corpus() -> &'static [(String, String)] {
    static CORPUS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in [root.join("../../examples"), root.join("tests/golden")] {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            entries.sort();
            files.extend(entries);
        }
        assert!(files.len() >= 5, "corpus: {files:?}");
        files
            .into_iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect()
    })
}

/// Values a mutation may put in place of another.
fn any_value(t: &mut Tape) -> String {
    let pools: &[&[&str]] = &[
        SMALL, BOOLS, DURATIONS, FALLBACKS, PREFIXES, PORTS, GATEWAYS, TARGETS,
    ];
    let pool = pools[t.below(pools.len())];
    match t.below(6) {
        0 => list(t, pool, 3),
        1 => "{}".to_string(),
        2 => format!("{}", t.next()),
        _ => t.pick(pool).to_string(),
    }
}

const NOISE: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    "#",
    "\n",
    "\"",
    "'",
    "\\",
    " ",
    "\t",
    "0x",
    ".",
    "é",
    "\u{0}",
    "[[rules]]\n",
    "[links.x]\n",
    "\"\"\"",
    "-",
    "inf",
    "nan",
    "1e999",
];

/// Corpus file `index` with a few mutations from the tape.
pub fn mutate(index: usize, t: &mut Tape) -> String {
    let mut lines: Vec<String> = corpus()[index].1.lines().map(String::from).collect();
    for _ in 0..1 + t.below(4) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        let i = t.below(n);
        match t.below(9) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(t.below(n + 1), l);
            }
            2 => lines.swap(i, t.below(n)),
            3 | 4 => {
                if let Some((key, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{key}= {}", any_value(t));
                }
            }
            5 => {
                let (key, values) =
                    [SETTINGS, LINK_KEYS, CHECK_KEYS].map(|k| k[t.below(k.len())])[t.below(3)];
                lines.insert(i, format!("{key} = {}", t.pick(values)));
            }
            6 => {
                let l = &lines[i];
                let cut = t.below(l.chars().count() + 1);
                lines[i] = l.chars().take(cut).collect();
            }
            7 => {
                let l = &lines[i];
                let at = t.below(l.chars().count() + 1);
                let (a, b): (String, String) =
                    (l.chars().take(at).collect(), l.chars().skip(at).collect());
                lines[i] = format!("{a}{}{b}", t.pick(NOISE));
            }
            _ => {
                // A number nudged: ids, priorities and weights at their edges.
                let nudged = lines[i]
                    .split_once("= ")
                    .filter(|(_, v)| v.trim().parse::<i64>().is_ok())
                    .map(|(k, v)| {
                        let v: i64 = v.trim().parse().unwrap();
                        let d = [-1i64, 1, 255, -256, 1 << 32][t.below(5)];
                        format!("{k}= {}", v.saturating_add(d))
                    });
                if let Some(l) = nudged {
                    lines[i] = l;
                }
            }
        }
    }
    lines.join("\n") + "\n"
}
