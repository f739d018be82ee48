//! Just enough of a BTF reader to find struct member offsets in the running
//! kernel (`/sys/kernel/btf/vmlinux`). The eBPF programs read kernel structs
//! through offsets that user space resolves here at start-up, so the object
//! is not tied to the kernel it was built on.
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF data (bad magic or truncated header)")]
    BadHeader,
    #[error("BTF type section is truncated or malformed at type {0}")]
    Malformed(u32),
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    #[error("member {1} not found in struct {0} (kernel BTF)")]
    NoMember(String, String),
    #[error("member {1} of struct {0} is a bitfield, not addressable")]
    Bitfield(String, String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    Composite {
        name_off: u32,
        /// `sizeof` in bytes.
        size: u32,
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: resolve through.
    Alias(u32),
    Other,
}

/// Parsed BTF: composite types and their members, plus the string section.
pub struct Btf {
    types: Vec<Type>, // index = type id (0 = void)
    strings: Vec<u8>,
    by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// The type and string sections of raw BTF, from its header.
fn sections(data: &[u8]) -> Result<(&[u8], &[u8]), BtfError> {
    if u16_at(data, 0) != Some(MAGIC) {
        return Err(BtfError::BadHeader);
    }
    let field = |o| {
        u32_at(data, o)
            .map(|v| v as usize)
            .ok_or(BtfError::BadHeader)
    };
    let (hdr_len, type_off, type_len) = (field(4)?, field(8)?, field(12)?);
    let (str_off, str_len) = (field(16)?, field(20)?);
    let section = |off: usize, len: usize| {
        let start = hdr_len.checked_add(off).ok_or(BtfError::BadHeader)?;
        let end = start.checked_add(len).ok_or(BtfError::BadHeader)?;
        data.get(start..end).ok_or(BtfError::BadHeader)
    };
    Ok((section(type_off, type_len)?, section(str_off, str_len)?))
}

/// Reads the type record at `*o` (type `id`), moving `*o` past it and
/// past its kind's trailing data.
fn read_type(b: &[u8], o: &mut usize, id: u32) -> Result<Type, BtfError> {
    let bad = || BtfError::Malformed(id);
    let name_off = u32_at(b, *o).ok_or_else(bad)?;
    let info = u32_at(b, *o + 4).ok_or_else(bad)?;
    let size_or_type = u32_at(b, *o + 8).ok_or_else(bad)?;
    *o += 12;
    let kind = (info >> 24) & 0x1f;
    let vlen = (info & 0xffff) as usize;
    let kflag = info >> 31 == 1;
    // Bytes that follow the common record, by kind.
    let trailing = match kind {
        KIND_PTR | KIND_FWD | KIND_FUNC | KIND_FLOAT => 0,
        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
            return Ok(Type::Alias(size_or_type));
        }
        KIND_STRUCT | KIND_UNION => {
            let members = read_members(b, o, vlen, kflag).ok_or_else(bad)?;
            return Ok(Type::Composite {
                name_off,
                size: size_or_type,
                members,
            });
        }
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        _ => return Err(bad()),
    };
    *o += trailing;
    Ok(Type::Other)
}

/// The `vlen` members of a struct or union at `*o`.
fn read_members(b: &[u8], o: &mut usize, vlen: usize, kflag: bool) -> Option<Vec<Member>> {
    let mut members = Vec::with_capacity(vlen);
    for _ in 0..vlen {
        let name_off = u32_at(b, *o)?;
        let type_id = u32_at(b, *o + 4)?;
        let m_off = u32_at(b, *o + 8)?;
        *o += 12;
        let (bit_offset, bitfield_size) = if kflag {
            (m_off & 0xff_ffff, m_off >> 24)
        } else {
            (m_off, 0)
        };
        members.push(Member {
            name_off,
            type_id,
            bit_offset,
            bitfield_size,
        });
    }
    Some(members)
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file("/sys/kernel/btf/vmlinux")
    }

    pub fn from_file(path: &str) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let (types_bytes, strings) = sections(data)?;
        let mut types = vec![Type::Other];
        let mut o = 0usize;
        while o < types_bytes.len() {
            let t = read_type(types_bytes, &mut o, types.len() as u32)?;
            types.push(t);
        }
        let mut btf = Btf {
            types,
            strings: strings.to_vec(),
            by_name: HashMap::new(),
        };
        btf.by_name = btf.index_by_name();
        Ok(btf)
    }

    /// Composite types by name: the first complete definition of each.
    fn index_by_name(&self) -> HashMap<String, u32> {
        let mut by_name = HashMap::new();
        for (id, t) in self.types.iter().enumerate() {
            if let Type::Composite {
                name_off, members, ..
            } = t
            {
                let name = self.str_at(*name_off);
                if !name.is_empty() && !members.is_empty() {
                    by_name.entry(name.to_string()).or_insert(id as u32);
                }
            }
        }
        by_name
    }

    fn str_at(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias(next)) => id = *next,
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// struct/union members (as `mm_struct` and `inode` use them).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        match self.find_member(id, member, 0)? {
            Some(bits) => Ok(bits / 8),
            None => Err(BtfError::NoMember(name.into(), member.into())),
        }
    }

    /// `sizeof(struct name)` in bytes.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        match self.types.get(id as usize) {
            Some(Type::Composite { size, .. }) => Ok(*size),
            _ => Err(BtfError::NoStruct(name.into())),
        }
    }

    /// Byte offset of a member path (`["f_path", "dentry"]` in `file`):
    /// each step's struct is the previous member's type, named by `via`.
    pub fn path_offset(&self, steps: &[(&str, &str)]) -> Result<u32, BtfError> {
        let mut off = 0;
        for (name, member) in steps {
            off += self.member_offset(name, member)?;
        }
        Ok(off)
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Result<Option<u32>, BtfError> {
        if depth > 8 {
            return Ok(None);
        }
        let Some(Type::Composite { members, .. }) = self.types.get(self.resolve(id) as usize)
        else {
            return Ok(None);
        };
        for m in members {
            let mname = self.str_at(m.name_off);
            if mname == member {
                if m.bitfield_size != 0 || m.bit_offset % 8 != 0 {
                    return Err(BtfError::Bitfield(String::new(), member.into()));
                }
                return Ok(Some(m.bit_offset));
            }
            if mname.is_empty() {
                if let Some(inner) = self.find_member(m.type_id, member, depth + 1)? {
                    return Ok(Some(m.bit_offset + inner));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: struct outer { int a; union { int x; int y; }; long b; }
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0x\0y\0b\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let push = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int
        push(&mut t, s("int"));
        push(&mut t, KIND_INT << 24);
        push(&mut t, 4);
        push(&mut t, 32);
        // 2: anonymous union { x at 0, y at 0 }
        push(&mut t, 0);
        push(&mut t, (KIND_UNION << 24) | 2);
        push(&mut t, 4);
        for n in ["x", "y"] {
            push(&mut t, s(n));
            push(&mut t, 1);
            push(&mut t, 0);
        }
        // 3: struct outer { a@0, <anon>@32, b@64 }
        push(&mut t, s("outer"));
        push(&mut t, (KIND_STRUCT << 24) | 3);
        push(&mut t, 16);
        for (n, ty, off) in [("a", 1, 0), ("", 2, 32), ("b", 1, 64)] {
            push(&mut t, if n.is_empty() { 0 } else { s(n) });
            push(&mut t, ty);
            push(&mut t, off);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&sample()).expect("parse");
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(..))
        ));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(matches!(Btf::parse(b""), Err(BtfError::BadHeader)));
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0]).is_err());
        let mut s = sample();
        s.truncate(s.len() - 20);
        assert!(Btf::parse(&s).is_err());
    }
}
