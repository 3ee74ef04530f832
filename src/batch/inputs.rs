//! Turning batch INPUT arguments (files, directories, globs, `@list.txt`, `-`) into a list of
//! files, each with the relative path its outputs mirror under the output directory; the naming
//! rule that keeps two inputs off one output (`assign_outputs`, also used by `transcribe`); and
//! reading an input without trusting it (`read_input`: regular files only, bounded size).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{BufRead, Read};
use std::path::{Component, Path, PathBuf};

/// Extensions a directory walk picks up (explicit files are taken whatever their name).
pub const AUDIO_EXTENSIONS: &[&str] = &[
    "wav", "wave", "flac", "mp3", "ogg", "oga", "opus", "m4a", "mp4", "aac", "mka", "mkv", "webm",
    "aif", "aiff", "caf",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    /// Where its outputs go, relative to the output directory (never absolute, never `..`).
    pub relative: PathBuf,
    /// The longer name `assign_outputs` switches to when `relative` collides with another
    /// input's: for a file found under a directory argument, that argument's contained path
    /// joined with `relative`; otherwise `relative` itself.
    pub qualified: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0}: no such file or directory")]
    Missing(String),
    #[error("{path}: {msg}")]
    Unreadable { path: String, msg: String },
    #[error("bad glob pattern `{0}`: {1}")]
    Pattern(String, String),
    #[error("`{0}` matched no files")]
    NoMatch(String),
    #[error("{first} and {second} would both write {output} in the output directory; rename one, or transcribe them in separate runs")]
    Collision {
        first: String,
        second: String,
        output: String,
    },
}

/// `--shard I/N`: one worker's share of a backlog that N workers (a Kubernetes Indexed Job's pods,
/// or machines given the same inputs) split without talking to each other. An input belongs to
/// shard `I` when a hash of the path its outputs take under the output directory is `I` modulo
/// `N`: every worker computes the same split from the same input list, each file lands in exactly
/// one shard, and a file keeps its shard when others are added to or removed from the backlog (so
/// a re-run after the backlog grew resumes, as an unsharded run does). Shards are numbered from 0,
/// as `JOB_COMPLETION_INDEX` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not I/N (e.g. 0/4: the first of four shards)"))?;
        let index: u64 = i
            .trim()
            .parse()
            .map_err(|_| format!("shard index `{i}` is not a whole number"))?;
        let count: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("shard count `{n}` is not a whole number"))?;
        if count == 0 {
            return Err("the shard count must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} must be below the count {count} (shards are numbered from 0)"
            ));
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether the input whose outputs go to `relative` is this shard's.
    pub fn takes(&self, relative: &Path) -> bool {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(relative.as_os_str().as_encoded_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        u64::from_be_bytes(first) % self.count == self.index
    }

    /// This shard's inputs, in their order.
    pub fn select(&self, inputs: Vec<InputFile>) -> Vec<InputFile> {
        inputs
            .into_iter()
            .filter(|f| self.takes(&f.relative))
            .collect()
    }
}

/// The output names of every input must differ: `relative` + each of `suffixes` (e.g. `.srt`,
/// `.whisperd.json`). Where two inputs' names collide, each of them that has a different
/// `qualified` name takes it (repeated until nothing changes, so the result depends only on the
/// inputs and their order, and a re-run with the same arguments finds the same outputs). A
/// collision that is left is an error naming both inputs.
pub fn assign_outputs(inputs: &mut [InputFile], suffixes: &[&str]) -> Result<(), InputError> {
    let names = |rel: &Path| -> Vec<OsString> {
        suffixes
            .iter()
            .map(|s| {
                let mut n = rel.as_os_str().to_owned();
                n.push(s);
                n
            })
            .collect()
    };
    // Inputs whose names collide with an earlier input's, and the first such pair.
    let collisions = |inputs: &[InputFile]| {
        let mut owner: HashMap<OsString, usize> = HashMap::new();
        let mut hit = HashSet::new();
        let mut first = None;
        for (i, f) in inputs.iter().enumerate() {
            for n in names(&f.relative) {
                match owner.get(&n) {
                    Some(&j) if j != i => {
                        hit.insert(i);
                        hit.insert(j);
                        first.get_or_insert((j, i, n));
                    }
                    Some(_) => {}
                    None => {
                        owner.insert(n, i);
                    }
                }
            }
        }
        (hit, first)
    };
    loop {
        let (hit, first) = collisions(inputs);
        let Some((a, b, name)) = first else {
            return Ok(());
        };
        let mut changed = false;
        for i in hit {
            let f = &mut inputs[i];
            if f.relative != f.qualified {
                f.relative = f.qualified.clone();
                changed = true;
            }
        }
        if !changed {
            return Err(InputError::Collision {
                first: inputs[a].path.display().to_string(),
                second: inputs[b].path.display().to_string(),
                output: PathBuf::from(name).display().to_string(),
            });
        }
    }
}

