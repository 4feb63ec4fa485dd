//! Loads and attaches one variant of a hook, and says why not in an [`AttachError`] (which
//! `memtrace probes` prints, with the kernel's errno where it gave one).

use std::io;

use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, FEntry, KProbe, PerfEvent, ProgramError, RawTracePoint, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};

use crate::kernel::{
    btf::KernelBtf,
    hooks::{Attach, Variant},
    tracefs::{Field, Tracefs, TracefsError},
};

/// Why a variant did not attach. The text is the one-line reason `memtrace probes` prints.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("not the --variant asked for")]
    NotAsked,
    #[error("program {0} is not in the eBPF object")]
    NotInObject(&'static str),
    #[error("no kernel BTF")]
    NoBtf,
    #[error("{0} is not in the kernel's BTF (inlined or renamed?)")]
    NotInBtf(&'static str),
    #[error("this kernel has no kprobes (CONFIG_KPROBES is off)")]
    NoKprobes,
    #[error("tracepoint {category}:{name} does not exist on this kernel")]
    TracepointMissing {
        category: &'static str,
        name: &'static str,
    },
    #[error(
        "{event}'s first argument is not a struct {strukt} * on this kernel (older tracepoint prototype)"
    )]
    OldPrototype {
        event: &'static str,
        strukt: &'static str,
    },
    #[error("record field {field} is not at offset {offset}, size {size}")]
    FieldMoved {
        field: &'static str,
        offset: u32,
        size: u32,
    },
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("unknown software event {0}")]
    UnknownEvent(&'static str),
    #[error("online CPUs: {0}")]
    OnlineCpus(#[source] io::Error),
    #[error(
        "refused by the kernel ({source}): missing privileges or a kernel lockdown/policy forbids this program type"
    )]
    Refused { source: io::Error },
    /// The log is long: `RUST_LOG=debug` prints it.
    #[error("rejected by the verifier ({source}); RUST_LOG=debug shows the log")]
    Verifier { source: io::Error, log: String },
    #[error("load failed: {source}")]
    Load { source: io::Error },
    #[error("`{call}` failed ({source})")]
    Attach { call: &'static str, source: io::Error },
    #[error("perf_event_open on CPU {cpu}: {source}")]
    PerfEventOpen { cpu: u32, source: Box<AttachError> },
    #[error(transparent)]
    Program(ProgramError),
}

impl AttachError {
    /// The kernel's errno, where the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { source }
            | Self::Verifier { source, .. }
            | Self::Load { source }
            | Self::Attach { source, .. }
            | Self::OnlineCpus(source) => source.raw_os_error(),
            Self::PerfEventOpen { source, .. } => source.errno(),
            _ => None,
        }
    }
}

impl From<ProgramError> for AttachError {
    fn from(e: ProgramError) -> Self {
        match e {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                let log = verifier_log.to_string();
                log::debug!("verifier log:\n{log}");
                match io_error.raw_os_error() {
                    Some(libc::EPERM) => Self::Refused { source: io_error },
                    Some(libc::EINVAL) | Some(libc::EACCES) => Self::Verifier {
                        source: io_error,
                        log,
                    },
                    _ => Self::Load { source: io_error },
                }
            }
            ProgramError::SyscallError(s) => Self::Attach {
                call: s.call,
                source: s.io_error,
            },
            other => Self::Program(other),
        }
    }
}

/// What attaching needs to know about the kernel.
pub(super) struct AttachEnv<'a> {
    pub btf: Option<&'a Btf>,
    pub kbtf: Option<&'a KernelBtf>,
    pub tracefs: &'a Tracefs,
    pub fault_period: u32,
    /// Tracepoint programs attached so far. A program fed by several variants (`with`) is
    /// attached once: the kernel refuses the same program twice on one tracepoint (EEXIST,
    /// bpf_prog_array_copy), which would make `memtrace probes` call the later variants broken.
    pub tracepoints_attached: std::cell::RefCell<Vec<&'static str>>,
}

/// tp_btf programs that read their first argument as a `struct <name> *`: older kernels pass
/// something else there (mark_victim: `int pid` before 6.8), which the verifier would reject.
const TYPED_FIRST_ARG: &[(&str, &str)] = &[
    ("mark_victim", "task_struct"),
    ("count_memcg_events", "mem_cgroup"),
];

