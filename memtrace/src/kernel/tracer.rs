//! Loads the embedded eBPF object with the running kernel's layouts, attaches the first
//! working variant of each hook (see [`crate::kernel::hooks`]), and hands out the OOM ring buffer.
//! Dropping the [`Tracer`] detaches and unloads everything: memtrace pins nothing, so even a
//! SIGKILLed daemon leaves nothing behind once its fds close.

use std::io;

use aya::{
    Btf, Ebpf, EbpfLoader, Endianness,
    maps::{Array, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{Program, ProgramError},
};
use memtrace_common::{
    charge::ChargeConfig,
    counters,
    layout::{CgroupMkdirTpLayout, KernelLayout, MarkVictimTpLayout},
    memcg_stat::MemcgStatLayout,
};
use tokio::io::unix::AsyncFd;

use crate::{
    cgroup::{CgroupVersion, MemoryHierarchy},
    charges::maps::ChargeMaps,
    kernel::attach::AttachEnv,
    kernel::btf::{BtfError, KernelBtf},
    kernel::hooks::{ForcedVariant, HOOKS, HookId, HookStatus, Variant},
    kernel::oom_path::{CallPaths, OomPathRanges},
    kernel::privileges::{MissingCapabilities, Privileges},
    kernel::tracefs::{Tracefs, TracefsError},
};

/// The eBPF object built by build.rs (aya-build), embedded: one binary to ship.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error(transparent)]
    Privileges(#[from] MissingCapabilities),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("no variant of required hook {hook} could attach: {reasons}")]
    RequiredHook { hook: HookId, reasons: String },
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer with the runtime: {0}")]
    Poll(#[source] io::Error),
    #[error("no charge-path hook could attach on this kernel (see `memtrace probes`)")]
    NoChargeHook,
}

#[derive(Debug, Clone)]
pub struct TracerOptions {
    /// The memory cgroup hierarchy, detected once by the command (`None`: not mounted).
    pub hierarchy: Option<MemoryHierarchy>,
    /// Load and attach the OOM hooks (`top` and `hotspots` read no OOM ring: they leave them out).
    pub oom: bool,
    pub forced: Vec<ForcedVariant>,
    /// OOM ring buffer size in bytes (a power-of-two multiple of the page size).
    pub oom_ring_bytes: Option<u32>,
    /// Try every variant, not just up to the first that works (`memtrace probes`).
    pub try_all: bool,
    /// Charge accounting (the charge-path hooks); `None`: OOM hooks only.
    pub charges: Option<ChargeOptions>,
}

impl Default for TracerOptions {
    fn default() -> Self {
        Self {
            hierarchy: None,
            oom: true,
            forced: vec![],
            oom_ring_bytes: None,
            try_all: false,
            charges: None,
        }
    }
}

impl TracerOptions {
    fn cgroup_v1(&self) -> bool {
        self.hierarchy
            .as_ref()
            .is_some_and(|h| h.version == CgroupVersion::V1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeOptions {
    /// Exact mode: one stack sample every this many charged pages per CPU (charge events on
    /// the memcg event hooks); 0: no stacks.
    /// Sampled mode: 0 means no stacks, anything else a stack with each sample.
    pub sample_every: u32,
    /// Count every charge (a program on the memcg event hook, about 2 runs per page fault)
    /// instead of sampling one page fault in `fault_period`.
    pub exact: bool,
    /// Sampled mode: page faults per sample, per CPU.
    pub fault_period: u32,
}

impl ChargeOptions {
    /// Exact mode with a stack every `sample_every` charged pages per CPU: the kernel's charge
    /// path too, for the commands that show stacks (`top`'s drill-down, `hotspots`).
    pub fn exact_with_stacks(sample_every: u32) -> Self {
        Self {
            sample_every,
            exact: true,
            ..Self::default()
        }
    }
}

/// Sampled mode's default period: cheap enough to leave on (BENCHMARKS.md §1).
pub const DEFAULT_FAULT_PERIOD: u32 = 256;

impl Default for ChargeOptions {
    fn default() -> Self {
        Self {
            sample_every: 64,
            exact: false,
            fault_period: DEFAULT_FAULT_PERIOD,
        }
    }
}

/// Sums of the per-CPU kernel counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    /// mark_victim program runs (one per killed task).
    pub oom_seen: u64,
    /// Records lost because the OOM ring buffer was full.
    pub oom_ringbuf_full: u64,
    /// Records sent with some fields missing after a failed kernel read.
    pub oom_read_errors: u64,
    /// oom_kill_process runs, and their records lost to a full OOM ring buffer.
    pub oom_ctx_seen: u64,
    pub oom_ctx_ringbuf_full: u64,
    /// cgroup_mkdir records lost to a full buffer (paths then come from rescans).
    pub cgroup_ringbuf_full: u64,
    /// New-stack-task records lost (those processes' frames stay addresses once they exit).
    pub stack_tasks_ringbuf_full: u64,
    /// SIGKILLs from userspace seen, and their records lost to a full ring.
    pub user_kill_seen: u64,
    pub user_kill_ringbuf_full: u64,
    /// Sampled stacks lost to a `STACKS` bucket held by another stack.
    pub stacks_collided: u64,
}

pub struct Tracer {
    ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
}

/// A ring buffer, readable from tokio.
pub type AsyncRing = AsyncFd<RingBuf<MapData>>;

/// The ring buffers userspace reads: OOM records on their own, so nothing delays them.
pub struct Rings {
    pub oom: AsyncRing,
    /// Cgroup creations, when the cgroup_mkdir hook attached.
    pub cgroups: Option<AsyncRing>,
    /// SIGKILLs sent from userspace, when the user_kill hook attached.
    pub user_kills: Option<AsyncRing>,
    /// Each kill's call path (memcg or global), where oom_kill_process is not hooked.
    pub call_paths: Option<CallPaths>,
}

fn async_ring(ebpf: &mut Ebpf, name: &'static str) -> Result<AsyncRing, TracerError> {
    let map = ebpf.take_map(name).ok_or(TracerError::MissingMap(name))?;
    let ring = RingBuf::try_from(map).map_err(|source| TracerError::Map { name, source })?;
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for its lifetime.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| TracerError::Poll(e.into()))
}

impl Tracer {
    /// Checks privileges, resolves layouts, loads and attaches. Must run inside a tokio
    /// runtime (the ring buffer is registered with it).
    pub fn start(opts: &TracerOptions) -> Result<(Self, Rings), TracerError> {
        Privileges::current().check()?;
        raise_memlock_rlimit();
        // Without BTF only the plain tracepoint can attach: the kill is still reported, with
        // the fields the tracepoint record has (README "Limits").
        let mut kbtf = match KernelBtf::from_sys() {
            Ok(b) => Some(b),
            Err(e @ BtfError::Missing { .. }) => {
                log::warn!(
                    "{e}: falling back to the oom:mark_victim tracepoint, without the fields BTF gives"
                );
                None
            }
            Err(e) => return Err(e.into()),
        };
        let tracefs = Tracefs::locate()?;
        let g = Globals::resolve(kbtf.as_ref(), opts, &tracefs)?;
        let page_shift = g.page_shift;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("KERNEL_LAYOUT", &g.layout, true)
            .override_global("MARK_VICTIM_TP", &g.tp_layout, true)
            .override_global("CGROUP_MKDIR_TP", &g.mkdir_layout, true)
            .override_global("PAGE_SHIFT", &page_shift, true)
            .override_global("MEMCG_STAT_LAYOUT", &g.stat_layout, true);
        let charge_opts = opts.charges.unwrap_or_default();
        let charge_config = kbtf.as_ref().map_or(ChargeConfig::default_config(), |k| {
            charge_config(k, &charge_opts, opts.cgroup_v1())
        });
        loader.override_global("CHARGE_CONFIG", &charge_config, true);
        match opts.oom_ring_bytes {
            // Without the OOM hooks nothing writes the ring: one page instead of the default.
            _ if !opts.oom => {
                loader.map_max_entries("OOM_EVENTS", 1 << page_shift);
            }
            Some(bytes) => {
                loader.map_max_entries("OOM_EVENTS", bytes);
            }
            None => {}
        }
        // aya's own parse of the same bytes, for the typed attach points (tp_btf, fentry).
        let btf = kbtf
            .as_mut()
            .and_then(KernelBtf::take_bytes)
            .and_then(|b| Btf::parse(&b, Endianness::default()).ok());
        if let Some(btf) = &btf {
            loader.btf(btf);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(TracerError::Load)?;
        init_ebpf_logger(&mut ebpf);

        let env = AttachEnv {
            btf: btf.as_ref(),
            kbtf: kbtf.as_ref(),
            tracefs: &tracefs,
            fault_period: charge_opts.fault_period.max(1),
            tracepoints_attached: Default::default(),
        };
        let mut hooks = Vec::new();
        for hook in HOOKS {
            if let Some(status) = crate::kernel::select::select(&mut ebpf, hook, &env, opts)? {
                hooks.push(status);
            }
        }
        let rings = Rings::take(&mut ebpf, &hooks, opts)?;
        Ok((Self { ebpf, hooks }, rings))
    }
    /// Charge accounting alone, for the commands that poll the charge maps themselves (`top`,
    /// `hotspots`): no OOM hooks, and an error when no charge-path hook attached. The rings are
    /// handed back so that they live as long as the caller keeps them.
    pub fn start_charges(
        hierarchy: &MemoryHierarchy,
        charges: ChargeOptions,
    ) -> Result<(Self, Rings, ChargeMaps), TracerError> {
        let opts = TracerOptions {
            hierarchy: Some(hierarchy.clone()),
            oom: false,
            charges: Some(charges),
            ..TracerOptions::default()
        };
        let (mut tracer, rings) = Self::start(&opts)?;
        let maps = tracer.take_charge_maps().ok_or(TracerError::NoChargeHook)?;
        Ok((tracer, rings, maps))
    }

    /// The loaded object, for reading maps (charge accounting).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The charge maps, for whoever polls them; `None` without charge accounting.
    pub fn take_charge_maps(&mut self) -> Option<ChargeMaps> {
        self.selected(HookId::Charge)
            .or_else(|| self.selected(HookId::ChargeSample))?;
        match ChargeMaps::take(&mut self.ebpf) {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!("charge maps: {e}");
                None
            }
        }
    }

    pub fn counters(&self) -> Result<KernelCounters, TracerError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(TracerError::MissingMap("COUNTERS"))?;
        let arr = PerCpuArray::<_, u64>::try_from(map).map_err(|source| TracerError::Map {
            name: "COUNTERS",
            source,
        })?;
        let sum = |i: u32| -> Result<u64, TracerError> {
            let v = arr.get(&i, 0).map_err(|source| TracerError::Map {
                name: "COUNTERS",
                source,
            })?;
            Ok(v.iter().sum())
        };
        Ok(KernelCounters {
            oom_seen: sum(counters::OOM_SEEN)?,
            oom_ringbuf_full: sum(counters::OOM_RINGBUF_FULL)?,
            oom_read_errors: sum(counters::OOM_READ_ERRORS)?,
            oom_ctx_seen: sum(counters::OOM_CTX_SEEN)?,
            oom_ctx_ringbuf_full: sum(counters::OOM_CTX_RINGBUF_FULL)?,
            cgroup_ringbuf_full: sum(counters::CGROUP_RINGBUF_FULL)?,
            stack_tasks_ringbuf_full: sum(counters::STACK_TASKS_RINGBUF_FULL)?,
            user_kill_seen: sum(counters::USER_KILL_SEEN)?,
            user_kill_ringbuf_full: sum(counters::USER_KILL_RINGBUF_FULL)?,
            stacks_collided: sum(counters::STACKS_COLLIDED)?,
        })
    }

    /// Detaches and unloads every program: nothing is produced after this, and what the
    /// programs wrote stays in the rings (the maps live on), so a last drain sees every record
    /// the counters count. Without it a kill between the last drain and the counter read was
    /// counted as seen and never delivered.
    pub fn stop_producing(&mut self) {
        for (name, program) in self.ebpf.programs_mut() {
            let r = match program {
                Program::TracePoint(p) => p.unload(),
                Program::BtfTracePoint(p) => p.unload(),
                Program::FEntry(p) => p.unload(),
                Program::KProbe(p) => p.unload(),
                Program::RawTracePoint(p) => p.unload(),
                Program::PerfEvent(p) => p.unload(),
                _ => Ok(()),
            };
            // Not loaded (a variant that was never tried) is not an error here.
            if let Err(e) = r
                && !matches!(e, ProgramError::NotLoaded)
            {
                log::warn!("detaching {name}: {e}");
            }
        }
    }

    /// The selected variant of `hook`, if any.
    pub fn selected(&self, hook: HookId) -> Option<Variant> {
        self.hooks
            .iter()
            .find(|h| h.hook == hook)
            .and_then(|h| h.selected)
    }
}

/// The memcg event items to count, from BTF (`enum vm_event_item` moves with the kernel's
/// config), and which one stands for a charge when sampling stacks.
fn charge_config(kbtf: &KernelBtf, opts: &ChargeOptions, v1: bool) -> ChargeConfig {
    let d = ChargeConfig::default_config();
    let item = |name: &str, default: u32| kbtf.enum_value("vm_event_item", name).unwrap_or(default);
    let (pgpgin, pgfault) = (item("PGPGIN", d.ev_pgpgin), item("PGFAULT", d.ev_pgfault));
    // cgroup v1 counts PGPGIN per charge (memcg1_charge_statistics); v2 has no such event.
    ChargeConfig {
        ev_pgpgin: pgpgin,
        ev_pgpgout: item("PGPGOUT", d.ev_pgpgout),
        ev_pgfault: pgfault,
        ev_pgmajfault: item("PGMAJFAULT", d.ev_pgmajfault),
        sample_item: if v1 { pgpgin } else { pgfault },
        sample_every: opts.sample_every,
        fault_period: opts.fault_period,
        pmd_pages: pmd_pages(),
    }
}

/// Pages per PMD-sized transparent huge page, from sysfs (mm/huge_memory.c
/// `hpage_pmd_size_show`); 0 where the kernel has no THP.
fn pmd_pages() -> u32 {
    let bytes = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    u32::try_from(bytes >> page_shift()).unwrap_or(0)
}

fn page_shift() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        (size as u64).trailing_zeros()
    } else {
        12
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (https://lwn.net/Articles/837122/).
fn raise_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("raising RLIMIT_MEMLOCK failed: {}", io::Error::last_os_error());
        // Without CAP_SYS_RESOURCE: as far as the hard limit (before 5.11 BPF maps count).
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid rlimit structs.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) == 0 {
                r.rlim_cur = r.rlim_max;
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &r);
            }
        }
    }
}

