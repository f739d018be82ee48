//! The programs as data: one row per eBPF program (its name in the object,
//! the hook id its events carry, how it attaches, its role and the pin
//! name of its link), and one routine that attaches any row. A new hook is
//! one eBPF function, one row here and, for a new record, one decode arm
//! (`event::decode`).
use agent_common::hook;
use aya::{
    programs::{links::FdLink, BtfTracePoint, Lsm, Program, ProgramError, TracePoint},
    Btf, Ebpf,
};

use super::{Enforcement, Hook, HookChoice};

/// How a program attaches to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A BTF-typed raw tracepoint (`tp_btf/<name>`).
    TpBtf { name: &'static str },
    /// A classic tracepoint (`tracepoint/<category>/<name>`).
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// A BPF LSM hook (`lsm/<hook>`), called only where `bpf` is an active LSM.
    Lsm { hook: &'static str },
}

/// What a program is for: the agent attaches the first exec-event source
/// the kernel (and `--exec-hook`) accepts, in table order, and the
/// enforcer where BPF LSM is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Emits exec events (and kills by signal in enforce mode).
    ExecEvents(Hook),
    /// Refuses denied execs before the point of no return.
    Enforcer(Enforcement),
}

/// One eBPF program.
#[derive(Debug, Clone, Copy)]
pub struct ProgramSpec {
    /// The program's name in the object (its function name).
    pub program: &'static str,
    /// The `agent_common::hook` id its events carry.
    pub hook: u32,
    pub attach: Attach,
    pub role: Role,
    /// The name its link is pinned under (fail-closed mode). The exec
    /// sources share one: exactly one of them is attached.
    pub link: &'static str,
}

impl ProgramSpec {
    /// `tp_btf/sched_process_exec`: how the kernel and the logs name it.
    pub fn describe(&self) -> String {
        match self.attach {
            Attach::TpBtf { name } => format!("tp_btf/{name}"),
            Attach::Tracepoint { category, name } => format!("tracepoint/{category}/{name}"),
            Attach::Lsm { hook } => format!("lsm/{hook}"),
        }
    }
}

/// Every program of the object, exec-event sources in order of preference.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        program: "bprm_check",
        hook: hook::LSM,
        attach: Attach::Lsm {
            hook: "bprm_check_security",
        },
        role: Role::Enforcer(Enforcement::Lsm),
        link: "lsm_link",
    },
    ProgramSpec {
        program: "exec_btf",
        hook: hook::TP_BTF,
        attach: Attach::TpBtf {
            name: "sched_process_exec",
        },
        role: Role::ExecEvents(Hook::TpBtf),
        link: "exec_link",
    },
    ProgramSpec {
        program: "exec_tp",
        hook: hook::TRACEPOINT,
        attach: Attach::Tracepoint {
            category: "sched",
            name: "sched_process_exec",
        },
        role: Role::ExecEvents(Hook::Tracepoint),
        link: "exec_link",
    },
];

/// The rows of one role kind, in table order.
pub fn exec_sources() -> impl Iterator<Item = (&'static ProgramSpec, Hook)> {
    PROGRAMS.iter().filter_map(|p| match p.role {
        Role::ExecEvents(h) => Some((p, h)),
        Role::Enforcer(_) => None,
    })
}

/// The enforcer rows, in table order.
pub fn enforcers() -> impl Iterator<Item = (&'static ProgramSpec, Enforcement)> {
    PROGRAMS.iter().filter_map(|p| match p.role {
        Role::Enforcer(e) => Some((p, e)),
        Role::ExecEvents(_) => None,
    })
}

impl HookChoice {
    /// Whether `--exec-hook` lets the agent try this exec hook.
    pub fn allows(self, h: Hook) -> bool {
        match self {
            HookChoice::Auto => true,
            HookChoice::TpBtf => h == Hook::TpBtf,
            HookChoice::Tracepoint => h == Hook::Tracepoint,
        }
    }

    /// The `--exec-hook` value, for "not tried" messages (clap's name for
    /// it; a unit test keeps the two equal).
    pub fn flag(self) -> &'static str {
        match self {
            HookChoice::Auto => "auto",
            HookChoice::TpBtf => "tp-btf",
            HookChoice::Tracepoint => "tracepoint",
        }
    }
}