/// Why an input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a regular file ({0}); only regular files are read")]
    NotRegular(&'static str),
    #[error("{} is over the --max-input-mb limit of {} MB", size.map(|s| format!("{:.1} MB", s as f64 / MB as f64)).unwrap_or_else(|| "the input".into()), limit / MB)]
    TooLarge { size: Option<u64>, limit: u64 },
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes in the MB of `--max-input-mb`.
pub const MB: u64 = 1 << 20;

fn kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Read a whole input file of at most `limit` bytes. Anything but a regular file (a FIFO, which
/// would block on open, a device such as /dev/zero, which never ends, a directory) is refused
/// from its metadata before it is opened; the read itself is bounded too, for files that grow.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: Some(meta.len()),
            limit,
        });
    }
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    // Should the path have been swapped for a FIFO since, do not block opening it.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut open, libc::O_NONBLOCK);
    let file = open.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(meta.file_type())));
    }
    read_bounded(file, limit, meta.len())
}

/// Read `r` to its end, refusing more than `limit` bytes (reads at most `limit + 1`).
pub fn read_bounded(r: impl Read, limit: u64, size_hint: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::with_capacity(size_hint.min(limit) as usize);
    r.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { size: None, limit });
    }
    Ok(bytes)
}

/// Make sure outputs can be written under `dir` before any work: create it, then create and
/// remove a probe file in it.
pub fn check_output_dir(dir: &Path) -> Result<(), String> {
    let fail =
        |e: std::io::Error| format!("output directory {} is not writable: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".whisperd-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

pub fn is_audio(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A path made safe to join under the output directory: no root, no prefix, no `..`, no `.`.
pub fn contained(path: &Path) -> PathBuf {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// Expand every argument. `stdin` supplies the list for `-`.
pub fn expand(args: &[String], stdin: &mut dyn BufRead) -> Result<Vec<InputFile>, InputError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for arg in args {
        if arg == "-" {
            for line in read_lines(stdin, "-")? {
                add_path(Path::new(&line), &line, &mut out, &mut seen)?;
            }
        } else if let Some(list) = arg.strip_prefix('@') {
            let f = std::fs::File::open(list).map_err(|e| InputError::Unreadable {
                path: list.into(),
                msg: e.to_string(),
            })?;
            for line in read_lines(&mut std::io::BufReader::new(f), list)? {
                add_path(Path::new(&line), &line, &mut out, &mut seen)?;
            }
        } else if arg.contains(['*', '?', '[']) && !Path::new(arg).exists() {
            let paths =
                glob::glob(arg).map_err(|e| InputError::Pattern(arg.clone(), e.to_string()))?;
            let before = out.len();
            for p in paths.flatten() {
                add_path(&p, &p.to_string_lossy(), &mut out, &mut seen)?;
            }
            if out.len() == before {
                return Err(InputError::NoMatch(arg.clone()));
            }
        } else {
            add_path(Path::new(arg), arg, &mut out, &mut seen)?;
        }
    }
    Ok(out)
}

fn read_lines(r: &mut dyn BufRead, name: &str) -> Result<Vec<String>, InputError> {
    let mut lines = Vec::new();
    for line in r.lines() {
        let line = line.map_err(|e| InputError::Unreadable {
            path: name.into(),
            msg: e.to_string(),
        })?;
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') {
            lines.push(t.to_string());
        }
    }
    Ok(lines)
}

fn add_path(
    path: &Path,
    shown: &str,
    out: &mut Vec<InputFile>,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), InputError> {
    let meta = std::fs::metadata(path).map_err(|_| InputError::Missing(shown.to_string()))?;
    if meta.is_dir() {
        let mut visited = HashSet::new();
        walk(path, path, out, seen, &mut visited);
    } else {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if seen.insert(key) {
            out.push(InputFile {
                path: path.to_path_buf(),
                relative: contained(path),
                qualified: contained(path),
            });
        }
    }
    Ok(())
}

/// Recursive walk, sorted for a stable order; `visited` (canonical directories) breaks symlink loops.
fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<InputFile>,
    seen: &mut HashSet<PathBuf>,
    visited: &mut HashSet<PathBuf>,
) {
    let Ok(canon) = std::fs::canonicalize(dir) else {
        return;
    };
    if !visited.insert(canon) {
        tracing::warn!(dir = %dir.display(), "directory already visited (symlink loop?): skipped");
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "cannot read directory: skipped");
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk(root, &p, out, seen, visited);
        } else if is_audio(&p) {
            if !p.is_file() {
                // A FIFO would block the run and a device never ends: not read, said once.
                tracing::warn!(path = %p.display(), "not a regular file: skipped");
                continue;
            }
            let key = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
            if seen.insert(key) {
                let rel = p
                    .strip_prefix(root)
                    .map(contained)
                    .unwrap_or_else(|_| contained(&p));
                out.push(InputFile {
                    qualified: contained(root).join(&rel),
                    path: p,
                    relative: rel,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_a_backlog_disjointly_and_completely() {
        let s: Shard = "1/4".parse().unwrap();
        assert_eq!((s.index, s.count, s.to_string()), (1, 4, "1/4".to_string()));
        for bad in ["4/4", "1/0", "1", "a/2", "1/b", "-1/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad} parsed");
        }
        let files: Vec<InputFile> = (0..1000)
            .map(|i| {
                let p = PathBuf::from(format!("calls/2026/{i:04}.opus"));
                InputFile {
                    path: p.clone(),
                    relative: p.clone(),
                    qualified: p,
                }
            })
            .collect();
        let shards: Vec<Vec<InputFile>> = (0..4)
            .map(|i| Shard { index: i, count: 4 }.select(files.clone()))
            .collect();
        // every file in exactly one shard, and no shard far from a quarter
        let mut seen: Vec<&PathBuf> = shards.iter().flatten().map(|f| &f.relative).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 1000);
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 1000);
        assert!(
            shards.iter().all(|s| (200..300).contains(&s.len())),
            "{:?}",
            shards.iter().map(Vec::len).collect::<Vec<_>>()
        );
        // a file keeps its shard when the backlog grows
        let one = Shard { index: 2, count: 4 };
        let more: Vec<InputFile> = files
            .iter()
            .cloned()
            .chain((1000..1100).map(|i| {
                let p = PathBuf::from(format!("calls/2027/{i}.opus"));
                InputFile {
                    path: p.clone(),
                    relative: p.clone(),
                    qualified: p,
                }
            }))
            .collect();
        let grown = one.select(more);
        assert!(shards[2].iter().all(|f| grown.contains(f)));
        assert!(Shard { index: 0, count: 1 }.select(files.clone()).len() == 1000);
    }

    #[test]
    fn outputs_never_escape() {
        assert_eq!(
            contained(Path::new("/etc/passwd.wav")),
            PathBuf::from("etc/passwd.wav")
        );
        assert_eq!(
            contained(Path::new("../../x/./a.wav")),
            PathBuf::from("x/a.wav")
        );
        assert_eq!(contained(Path::new("a/b.wav")), PathBuf::from("a/b.wav"));
    }

    #[test]
    fn directories_lists_and_stdin() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("in");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.wav"), b"x").unwrap();
        std::fs::write(root.join("sub/b.FLAC"), b"x").unwrap();
        std::fs::write(root.join("notes.txt"), b"x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&root, root.join("sub/loop")).unwrap();
        let files = expand(
            &[root.to_string_lossy().into_owned()],
            &mut std::io::empty(),
        )
        .unwrap();
        let rel: Vec<_> = files
            .iter()
            .map(|f| f.relative.to_string_lossy().into_owned())
            .collect();
        assert_eq!(rel, vec!["a.wav", "sub/b.FLAC"]);

        let list = d.path().join("list.txt");
        std::fs::write(
            &list,
            format!("# comment\n{}\n", root.join("notes.txt").display()),
        )
        .unwrap();
        let files = expand(&[format!("@{}", list.display())], &mut std::io::empty()).unwrap();
        assert_eq!(files.len(), 1);
        let mut stdin = std::io::Cursor::new(format!("{}\n", root.join("a.wav").display()));
        assert_eq!(expand(&["-".into()], &mut stdin).unwrap().len(), 1);
        let pattern = format!("{}/*.wav", root.display());
        assert_eq!(expand(&[pattern], &mut std::io::empty()).unwrap().len(), 1);
        assert!(matches!(
            expand(&["/no/such/file.wav".into()], &mut std::io::empty()),
            Err(InputError::Missing(_))
        ));
    }

    fn input(path: &str, relative: &str, qualified: &str) -> InputFile {
        InputFile {
            path: path.into(),
            relative: relative.into(),
            qualified: qualified.into(),
        }
    }

    fn relatives(inputs: &[InputFile]) -> Vec<String> {
        inputs
            .iter()
            .map(|f| f.relative.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn colliding_outputs_take_their_qualified_names_or_are_refused() {
        let sfx = [".srt", ".whisperd.json"];
        // Distinct names stay as they are.
        let mut v = vec![
            input("d1/x.wav", "x.wav", "d1/x.wav"),
            input("d2/y.wav", "y.wav", "d2/y.wav"),
        ];
        assign_outputs(&mut v, &sfx).unwrap();
        assert_eq!(relatives(&v), ["x.wav", "y.wav"]);
        // Only the colliding ones move, and a move that collides again moves the next one.
        let mut v = vec![
            input("d1/x.wav", "x.wav", "d1/x.wav"),
            input("d2/x.wav", "x.wav", "d2/x.wav"),
            input("d1/x.wav-explicit", "d2/x.wav", "d2/x.wav"),
            input("d3/y.wav", "y.wav", "d3/y.wav"),
        ];
        let err = assign_outputs(&mut v, &sfx).unwrap_err().to_string();
        assert!(
            err.contains("d2/x.wav") && err.contains("d1/x.wav-explicit"),
            "{err}"
        );
        let mut v = vec![
            input("d1/x.wav", "x.wav", "d1/x.wav"),
            input("d1/sub/d2/x.wav", "d2/x.wav", "d1/d2/x.wav"),
            input("d2/x.wav", "x.wav", "d2/x.wav"),
        ];
        assign_outputs(&mut v, &sfx).unwrap();
        assert_eq!(relatives(&v), ["d1/x.wav", "d1/d2/x.wav", "d2/x.wav"]);
        // `/a/x.wav` and `a/x.wav`: nothing left to tell them apart.
        let mut v = vec![
            input("/a/x.wav", "a/x.wav", "a/x.wav"),
            input("a/x.wav", "a/x.wav", "a/x.wav"),
        ];
        let err = assign_outputs(&mut v, &sfx).unwrap_err().to_string();
        assert!(
            err.contains("/a/x.wav and a/x.wav") && err.contains("a/x.wav.srt"),
            "{err}"
        );
        // Names collide across suffixes too (`x` + `.verbose.json` = `x.verbose` + `.json`).
        let mut v = vec![
            input("x", "x", "x"),
            input("x.verbose", "x.verbose", "x.verbose"),
        ];
        assert!(assign_outputs(&mut v, &[".verbose.json", ".json"]).is_err());
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.wav");
        std::fs::write(&f, vec![7u8; 100]).unwrap();
        assert_eq!(read_input(&f, 100).unwrap().len(), 100);
        assert!(matches!(
            read_input(&f, 99),
            Err(ReadError::TooLarge {
                size: Some(100),
                ..
            })
        ));
        assert!(matches!(
            read_input(d.path(), 100),
            Err(ReadError::NotRegular("a directory"))
        ));
        #[cfg(unix)]
        {
            let e = read_input(Path::new("/dev/zero"), 1 << 20).unwrap_err();
            assert!(e
                .to_string()
                .starts_with("not a regular file (a character device)"));
        }
        assert!(matches!(
            read_bounded(std::io::repeat(0), 10, 0),
            Err(ReadError::TooLarge { size: None, .. })
        ));
        assert_eq!(read_bounded(&[1u8; 10][..], 10, 0).unwrap().len(), 10);
    }

    #[test]
    fn the_output_dir_is_created_and_probed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.wav");
        std::fs::write(&f, b"x").unwrap();
        let e = check_output_dir(&f.join("sub")).unwrap_err();
        assert!(e.contains("a.wav/sub"), "{e}");
        check_output_dir(&d.path().join("new/dir")).unwrap();
        assert_eq!(
            std::fs::read_dir(d.path().join("new/dir")).unwrap().count(),
            0
        );
    }
}
