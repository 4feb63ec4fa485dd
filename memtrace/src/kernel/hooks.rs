//! The hook table: for each kernel hook memtrace uses, its variants in order of preference.
//! At start-up the tracer tries them in order and keeps the first that loads and attaches,
//! along with the reason each earlier one failed (`memtrace probes` prints all of it).
//! Every variant of a hook writes the same record type, so the rest of memtrace never knows
//! which one ran.

use serde::Serialize;

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attach {
    /// BTF-typed tracepoint (`tp_btf/<event>`): typed arguments, kernel >= 5.5 with BTF.
    TpBtf { event: &'static str },
    /// Raw tracepoint (`raw_tp/<event>`): untyped arguments, kernel >= 4.17; memtrace uses
    /// it only where BTF says the first argument is a `struct task_struct *`.
    RawTp {
        event: &'static str,
        first_arg: &'static str,
    },
    /// fentry on a kernel function (BPF trampoline): kernel >= 5.5, BTF; refused on some
    /// hardened kernels.
    Fentry { function: &'static str },
    /// kprobe on a kernel function: needs CONFIG_KPROBES.
    Kprobe { function: &'static str },
    /// A software perf event on every CPU, sampled: the program runs once every N events
    /// (N from the charge options).
    PerfEvent { event: &'static str },
    /// Classic tracepoint: the record the kernel formats, layout from tracefs.
    Tracepoint {
        category: &'static str,
        name: &'static str,
        /// Fields (name, offset, size) the program reads at fixed offsets; checked against
        /// tracefs before attaching. Empty when the program gets its layout from userspace.
        fixed: &'static [(&'static str, u32, u32)],
    },
}

/// An attach kind, as `--variant HOOK=KIND` and `memtrace probes` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case", const_into_str)]
pub enum AttachKind {
    TpBtf,
    RawTp,
    Fentry,
    Kprobe,
    Tracepoint,
    PerfEvent,
}

impl AttachKind {
    /// Its name in `--variant`, `memtrace probes` and the JSON (snake_case, as serde writes it).
    pub const fn name(self) -> &'static str {
        self.into_str()
    }
}

impl Attach {
    pub fn kind(&self) -> AttachKind {
        match self {
            Self::TpBtf { .. } => AttachKind::TpBtf,
            Self::RawTp { .. } => AttachKind::RawTp,
            Self::Fentry { .. } => AttachKind::Fentry,
            Self::Kprobe { .. } => AttachKind::Kprobe,
            Self::Tracepoint { .. } => AttachKind::Tracepoint,
            Self::PerfEvent { .. } => AttachKind::PerfEvent,
        }
    }

    pub fn target(&self) -> String {
        match self {
            Self::TpBtf { event } | Self::RawTp { event, .. } => (*event).to_owned(),
            Self::Fentry { function } | Self::Kprobe { function } => (*function).to_owned(),
            Self::Tracepoint { category, name, .. } => format!("{category}:{name}"),
            Self::PerfEvent { event } => format!("software:{event}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Variant {
    /// Program name in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    /// A second program this one feeds, attached with it (the variant fails if it cannot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<&'static Variant>,
}

/// The plain `oom:mark_victim` tracepoint: a variant of its own, and what the function hooks
/// on `mark_oom_victim` feed.
const MARK_VICTIM_TP: Variant = Variant {
    program: "oom_victim_tp",
    attach: Attach::Tracepoint {
        category: "oom",
        name: "mark_victim",
        fixed: &[],
    },
    with: None,
};

/// Hooks are loaded by group: the charge path only when charge accounting is on, and then
/// either the sampled hook (default) or the exact one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Oom,
    /// Every charge (opt-in exact mode).
    Charge,
    /// One page fault in N (the default).
    ChargeSampled,
    /// memcg reclaim: both charge modes.
    Reclaim,
    /// Mappings of processes exec'd in watched cgroups: both charge modes, with stacks.
    Stacks,
}

/// Every kernel hook memtrace knows, by the name `--variant` and `memtrace probes` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case", const_into_str)]
pub enum HookId {
    OomVictim,
    OomContext,
    CgroupMkdir,
    UserKill,
    ChargeSample,
    Charge,
    ReclaimBegin,
    ReclaimEnd,
    Exec,
    ThpFault,
}

impl HookId {
    /// Its name in `--variant`, `memtrace probes` and the JSON (snake_case, as serde writes it).
    pub const fn name(self) -> &'static str {
        self.into_str()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub id: HookId,
    pub group: Group,
    pub what: &'static str,
    /// Without a required hook memtrace cannot do its job and refuses to start.
    pub required: bool,
    pub variants: &'static [Variant],
}

/// Every hook memtrace knows, and its variants in order of preference.
pub const HOOKS: &[Hook] = &[
    Hook {
        id: HookId::OomVictim,
        group: Group::Oom,
        what: "every task the OOM killer kills (mm/oom_kill.c mark_oom_victim)",
        required: true,
        variants: &[
            Variant {
                program: "oom_victim_btf",
                attach: Attach::TpBtf { event: "mark_victim" },
                with: None,
            },
            Variant {
                program: "oom_victim_raw",
                attach: Attach::RawTp {
                    event: "mark_victim",
                    first_arg: "task_struct",
                },
                with: None,
            },
            // Before 6.8 the tracepoint passes `int pid` only (5.10: TP_PROTO(int pid)): the
            // function that fires it hands the victim's task to the tracepoint program.
            Variant {
                program: "victim_fentry",
                attach: Attach::Fentry {
                    function: "mark_oom_victim",
                },
                with: Some(&MARK_VICTIM_TP),
            },
            Variant {
                program: "victim_kprobe",
                attach: Attach::Kprobe {
                    function: "mark_oom_victim",
                },
                with: Some(&MARK_VICTIM_TP),
            },
            MARK_VICTIM_TP,
        ],
    },
    Hook {
        id: HookId::OomContext,
        group: Group::Oom,
        what: "the OOM killer's decision: OOM domain, totalpages, chosen points, constraint (oom_kill_process)",
        required: false,
        variants: &[
            Variant {
                program: "oom_ctx_fentry",
                attach: Attach::Fentry {
                    function: "oom_kill_process",
                },
                with: None,
            },
            Variant {
                program: "oom_ctx_kprobe",
                attach: Attach::Kprobe {
                    function: "oom_kill_process",
                },
                with: None,
            },
        ],
    },
    Hook {
        id: HookId::CgroupMkdir,
        group: Group::Oom,
        what: "cgroup id -> path as cgroups are created, so removed ones are still named",
        required: false,
        variants: &[Variant {
            program: "cgroup_mkdir",
            attach: Attach::Tracepoint {
                category: "cgroup",
                name: "cgroup_mkdir",
                fixed: &[],
            },
            with: None,
        }],
    },
    Hook {
        id: HookId::UserKill,
        group: Group::Oom,
        what: "SIGKILLs sent from userspace to another process (userspace OOM killers: earlyoom, systemd-oomd, ...)",
        required: false,
        variants: &[Variant {
            program: "user_kill_btf",
            attach: Attach::TpBtf {
                event: "signal_generate",
            },
            with: None,
        }],
    },
    Hook {
        id: HookId::ChargeSample,
        group: Group::ChargeSampled,
        what: "page faults sampled one in N per CPU: per-cgroup rates, usage and stacks (the default)",
        required: false,
        variants: &[Variant {
            program: "charge_sample",
            attach: Attach::PerfEvent { event: "page-faults" },
            with: None,
        }],
    },
    Hook {
        id: HookId::Charge,
        group: Group::Charge,
        what: "memcg charges per cgroup, with sampled stacks (try_charge_memcg / try_charge, or memcg events)",
        required: false,
        variants: &[
            Variant {
                program: "charge_fentry",
                attach: Attach::Fentry {
                    function: "try_charge_memcg",
                },
                with: None,
            },
            // Before 5.15 the same function, with the same arguments, was try_charge()
            // (mm/memcontrol.c; BTF of Debian's 5.10.0-32: (struct mem_cgroup *, gfp_t, unsigned int)).
            Variant {
                program: "charge_fentry",
                attach: Attach::Fentry {
                    function: "try_charge",
                },
                with: None,
            },
            Variant {
                program: "charge_kprobe",
                attach: Attach::Kprobe {
                    function: "try_charge_memcg",
                },
                with: None,
            },
            Variant {
                program: "charge_kprobe",
                attach: Attach::Kprobe {
                    function: "try_charge",
                },
                with: None,
            },
            Variant {
                program: "memcg_ev_btf",
                attach: Attach::TpBtf {
                    event: "count_memcg_events",
                },
                with: None,
            },
            Variant {
                program: "memcg_ev_raw",
                attach: Attach::RawTp {
                    event: "count_memcg_events",
                    first_arg: "mem_cgroup",
                },
                with: None,
            },
            Variant {
                program: "memcg_ev_tp",
                attach: Attach::Tracepoint {
                    category: "memcg",
                    name: "count_memcg_events",
                    fixed: &[("id", 8, 8), ("item", 16, 4), ("val", 24, 8)],
                },
                with: None,
            },
        ],
    },
    Hook {
        id: HookId::ReclaimBegin,
        group: Group::Reclaim,
        what: "memcg direct reclaim start: a charge hit the limit",
        required: false,
        variants: &[
            Variant {
                program: "reclaim_beg_btf",
                attach: Attach::TpBtf {
                    event: "mm_vmscan_memcg_reclaim_begin",
                },
                with: None,
            },
            Variant {
                program: "reclaim_beg_tp",
                attach: Attach::Tracepoint {
                    category: "vmscan",
                    name: "mm_vmscan_memcg_reclaim_begin",
                    fixed: &[],
                },
                with: None,
            },
        ],
    },
    Hook {
        id: HookId::ReclaimEnd,
        group: Group::Reclaim,
        what: "memcg direct reclaim end: the stall's duration",
        required: false,
        variants: &[
            Variant {
                program: "reclaim_end_btf",
                attach: Attach::TpBtf {
                    event: "mm_vmscan_memcg_reclaim_end",
                },
                with: None,
            },
            Variant {
                program: "reclaim_end_tp",
                attach: Attach::Tracepoint {
                    category: "vmscan",
                    name: "mm_vmscan_memcg_reclaim_end",
                    fixed: &[],
                },
                with: None,
            },
        ],
    },
    Hook {
        id: HookId::Exec,
        group: Group::Stacks,
        what: "processes exec'd in cgroups near their limit: mappings read at once, so a fast-killed process's frames are named",
        required: false,
        variants: &[Variant {
            program: "stack_exec",
            attach: Attach::Tracepoint {
                category: "sched",
                name: "sched_process_exec",
                fixed: &[],
            },
            with: None,
        }],
    },
    Hook {
        id: HookId::ThpFault,
        group: Group::ChargeSampled,
        what: "transparent huge page faults: a stack weighted as the 512 small faults one stands for, which the page-fault sampler counts as one",
        required: false,
        variants: &[
            Variant {
                program: "thp_fentry",
                attach: Attach::Fentry {
                    function: "do_huge_pmd_anonymous_page",
                },
                with: None,
            },
            Variant {
                program: "thp_kprobe",
                attach: Attach::Kprobe {
                    function: "do_huge_pmd_anonymous_page",
                },
                with: None,
            },
        ],
    },
];

/// The hook `--variant` or a config file names.
pub fn hook(name: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.id.name() == name)
}

/// Why a variant was not used.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub variant: Variant,
    /// One line for `memtrace probes` ([`crate::kernel::attach::AttachError`]'s text).
    pub reason: String,
    /// The kernel's errno, where it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
}

/// What the selection decided for one hook.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    pub hook: HookId,
    pub required: bool,
    pub selected: Option<Variant>,
    /// Variants that would also work (listed by `memtrace probes`, which tries them all).
    pub also_works: Vec<Variant>,
    pub rejected: Vec<Rejected>,
}