/// Loads and attaches one variant, then the program it feeds (`with`), if any. In that order:
/// a fed program attached before a failing feeder would stay attached while the next variant
/// attaches it again, and report every kill twice.
pub(super) fn attach(ebpf: &mut Ebpf, variant: &Variant, env: &AttachEnv<'_>) -> Result<(), AttachError> {
    attach_one(ebpf, variant, env)?;
    match variant.with {
        Some(fed) => attach_one(ebpf, fed, env),
        None => Ok(()),
    }
}

fn attach_one(ebpf: &mut Ebpf, variant: &Variant, env: &AttachEnv<'_>) -> Result<(), AttachError> {
    let program = ebpf
        .program_mut(variant.program)
        .ok_or(AttachError::NotInObject(variant.program))?;
    match variant.attach {
        Attach::TpBtf { event } => {
            let btf = env.btf.ok_or(AttachError::NoBtf)?;
            if let (Some(kbtf), Some((_, strukt))) =
                (env.kbtf, TYPED_FIRST_ARG.iter().find(|(e, _)| *e == event))
                && !kbtf.tracepoint_first_arg_is(event, strukt)
            {
                return Err(AttachError::OldPrototype { event, strukt });
            }
            let p: &mut BtfTracePoint = program.try_into()?;
            p.load(event, btf)?;
            p.attach()?;
        }
        Attach::Fentry { function } => {
            let btf = env.btf.ok_or(AttachError::NoBtf)?;
            let kbtf = env.kbtf.ok_or(AttachError::NoBtf)?;
            if !kbtf.has_function(function) {
                return Err(AttachError::NotInBtf(function));
            }
            let p: &mut FEntry = program.try_into()?;
            p.load(function, btf)?;
            p.attach()?;
        }
        Attach::Kprobe { function } => {
            if !env.tracefs.has_file("kprobe_events") {
                return Err(AttachError::NoKprobes);
            }
            // Every kprobe program reads struct fields at offsets from BTF: without it they
            // would attach and read nothing (mark_oom_victim's would hide the tracepoint).
            let kbtf = env.kbtf.ok_or(AttachError::NoBtf)?;
            if !kbtf.has_function(function) {
                return Err(AttachError::NotInBtf(function));
            }
            let p: &mut KProbe = program.try_into()?;
            // One kprobe program serves several function names (renamed across kernels).
            if p.fd().is_err() {
                p.load()?;
            }
            p.attach(function, 0)?;
        }
        Attach::RawTp { event, first_arg } => {
            let kbtf = env.kbtf.ok_or(AttachError::NoBtf)?;
            if !kbtf.tracepoint_first_arg_is(event, first_arg) {
                return Err(AttachError::OldPrototype {
                    event,
                    strukt: first_arg,
                });
            }
            let p: &mut RawTracePoint = program.try_into()?;
            p.load()?;
            p.attach(event)?;
        }
        Attach::Tracepoint {
            category,
            name,
            fixed,
        } => {
            if !env.tracefs.has_event(category, name) {
                return Err(AttachError::TracepointMissing { category, name });
            }
            if !fixed.is_empty() {
                let fields = env.tracefs.fields(category, name)?;
                for &(field, offset, size) in fixed {
                    if fields.get(field) != Some(&Field { offset, size }) {
                        return Err(AttachError::FieldMoved { field, offset, size });
                    }
                }
            }
            if env.tracepoints_attached.borrow().contains(&variant.program) {
                return Ok(());
            }
            let p: &mut TracePoint = program.try_into()?;
            // Loaded already when an earlier attach of it failed.
            if p.fd().is_err() {
                p.load()?;
            }
            p.attach(category, name)?;
            env.tracepoints_attached.borrow_mut().push(variant.program);
        }
        Attach::PerfEvent { event } => {
            let config = match event {
                "page-faults" => PerfEventConfig::Software(SoftwareEvent::PageFaults),
                other => return Err(AttachError::UnknownEvent(other)),
            };
            let p: &mut PerfEvent = program.try_into()?;
            p.load()?;
            let cpus = online_cpus().map_err(|(_, e)| AttachError::OnlineCpus(e))?;
            for cpu in cpus {
                p.attach(
                    config,
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(u64::from(env.fault_period)),
                    false,
                )
                .map_err(|e| AttachError::PerfEventOpen {
                    cpu,
                    source: Box::new(e.into()),
                })?;
            }
        }
    }
    Ok(())
}
