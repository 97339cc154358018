//! Where kernels' object code is kept between runs, so a run links code instead of
//! compiling it: a cache on disk ([`DiskCache`]), an artifact's code before it
//! ([`Layered`]), and the record `hyb compile` puts into an artifact ([`Recording`]).
//!
//! A cache entry is one file named by the kernel's key (which covers its MLIR, views, the
//! host and this build): the magic `HYBO`, a little-endian `u32` format version, the key,
//! the SHA-256 of the object and its length as a little-endian `u64`, then the object.
//! Entries are written atomically ([`crate::atomic`]), so a concurrent run reads an old
//! entry, a new one or none, never a torn one; an entry that fails any check is ignored
//! and written again.

use hyb_compiler::artifact::ObjectCode;
use hyb_compiler::codegen::cpu::Objects;
use hyb_compiler::codegen::object::Host;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const MAGIC: &[u8; 4] = b"HYBO";
const FORMAT: u32 = 1;
/// Keys are SHA-256 digests in hex.
const KEY: usize = 64;
const HEADER: usize = 4 + 4 + KEY + 32 + 8;

/// Object code in files under one folder.
pub struct DiskCache {
    dir: Option<PathBuf>,
    /// Set on the first failed write: the cache is off for the rest of the run.
    broken: AtomicBool,
}

impl DiskCache {
    /// The cache the environment asks for: none with `HYB_CACHE=off`, else in
    /// `$HYB_CACHE_DIR`, `$XDG_CACHE_HOME/hyb` or `~/.cache/hyb`, the first that is set.
    pub fn from_env() -> DiskCache {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if std::env::var("HYB_CACHE").is_ok_and(|v| v == "off") {
            return DiskCache::off();
        }
        let dir = var("HYB_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("hyb")))
            .or_else(|| var("HOME").map(|h| h.join(".cache/hyb")));
        DiskCache { dir, broken: AtomicBool::new(false) }
    }

    /// A cache in `dir`.
    pub fn at(dir: &Path) -> DiskCache {
        DiskCache { dir: Some(dir.to_path_buf()), broken: AtomicBool::new(false) }
    }

    /// No cache: nothing is found, nothing kept.
    pub fn off() -> DiskCache {
        DiskCache { dir: None, broken: AtomicBool::new(false) }
    }

    fn folder(&self) -> Option<&Path> {
        self.dir.as_deref().filter(|_| !self.broken.load(Ordering::Relaxed))
    }

    fn entry(dir: &Path, key: &str) -> Option<PathBuf> {
        // A key names a file only if it is what this module writes: hex digits.
        (key.len() == KEY && key.bytes().all(|b| b.is_ascii_hexdigit())).then(|| dir.join(format!("{key}.o")))
    }
}

impl Objects for DiskCache {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let path = DiskCache::entry(self.folder()?, key)?;
        decode(key, &std::fs::read(path).ok()?)
    }

    fn put(&self, key: &str, object: &[u8]) {
        let Some(dir) = self.folder() else { return };
        let Some(path) = DiskCache::entry(dir, key) else { return };
        let written = std::fs::create_dir_all(dir).and_then(|()| crate::atomic::write(&path, &encode(key, object)));
        if let Err(e) = written {
            if !self.broken.swap(true, Ordering::Relaxed) {
                eprintln!("warning: cannot write the kernel cache in {}: {e}; running without it", dir.display());
            }
        }
    }
}

/// A cache entry's bytes.
fn encode(key: &str, object: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + object.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&Sha256::digest(object));
    out.extend_from_slice(&(object.len() as u64).to_le_bytes());
    out.extend_from_slice(object);
    out
}

/// The object in a cache entry for `key`, if the entry is whole and is `key`'s.
fn decode(key: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let header = bytes.get(..HEADER)?;
    let format = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let length = u64::from_le_bytes(header[HEADER - 8..].try_into().ok()?);
    let object = &bytes[HEADER..];
    let whole = &header[..4] == MAGIC
        && format == FORMAT
        && &header[8..8 + KEY] == key.as_bytes()
        && object.len() as u64 == length
        && Sha256::digest(object).as_slice() == &header[8 + KEY..HEADER - 8];
    whole.then(|| object.to_vec())
}

