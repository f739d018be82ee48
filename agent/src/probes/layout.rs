//! The pinned state's layout: what a map pinned by one agent must look like
//! for another agent to reuse it.
//!
//! The pin directory is named after a hash of every pinned map's definition
//! (type, key size, value size, flags, max entries) and of the programs'
//! instructions, so an agent built with other maps or other programs never
//! opens a previous agent's pins. On reuse, each pinned map is also checked
//! against the object's definition as the kernel reports it; a mismatch (a
//! hash collision, a pin left by hand) is a clean, logged rebuild.
use std::{collections::BTreeMap, path::Path, sync::OnceLock};

use aya::maps::{MapError, MapInfo};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("parsing the eBPF object")]
    Parse(#[source] aya_obj::ParseError),
    #[error("map {0} missing from the object")]
    MissingMap(String),
    #[error("reading a pinned map's definition")]
    Pin(#[source] MapError),
}

/// A map definition as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapDef {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapDef {
    /// The definition of a map pinned at `path`, from the kernel.
    pub fn of_pin(path: &Path) -> Result<MapDef, LayoutError> {
        let info = MapInfo::from_pin(path).map_err(LayoutError::Pin)?;
        Ok(MapDef {
            map_type: info
                .map_type()
                .map(|t| t as u32)
                .map_err(LayoutError::Pin)?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }
}

/// The layout of one eBPF object: its pinned maps' definitions and the hash
/// that names its pin directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub maps: BTreeMap<String, MapDef>,
    pub hash: u64,
}

/// 64-bit FNV-1a: stable across Rust versions (unlike `DefaultHasher`),
/// which matters because two agent builds must agree on the name.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
}

/// Computes the layout of `object` for the maps named in `pinned`.
pub fn layout_of(object: &[u8], pinned: &[&str]) -> Result<Layout, LayoutError> {
    let obj = aya_obj::Object::parse(object).map_err(LayoutError::Parse)?;
    let mut h = Fnv::new();
    let mut maps = BTreeMap::new();
    let mut names: Vec<&str> = pinned.to_vec();
    names.sort_unstable();
    for name in names {
        let m = obj
            .maps
            .get(name)
            .ok_or_else(|| LayoutError::MissingMap(name.to_string()))?;
        let d = MapDef {
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
            flags: m.map_flags(),
        };
        h.bytes(name.as_bytes());
        for v in [d.map_type, d.key_size, d.value_size, d.max_entries, d.flags] {
            h.u32(v);
        }
        maps.insert(name.to_string(), d);
    }
    // The programs: their names and instructions, as compiled (before
    // relocation, so the hash does not depend on the kernel).
    let mut progs: Vec<(&String, &aya_obj::Program)> = obj.programs.iter().collect();
    progs.sort_by(|a, b| a.0.cmp(b.0));
    for (name, p) in progs {
        h.bytes(name.as_bytes());
        if let Some(f) = obj.functions.get(&p.function_key()) {
            for insn in &f.instructions {
                // SAFETY: bpf_insn is a plain 8-byte repr(C) struct.
                let b: &[u8; 8] =
                    unsafe { &*(insn as *const aya_obj::generated::bpf_insn as *const [u8; 8]) };
                h.bytes(b);
            }
        }
    }
    Ok(Layout { maps, hash: h.0 })
}

static LAYOUT: OnceLock<Result<Layout, LayoutError>> = OnceLock::new();

/// The layout of the embedded eBPF object (computed once).
pub fn embedded() -> Result<&'static Layout, &'static LayoutError> {
    LAYOUT
        .get_or_init(|| layout_of(super::EBPF_OBJECT, super::PINNED_MAPS))
        .as_ref()
}

/// The pinned maps in `dir` whose definition differs from `layout`'s (or
/// cannot be read): name and why. Missing pins are fine (they are created).
pub fn mismatches(dir: &Path, layout: &Layout) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, want) in &layout.maps {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        match MapDef::of_pin(&path) {
            Ok(have) if have == *want => {}
            Ok(have) => out.push((
                name.clone(),
                format!("pinned {have:?}, this agent needs {want:?}"),
            )),
            Err(e) => out.push((
                name.clone(),
                format!("unreadable pin: {}", super::attach::chain(&e)),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_layout_covers_every_pinned_map_and_is_stable() {
        let l = embedded().expect("layout of the embedded object");
        assert_eq!(l.maps.len(), super::super::PINNED_MAPS.len());
        let again = layout_of(super::super::EBPF_OBJECT, super::super::PINNED_MAPS).unwrap();
        assert_eq!(l.hash, again.hash);
        // Another set of pinned maps is another layout.
        let fewer = layout_of(super::super::EBPF_OBJECT, &["VERDICTS"]).unwrap();
        assert_ne!(l.hash, fewer.hash);
        assert!(layout_of(super::super::EBPF_OBJECT, &["NO_SUCH_MAP"]).is_err());
        assert!(layout_of(b"not an object", &["VERDICTS"]).is_err());
    }
}