/// Why one program could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no kernel BTF")]
    NoBtf,
    #[error("program missing from the object")]
    Missing,
    #[error("{step}")]
    Program {
        step: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("link is not a bpf_link (kernel too old to pin it)")]
    NotFdLink(#[source] aya::programs::links::LinkError),
    #[error("not tried (--exec-hook {0})")]
    NotTried(&'static str),
}

fn step(step: &'static str) -> impl FnOnce(ProgramError) -> AttachError {
    move |source| AttachError::Program { step, source }
}

/// The program `name` as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, AttachError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(AttachError::Missing)?
        .try_into()
        .map_err(step("program type"))
}

/// Loads (through the verifier) and attaches one program of the table.
pub fn attach(
    ebpf: &mut Ebpf,
    spec: &ProgramSpec,
    kbtf: Option<&Btf>,
) -> Result<FdLink, AttachError> {
    match spec.attach {
        Attach::Lsm { hook } => {
            let btf = kbtf.ok_or(AttachError::NoBtf)?;
            let p: &mut Lsm = program(ebpf, spec.program)?;
            p.load(hook, btf).map_err(step("load"))?;
            let id = p.attach().map_err(step("attach"))?;
            Ok(p.take_link(id).map_err(step("take link"))?.into())
        }
        Attach::TpBtf { name } => {
            let btf = kbtf.ok_or(AttachError::NoBtf)?;
            let p: &mut BtfTracePoint = program(ebpf, spec.program)?;
            p.load(name, btf).map_err(step("load"))?;
            let id = p.attach().map_err(step("attach"))?;
            Ok(p.take_link(id).map_err(step("take link"))?.into())
        }
        Attach::Tracepoint { category, name } => {
            let p: &mut TracePoint = program(ebpf, spec.program)?;
            p.load().map_err(step("load"))?;
            let id = p.attach(category, name).map_err(step("attach"))?;
            let link = p.take_link(id).map_err(step("take link"))?;
            FdLink::try_from(link).map_err(AttachError::NotFdLink)
        }
    }
}

/// An error and the errors behind it, outermost first.
pub fn sources<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// An error with its sources, `a: b: c`, for logs and fallback reasons.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    sources(e)
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_hook_flags_are_claps_names() {
        use clap::ValueEnum;
        for h in HookChoice::value_variants() {
            let v = h.to_possible_value().expect("a value");
            assert_eq!(h.flag(), v.get_name());
        }
    }

    #[test]
    fn every_program_of_the_object_has_one_row() {
        let obj =
            aya_obj::Object::parse(super::super::EBPF_OBJECT).expect("the embedded eBPF object");
        let mut in_object: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
        let mut in_table: Vec<&str> = PROGRAMS.iter().map(|p| p.program).collect();
        in_object.sort_unstable();
        in_table.sort_unstable();
        assert_eq!(in_object, in_table);
    }

    #[test]
    fn exec_sources_are_tried_tp_btf_first_and_filtered_by_the_flag() {
        let order: Vec<Hook> = exec_sources().map(|(_, h)| h).collect();
        assert_eq!(order, [Hook::TpBtf, Hook::Tracepoint]);
        let hooks: Vec<u32> = exec_sources().map(|(p, _)| p.hook).collect();
        assert_eq!(hooks, [hook::TP_BTF, hook::TRACEPOINT]);
        for (choice, want) in [
            (HookChoice::Auto, vec![Hook::TpBtf, Hook::Tracepoint]),
            (HookChoice::TpBtf, vec![Hook::TpBtf]),
            (HookChoice::Tracepoint, vec![Hook::Tracepoint]),
        ] {
            let got: Vec<Hook> = exec_sources()
                .map(|(_, h)| h)
                .filter(|h| choice.allows(*h))
                .collect();
            assert_eq!(got, want, "{choice:?}");
        }
        let e: Vec<Enforcement> = enforcers().map(|(_, e)| e).collect();
        assert_eq!(e, [Enforcement::Lsm]);
        assert_eq!(PROGRAMS[0].describe(), "lsm/bprm_check_security");
    }

    #[test]
    fn error_chains_are_rendered_whole() {
        let io = std::io::Error::from_raw_os_error(libc::EPERM);
        let e = AttachError::Program {
            step: "load",
            source: ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_prog_load",
                io_error: io,
            }),
        };
        let s = chain(&e);
        assert!(s.starts_with("load: "), "{s}");
        assert!(s.contains("Operation not permitted"), "{s}");
    }
}
