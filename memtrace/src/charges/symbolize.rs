//! Stack symbolization: kernel addresses from /proc/kallsyms (parsed once: blazesym's file
//! cache re-reads procfs files, whose mtime always looks new), user addresses with blazesym from
//! the process's ELF files (found through /proc/<pid>/maps). A process that is gone is named
//! from the mappings recorded while it ran ([`task_maps`]), by file offset; without them it
//! degrades to raw addresses, never an error.

use std::collections::HashMap;

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Elf, Process, Source},
    },
};

use crate::charges::task_maps;

/// /proc/kallsyms, sorted by address.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// Data symbols are kept, unnamed, as boundaries: code is never named after them.
    syms: Vec<(u64, Option<String>)>,
}

impl Kallsyms {
    pub fn load() -> Self {
        std::fs::read_to_string("/proc/kallsyms")
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// Lines like `ffffffff81000000 T _stext [module]`; zero addresses (hidden by kptr_restrict)
    /// are useless and dropped.
    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, Option<String>)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok().filter(|a| *a != 0)?;
                let kind = f.next()?;
                let name = f.next()?;
                // T/t text, W/w weak: code. A stack address falling after a data symbol (R, D,
                // B...) is in no function kallsyms knows (a BPF program without
                // bpf_jit_kallsyms): it once came out as `__stop_runtime_ptr_USER_PTR_MAX`.
                let code = matches!(kind, "T" | "t" | "W" | "w");
                Some((addr, code.then(|| name.to_owned())))
            })
            .collect();
        syms.sort_unstable_by_key(|(a, _)| *a);
        Self { syms }
    }

    /// The symbol at or below `addr`, if `addr` is plausibly inside it: kallsyms has no
    /// sizes, and an address past the last symbol of a region (a BPF program when
    /// bpf_jit_kallsyms is off) would otherwise take the name of whatever precedes it.
    pub fn find(&self, addr: u64) -> Option<&str> {
        const MAX_FUNCTION: u64 = 128 * 1024;
        let i = self.syms.partition_point(|(a, _)| *a <= addr).checked_sub(1)?;
        let (start, name) = &self.syms[i];
        (addr - start < MAX_FUNCTION).then_some(name.as_deref()?)
    }
}

/// blazesym keeps an open file per distinct binary it has read. On a host where processes (and
/// container root filesystems) come and go that is unbounded, so the symbolizer is replaced after
/// this many distinct processes; names already resolved stay cached.
const PIDS_PER_SYMBOLIZER: usize = 64;

pub struct Symbols {
    symbolizer: Symbolizer,
    /// Processes read by the current symbolizer.
    pids: std::collections::HashSet<u32>,
    kallsyms: Option<Kallsyms>,
    /// (pid, address) -> name, so a process that exits keeps the names already resolved.
    user: HashMap<(u32, u64), String>,
    /// Addresses no lookup named yet, asked once more before their hex is cached.
    retried: std::collections::HashSet<(u32, u64)>,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

fn hex(addr: u64) -> String {
    format!("0x{addr:x}")
}

impl Symbols {
    pub fn new() -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            pids: Default::default(),
            kallsyms: None,
            user: HashMap::new(),
            retried: Default::default(),
        }
    }

    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<String> {
        let k = self.kallsyms.get_or_insert_with(Kallsyms::load);
        addrs
            .iter()
            .map(|a| k.find(*a).map_or_else(|| hex(*a), str::to_owned))
            .collect()
    }

    pub fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<String> {
        let missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !self.user.contains_key(&(pid, *a)))
            .collect();
        if !missing.is_empty() {
            if self.pids.insert(pid) && self.pids.len() > PIDS_PER_SYMBOLIZER {
                self.symbolizer = Symbolizer::new();
                self.pids.clear();
                self.pids.insert(pid);
                // Names of processes that are gone are not needed again.
                self.user
                    .retain(|(p, _), _| std::path::Path::new(&format!("/proc/{p}")).exists());
                self.retried.clear();
            }
            // By path, not through /proc/<pid>/map_files: blazesym caches an open file per
            // distinct path, and map_files paths are new for every process, which leaked an fd
            // per symbolized process in a long-running daemon.
            let mut process = Process::new(Pid::from(pid));
            process.map_files = false;
            let src = Source::Process(process);
            let resolved: Vec<Option<String>> =
                match self.symbolizer.symbolize(&src, Input::AbsAddr(&missing)) {
                    Ok(syms) => syms
                        .into_iter()
                        .map(|s| match s {
                            Symbolized::Sym(s) => Some(s.name.to_string()),
                            Symbolized::Unknown(_) => None,
                        })
                        .collect(),
                    // The process is gone (or never readable): from its recorded mappings, else
                    // addresses; not an error.
                    Err(e) => {
                        log::debug!("symbolizing pid {pid}: {e}");
                        vec![None; missing.len()]
                    }
                };
            self.keep_user(pid, &missing, resolved);
        }
        addrs
            .iter()
            .map(|a| self.user.get(&(pid, *a)).cloned().unwrap_or_else(|| hex(*a)))
            .collect()
    }
}

