//! Which variant of each hook attaches: the first that loads, in the table's order of
//! preference (every one under `memtrace probes`), with the reason each other one was refused.

use aya::Ebpf;

use crate::kernel::{
    attach::{AttachEnv, AttachError, attach},
    hooks::{Group, Hook, HookStatus, Rejected, Variant},
    tracer::{TracerError, TracerOptions},
};

/// Attaches the first variant of `hook` that loads (every one with `try_all`); `None` when the
/// options do not want the hook, an error when a required hook has no variant.
pub(super) fn select(
    ebpf: &mut Ebpf,
    hook: &Hook,
    env: &AttachEnv<'_>,
    opts: &TracerOptions,
) -> Result<Option<HookStatus>, TracerError> {
    // `memtrace probes` (try_all) tries both charge modes.
    let wanted = match (hook.group, opts.charges) {
        (Group::Oom, _) => opts.oom,
        (_, None) => false,
        (_, Some(_)) if opts.try_all => true,
        (Group::Charge, Some(c)) => c.exact,
        (Group::ChargeSampled, Some(c)) => !c.exact,
        (Group::Reclaim, Some(_)) => true,
        (Group::Stacks, Some(c)) => c.sample_every != 0,
    };
    if !wanted {
        return Ok(None);
    }
    let forced = opts.forced.iter().find(|f| f.hook == hook.id);
    let mut status = HookStatus {
        hook: hook.id,
        required: hook.required,
        selected: None,
        also_works: vec![],
        rejected: vec![],
    };
    for variant in hook.variants {
        if forced.is_some_and(|f| !f.allows(variant.attach.kind())) {
            status.rejected.push(rejected(variant, &AttachError::NotAsked));
            continue;
        }
        match attach(ebpf, variant, env) {
            Ok(()) if status.selected.is_none() => {
                status.selected = Some(*variant);
                if !opts.try_all {
                    break;
                }
            }
            Ok(()) => status.also_works.push(*variant),
            Err(e) => {
                log::info!("{} via {}: {e}", hook.id, variant.attach.kind());
                status.rejected.push(rejected(variant, &e));
            }
        }
    }
    if hook.required && status.selected.is_none() {
        let reasons = status
            .rejected
            .iter()
            .map(|r| {
                format!(
                    "{} {}: {}",
                    r.variant.attach.kind(),
                    r.variant.attach.target(),
                    r.reason
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(TracerError::RequiredHook {
            hook: hook.id,
            reasons,
        });
    }
    Ok(Some(status))
}

fn rejected(variant: &Variant, e: &AttachError) -> Rejected {
    Rejected {
        variant: *variant,
        reason: e.to_string(),
        errno: e.errno(),
    }
}