/// Two stores in order: what the first holds is used, else the second's; what is compiled
/// goes to the second (the first is an artifact, which a run does not change).
pub struct Layered<'a> {
    pub first: &'a dyn Objects,
    pub then: &'a dyn Objects,
}

impl Objects for Layered<'_> {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.first.get(key).or_else(|| self.then.get(key))
    }

    fn put(&self, key: &str, object: &[u8]) {
        self.then.put(key, object)
    }
}

/// What runs an artifact uses: its object code, then `cache`. Code built for another host
/// is not used, and a note says that its kernels compile here.
pub fn artifact_then<'a>(code: &'a ObjectCode, cache: &'a DiskCache) -> Layered<'a> {
    if !code.kernels.is_empty() && !code.runs_here() {
        eprintln!(
            "note: the artifact's object code was built for another host ({} differ): compiling its kernels here",
            code.host.differences(Host::current()).join(", ")
        );
    }
    Layered { first: code, then: cache }
}

/// A store that also records every object used or compiled through it (what an artifact
/// needs to carry).
pub struct Recording<'a> {
    inner: &'a dyn Objects,
    kept: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl<'a> Recording<'a> {
    pub fn new(inner: &'a dyn Objects) -> Recording<'a> {
        Recording { inner, kept: Mutex::default() }
    }

    /// The objects recorded, by key.
    pub fn into_objects(self) -> BTreeMap<String, Vec<u8>> {
        self.kept.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    fn keep(&self, key: &str, object: &[u8]) {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string(), object.to_vec());
    }
}

impl Objects for Recording<'_> {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let found = self.inner.get(key)?;
        // Kept even if it turns out not to link: the compiled object then replaces it.
        self.keep(key, &found);
        Some(found)
    }

    fn put(&self, key: &str, object: &[u8]) {
        self.keep(key, object);
        self.inner.put(key, object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn an_entry_reads_back_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::at(dir.path());
        assert_eq!(cache.get(KEY_A), None);
        cache.put(KEY_A, b"object code");
        assert_eq!(cache.get(KEY_A).as_deref(), Some(b"object code".as_slice()));
        assert_eq!(cache.get(KEY_B), None);
        // A key that is not a digest never becomes a path.
        cache.put("../escape", b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_damaged_or_misplaced_entry_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::at(dir.path());
        cache.put(KEY_A, b"object code");
        let path = dir.path().join(format!("{KEY_A}.o"));
        let whole = std::fs::read(&path).unwrap();
        for damaged in [whole[..whole.len() - 1].to_vec(), whole[..10].to_vec(), Vec::new(), {
            let mut flipped = whole.clone();
            *flipped.last_mut().unwrap() ^= 1;
            flipped
        }] {
            std::fs::write(&path, &damaged).unwrap();
            assert_eq!(cache.get(KEY_A), None);
        }
        // Another key's entry under this key's name.
        std::fs::write(&path, encode(KEY_B, b"object code")).unwrap();
        assert_eq!(cache.get(KEY_A), None);
        cache.put(KEY_A, b"object code");
        assert_eq!(cache.get(KEY_A).as_deref(), Some(b"object code".as_slice()));
    }

    #[cfg(unix)]
    #[test]
    fn an_unwritable_folder_turns_the_cache_off() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the folder should be: nothing can be created under it, even as root.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"").unwrap();
        let cache = DiskCache::at(&blocked.join("cache"));
        cache.put(KEY_A, b"object code");
        assert!(cache.broken.load(Ordering::Relaxed));
        assert_eq!(cache.get(KEY_A), None);
    }

    #[test]
    fn layers_read_in_order_and_write_to_the_second() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, then) = (DiskCache::at(a.path()), DiskCache::at(b.path()));
        first.put(KEY_A, b"first");
        then.put(KEY_A, b"then");
        let layered = Layered { first: &first, then: &then };
        assert_eq!(layered.get(KEY_A).as_deref(), Some(b"first".as_slice()));
        layered.put(KEY_B, b"new");
        assert_eq!((first.get(KEY_B), then.get(KEY_B).as_deref()), (None, Some(b"new".as_slice())));
        let recording = Recording::new(&layered);
        recording.get(KEY_A);
        recording.put(KEY_B, b"newer");
        let kept = recording.into_objects();
        assert_eq!(kept.keys().collect::<Vec<_>>(), [KEY_A, KEY_B]);
        assert_eq!(kept[KEY_A], b"first");
    }
}