/// `--variant HOOK=KIND` restricts a hook to one attach kind (tests use it to cover every
/// variant on one kernel); `HOOK=none` leaves an optional hook out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedVariant {
    pub hook: HookId,
    /// `None`: the hook is not attached.
    pub kind: Option<AttachKind>,
}

impl ForcedVariant {
    /// Whether this restriction lets `kind` be tried.
    pub fn allows(&self, kind: AttachKind) -> bool {
        self.kind == Some(kind)
    }
}

/// A config file's `watch.variants` entries parse the way `--variant` does.
impl<'de> serde::Deserialize<'de> for ForcedVariant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForcedVariantError {
    #[error("expected HOOK=KIND (e.g. oom_victim=tracepoint), got {0:?}")]
    Syntax(String),
    #[error("unknown hook {0:?}; known: {1}")]
    Hook(String, String),
    #[error("hook {0} is required: it cannot be none")]
    Required(String),
    #[error("hook {hook} has no {kind:?} variant; it has: {known} (or none)")]
    Kind {
        hook: String,
        kind: String,
        known: String,
    },
}

impl std::str::FromStr for ForcedVariant {
    type Err = ForcedVariantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (h, k) = s
            .split_once('=')
            .ok_or_else(|| ForcedVariantError::Syntax(s.into()))?;
        let hook = hook(h).ok_or_else(|| {
            let known = HOOKS.iter().map(|h| h.id.name()).collect::<Vec<_>>().join(", ");
            ForcedVariantError::Hook(h.into(), known)
        })?;
        if k == "none" {
            if hook.required {
                return Err(ForcedVariantError::Required(h.into()));
            }
            return Ok(Self {
                hook: hook.id,
                kind: None,
            });
        }
        let variant = hook
            .variants
            .iter()
            .find(|v| v.attach.kind().name() == k)
            .ok_or_else(|| {
                let known = hook
                    .variants
                    .iter()
                    .map(|v| v.attach.kind().name())
                    .collect::<Vec<_>>();
                ForcedVariantError::Kind {
                    hook: h.into(),
                    kind: k.into(),
                    known: known.join(", "),
                }
            })?;
        Ok(Self {
            hook: hook.id,
            kind: Some(variant.attach.kind()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for h in HOOKS {
            assert!(!h.variants.is_empty(), "{} has no variant", h.id);
            assert_eq!(hook(h.id.name()).map(|x| x.id), Some(h.id), "one entry per id");
            for v in h.variants {
                // bpftool shows 15 characters of a program name.
                assert!(
                    v.program.len() <= 15,
                    "{} is too long for BPF_OBJ_NAME_LEN",
                    v.program
                );
            }
        }
    }

    /// One name for a hook or a kind everywhere: `--variant`, `memtrace probes`, the JSON.
    #[test]
    fn names_are_the_json_names() {
        let kinds = [
            AttachKind::TpBtf,
            AttachKind::RawTp,
            AttachKind::Fentry,
            AttachKind::Kprobe,
            AttachKind::Tracepoint,
            AttachKind::PerfEvent,
        ];
        for k in kinds {
            assert_eq!(serde_json::json!(k), k.name());
            assert_eq!(
                format!("{k:>12}"),
                format!("{:>12}", k.name()),
                "padded in tables"
            );
        }
        assert_eq!(AttachKind::TpBtf.name(), "tp_btf");
        for h in HOOKS {
            assert_eq!(serde_json::json!(h.id), h.id.name());
            assert_eq!(h.id.to_string(), h.id.name());
        }
        assert_eq!(HookId::CgroupMkdir.name(), "cgroup_mkdir");
    }

    #[test]
    fn forced_variant_parsing() {
        let f: ForcedVariant = "oom_victim=tracepoint".parse().expect("valid");
        assert_eq!(
            f,
            ForcedVariant {
                hook: HookId::OomVictim,
                kind: Some(AttachKind::Tracepoint)
            }
        );
        let off: ForcedVariant = "oom_context=none".parse().expect("an optional hook");
        assert_eq!(off.kind, None);
        assert!(!off.allows(AttachKind::Fentry));
        assert!(matches!(
            "oom_victim=none".parse::<ForcedVariant>(),
            Err(ForcedVariantError::Required(_))
        ));
        assert!(matches!(
            "oom_victim".parse::<ForcedVariant>(),
            Err(ForcedVariantError::Syntax(_))
        ));
        assert!(matches!(
            "x=tp_btf".parse::<ForcedVariant>(),
            Err(ForcedVariantError::Hook(..))
        ));
        assert!(matches!(
            "cgroup_mkdir=kprobe".parse::<ForcedVariant>(),
            Err(ForcedVariantError::Kind { .. })
        ));
    }
}