/// Forwards the programs' aya-log messages to the `log` crate.
fn init_ebpf_logger(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        // SAFETY: the logger owns its ring buffer fd for its whole lifetime.
        Ok(logger) => match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        {
            Ok(mut logger) => {
                tokio::spawn(async move {
                    loop {
                        let Ok(mut guard) = logger.readable_mut().await else {
                            break;
                        };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => log::warn!("eBPF logger not polled: {e}"),
        },
        Err(e) => log::debug!("no eBPF logger: {e}"),
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// What the programs read from patched globals: the kernel's and tracefs's layouts.
struct Globals {
    layout: KernelLayout,
    tp_layout: MarkVictimTpLayout,
    mkdir_layout: CgroupMkdirTpLayout,
    page_shift: u32,
    stat_layout: MemcgStatLayout,
}

impl Globals {
    fn resolve(
        kbtf: Option<&KernelBtf>,
        opts: &TracerOptions,
        tracefs: &Tracefs,
    ) -> Result<Self, TracerError> {
        let layout = match kbtf {
            Some(kbtf) => {
                let resolved = kbtf.kernel_layout(opts.cgroup_v1());
                if !resolved.missing.is_empty() {
                    log::warn!(
                        "kernel BTF lacks {}: those event fields stay empty",
                        resolved.missing.join(", ")
                    );
                }
                resolved.layout
            }
            None => KernelLayout::absent(),
        };
        let tp_layout = tracefs.mark_victim_layout()?;
        // Optional hook: without its layout the program fails to attach and is reported so.
        let mkdir_layout = tracefs
            .cgroup_mkdir_layout()
            .unwrap_or(CgroupMkdirTpLayout::absent());
        let page_shift = page_shift();
        let stat_layout = match kbtf.map(|k| k.memcg_stat_layout(page_shift)) {
            Some(Ok(r)) => {
                if !r.missing.is_empty() {
                    log::info!("this kernel's memcgs do not count {}", r.missing.join(", "));
                }
                r.layout
            }
            Some(Err(e)) => {
                log::warn!("no memory breakdown at the kill: {e}; the post-kill snapshot stands in");
                MemcgStatLayout::absent()
            }
            None => MemcgStatLayout::absent(),
        };
        Ok(Self {
            layout,
            tp_layout,
            mkdir_layout,
            page_shift,
            stat_layout,
        })
    }
}

impl Rings {
    /// The rings of the hooks that attached, and the OOM stack map where the call path is
    /// needed.
    fn take(ebpf: &mut Ebpf, hooks: &[HookStatus], opts: &TracerOptions) -> Result<Self, TracerError> {
        let oom = async_ring(ebpf, "OOM_EVENTS")?;
        let mkdir_attached = hooks
            .iter()
            .any(|h| h.hook == HookId::CgroupMkdir && h.selected.is_some());
        let cgroups = if mkdir_attached {
            Some(async_ring(ebpf, "CGROUP_EVENTS")?)
        } else {
            None
        };
        let user_kills = if hooks
            .iter()
            .any(|h| h.hook == HookId::UserKill && h.selected.is_some())
        {
            Some(async_ring(ebpf, "KILL_SIGNALS")?)
        } else {
            None
        };
        // Without the kernel's own decision (oom_kill_process), its call stack at the kill
        // tells memcg from global: one pass over kallsyms, only then.
        let decided = hooks
            .iter()
            .any(|h| h.hook == HookId::OomContext && h.selected.is_some());
        let call_paths = match (opts.oom && !decided)
            .then(OomPathRanges::of_this_kernel)
            .flatten()
        {
            Some(ranges) => {
                let map = ebpf
                    .take_map("OOM_STACKS")
                    .ok_or(TracerError::MissingMap("OOM_STACKS"))?;
                let stacks = StackTraceMap::try_from(map).map_err(|source| TracerError::Map {
                    name: "OOM_STACKS",
                    source,
                })?;
                // The victim programs save the stack only from here on.
                let wanted = ebpf
                    .map_mut("OOM_STACKS_WANTED")
                    .ok_or(TracerError::MissingMap("OOM_STACKS_WANTED"))?;
                let mut wanted = Array::<_, u32>::try_from(wanted).map_err(|source| TracerError::Map {
                    name: "OOM_STACKS_WANTED",
                    source,
                })?;
                wanted.set(0, &1, 0).map_err(|source| TracerError::Map {
                    name: "OOM_STACKS_WANTED",
                    source,
                })?;
                Some(CallPaths::new(stacks, ranges))
            }
            None => None,
        };
        Ok(Self {
            oom,
            cgroups,
            user_kills,
            call_paths,
        })
    }
}