impl Symbols {
    /// Caches what a lookup named. An address it could not name is looked up in the mappings
    /// recorded while the process ran: a victim killed a moment ago is a zombie whose
    /// /proc/<pid>/maps is already empty, so blazesym finds no file and says `Unknown`, not
    /// an error. Still unnamed, it is asked once more at the next lookup (a sample taken
    /// across an exec) before its address is kept for good.
    fn keep_user(&mut self, pid: u32, addrs: &[u64], resolved: Vec<Option<String>>) {
        let unknown: Vec<u64> = addrs
            .iter()
            .zip(&resolved)
            .filter(|(_, r)| r.is_none())
            .map(|(a, _)| *a)
            .collect();
        let mut recorded: HashMap<u64, String> = if unknown.is_empty() {
            HashMap::new()
        } else {
            unknown.iter().copied().zip(self.gone(pid, &unknown)).collect()
        };
        for (a, r) in addrs.iter().zip(resolved) {
            let name = r.or_else(|| recorded.remove(a).filter(|n| *n != hex(*a)));
            match name {
                Some(n) => {
                    self.user.insert((pid, *a), n);
                }
                None if self.retried.insert((pid, *a)) => {}
                None => {
                    self.user.insert((pid, *a), hex(*a));
                }
            }
        }
    }

    /// Names for the frames of a process that has exited, from the executable mappings
    /// recorded while it ran: each address becomes an offset in its file, looked up there.
    fn gone(&mut self, pid: u32, addrs: &[u64]) -> Vec<String> {
        let mut out: Vec<String> = addrs.iter().map(|a| hex(*a)).collect();
        let Some(maps) = task_maps::lookup(pid) else {
            return out;
        };
        // One lookup per file, in address order within it.
        let mut by_file: HashMap<&std::path::Path, Vec<(usize, u64)>> = HashMap::new();
        for (i, a) in addrs.iter().enumerate() {
            if let Some((m, off)) = maps.iter().find_map(|m| Some((m, m.file_offset(*a)?))) {
                by_file.entry(m.path.as_path()).or_default().push((i, off));
            }
        }
        for (path, items) in by_file {
            let offsets: Vec<u64> = items.iter().map(|(_, o)| *o).collect();
            let src = Source::Elf(Elf::new(path));
            match self.symbolizer.symbolize(&src, Input::FileOffset(&offsets)) {
                Ok(syms) => {
                    for ((i, _), s) in items.iter().zip(syms) {
                        if let Symbolized::Sym(s) = s {
                            out[*i] = s.name.to_string();
                        }
                    }
                }
                Err(e) => log::debug!("symbolizing {} by file offset: {e}", path.display()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolization() -> u64 {
        marker_function_for_symbolization as *const () as usize as u64
    }

    #[test]
    fn symbolizer_is_replaced_after_many_processes() {
        let mut s = Symbols::new();
        for pid in 0..PIDS_PER_SYMBOLIZER as u32 + 5 {
            let _ = s.user(0x7000_0000 + pid, &[0x1234]);
        }
        assert!(
            s.pids.len() <= PIDS_PER_SYMBOLIZER,
            "{} pids on one symbolizer",
            s.pids.len()
        );
        // At the reset the names of the 64 (nonexistent) processes were dropped: only the ones
        // looked up since remain.
        assert!(
            s.user.len() <= 5,
            "names of processes that are gone are dropped: {}",
            s.user.len()
        );
    }

    #[test]
    fn kallsyms_lookup() {
        let k =
            Kallsyms::parse("0000000000000000 A hidden\nffffffff81000100 T b\nffffffff81000000 T a\nbad\n");
        assert_eq!(k.find(0xffffffff81000000), Some("a"));
        assert_eq!(k.find(0xffffffff810000ff), Some("a"));
        assert_eq!(k.find(0xffffffff81000200), Some("b"));
        assert_eq!(k.find(0x1000), None);
        assert_eq!(
            k.find(0xffffffff81000100 + (1 << 20)),
            None,
            "far past the last symbol"
        );
        let k = Kallsyms::parse("ffffffff81000000 T a\nffffffff82000000 R __stop_runtime_ptr_X\n");
        assert_eq!(k.find(0xffffffff81000010), Some("a"));
        assert_eq!(k.find(0xffffffff82000010), None, "code is not named after data");
    }

    #[test]
    fn own_function_is_named_and_a_dead_pid_gives_addresses() {
        let mut s = Symbols::new();
        let addr = marker_function_for_symbolization();
        let names = s.user(std::process::id(), &[addr]);
        assert!(
            names[0].contains("marker_function_for_symbolization"),
            "{names:?}"
        );
        // pid 0x7fffffff does not exist.
        assert_eq!(s.user(0x7fff_ffff, &[0x1234]), vec!["0x1234".to_owned()]);
    }

    /// A victim just killed is a zombie until reaped: its /proc/<pid>/maps is empty, so
    /// blazesym answers `Unknown`; the mappings recorded while it ran name it.
    #[test]
    fn a_zombie_is_named_from_its_recorded_mappings() {
        let addr = marker_function_for_symbolization();
        // SAFETY: the child only calls async-signal-safe functions before _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        if child == 0 {
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe {
                libc::usleep(200_000);
                libc::_exit(0)
            };
        }
        let pid = u32::try_from(child).expect("pid");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
        task_maps::recorded()
            .lock()
            .expect("lock")
            .insert(pid, task_maps::parse_maps(&maps));
        // A zombie: exited, not yet waited for.
        let stat = format!("/proc/{pid}/stat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z ")) {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let names = Symbols::new().user(pid, &[addr]);
        // SAFETY: reaps the child forked above.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
        assert!(
            names[0].contains("marker_function_for_symbolization"),
            "{names:?}"
        );
    }
}
