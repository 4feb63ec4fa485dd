//! Stack symbolization: kernel addresses from /proc/kallsyms (parsed once: blazesym's file
//! cache re-reads procfs files, whose mtime always looks new), user addresses with blazesym from
//! the process's ELF files (found through /proc/<pid>/maps). A process that is gone is named
//! from the mappings recorded while it ran ([`task_maps`]), by file offset; without them it
//! degrades to raw addresses, never an error.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Elf, Process, Source},
    },
};

use crate::charges::task_maps;

/// A frame's name, shared: every sample of a stack names the same few functions, and a
/// storm's 11 s window held them as separate strings (tens of MB at 400 samples a second).
pub type Frame = Arc<str>;

/// Names kept as one allocation each; cleared past this many.
const MAX_INTERNED: usize = 65_536;

/// One shared allocation per distinct name.
#[derive(Debug, Default)]
struct Interner {
    names: HashSet<Frame>,
}

impl Interner {
    fn get(&mut self, name: &str) -> Frame {
        if let Some(f) = self.names.get(name) {
            return Arc::clone(f);
        }
        if self.names.len() >= MAX_INTERNED {
            self.names.clear();
        }
        let f: Frame = Arc::from(name);
        self.names.insert(Arc::clone(&f));
        f
    }
}

/// Kernel addresses named from /proc/kallsyms. The table is not kept: its 120,000 symbols
/// took about 8 MiB of the daemon's memory, and a charge stack's kernel frames are few and
/// repeat. Addresses not named yet are looked up in one pass over the file (about 30 ms
/// here), and every name found is kept.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// Address -> its function; `None`: in no function kallsyms knows.
    names: HashMap<u64, Option<Frame>>,
}

/// A kernel function is rarely larger: kallsyms has no sizes, and an address past the last
/// symbol of a region (a BPF program when bpf_jit_kallsyms is off) would otherwise take the
/// name of whatever precedes it.
const MAX_FUNCTION: u64 = 128 * 1024;
/// Kernel addresses kept named at most; past that the cache starts again.
const MAX_KERNEL_NAMES: usize = 16_384;

impl Kallsyms {
    /// The function of each address (`None`: none), from the cache or one pass over
    /// /proc/kallsyms.
    pub fn names(&mut self, addrs: &[u64]) -> Vec<Option<Frame>> {
        self.learn(addrs);
        addrs
            .iter()
            .map(|a| self.names.get(a).cloned().flatten())
            .collect()
    }

    /// Looks up, in one pass over /proc/kallsyms, the addresses of `addrs` not named yet.
    pub fn learn(&mut self, addrs: &[u64]) {
        let mut missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !self.names.contains_key(a))
            .collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            let found = match std::fs::File::open("/proc/kallsyms") {
                Ok(f) => Self::find(std::io::BufReader::with_capacity(64 * 1024, f), &missing),
                Err(e) => {
                    log::debug!("/proc/kallsyms: {e}");
                    vec![None; missing.len()]
                }
            };
            if self.names.len() + missing.len() > MAX_KERNEL_NAMES {
                self.names.clear();
            }
            self.names.extend(
                missing
                    .into_iter()
                    .zip(found.into_iter().map(|n| n.map(Frame::from))),
            );
        }
    }

    /// For each of `addrs` (sorted), the symbol at or below it, if the address is plausibly
    /// inside it, from lines like `ffffffff81000000 T _stext [module]` in any order. Zero
    /// addresses (hidden by kptr_restrict) are useless and skipped.
    pub fn find(mut text: impl std::io::BufRead, addrs: &[u64]) -> Vec<Option<String>> {
        // One slot per gap below an address: the highest symbol in (addrs[i-1], addrs[i]],
        // with its name if it is code. A line updates one slot, and is parsed as bytes only as
        // far as it must be: one pass over a 200,000-line kallsyms took 5 s for 171 stacks in
        // an emulated guest when each symbol updated every address within MAX_FUNCTION.
        let mut gaps: Vec<Option<(u64, bool, String)>> = vec![None; addrs.len()];
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            if !matches!(text.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                break;
            }
            // `<hex address> <kind> <name>[\t[module]]`
            let Some(sp) = line.iter().position(|b| *b == b' ') else {
                continue;
            };
            let Some(addr) = parse_hex(&line[..sp]).filter(|a| *a != 0) else {
                continue;
            };
            let i = addrs.partition_point(|a| *a < addr);
            let Some(slot) = gaps.get_mut(i).filter(|_| addrs[i] - addr < MAX_FUNCTION) else {
                continue;
            };
            let mut rest = line[sp + 1..]
                .split(|b| b.is_ascii_whitespace())
                .filter(|f| !f.is_empty());
            let (Some(kind), Some(name)) =
                (rest.next(), rest.next().and_then(|n| std::str::from_utf8(n).ok()))
            else {
                continue;
            };
            // T/t text, W/w weak: code. A stack address falling after a data symbol (R, D,
            // B...) is in no function kallsyms knows (a BPF program without
            // bpf_jit_kallsyms): it once came out as `__stop_runtime_ptr_USER_PTR_MAX`.
            let code = matches!(kind, b"T" | b"t" | b"W" | b"w");
            match slot {
                Some((at, is_code, held)) if addr > *at || (addr == *at && !*is_code && code) => {
                    *at = addr;
                    *is_code = code;
                    // The slot's buffer is reused: most lines that land here are replaced.
                    held.clear();
                    held.push_str(name);
                }
                Some(_) => {}
                None => *slot = Some((addr, code, name.to_owned())),
            }
        }
        // An address's symbol is the highest one in its gap or the nearest filled gap below.
        let mut out = Vec::with_capacity(addrs.len());
        let mut below: Option<&(u64, bool, String)> = None;
        for (a, gap) in addrs.iter().zip(&gaps) {
            if let Some(g) = gap {
                below = Some(g);
            }
            out.push(
                below
                    .filter(|(at, code, _)| *code && a - at < MAX_FUNCTION)
                    .map(|(_, _, name)| name.clone()),
            );
        }
        out
    }
}

/// A kallsyms address: hex digits, at most 16.
fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for d in digits {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        v = v << 4 | u64::from(x);
    }
    Some(v)
}

/// blazesym keeps an open file per distinct binary it has read. On a host where processes (and
/// container root filesystems) come and go that is unbounded, so the symbolizer is replaced after
/// this many distinct processes; names already resolved stay cached.
const PIDS_PER_SYMBOLIZER: usize = 64;

pub struct Symbols {
    symbolizer: Symbolizer,
    /// Processes read by the current symbolizer.
    pids: std::collections::HashSet<u32>,
    kallsyms: Kallsyms,
    /// (pid, address) -> name, so a process that exits keeps the names already resolved.
    user: HashMap<(u32, u64), Frame>,
    /// User function names, shared between the processes of one binary.
    interned: Interner,
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
            kallsyms: Kallsyms::default(),
            user: HashMap::new(),
            interned: Interner::default(),
            retried: Default::default(),
        }
    }

    /// Names every address of `addrs` not named yet, in one pass over /proc/kallsyms: a poll
    /// asks this for all its stacks first, since a pass per stack (hundreds of ms each in an
    /// emulated guest) made a poll of 169 fresh samples last 10 s.
    pub fn learn_kernel(&mut self, addrs: &[u64]) {
        self.kallsyms.learn(addrs);
    }

    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        self.kallsyms
            .names(addrs)
            .into_iter()
            .zip(addrs)
            .map(|(n, a)| n.unwrap_or_else(|| hex(*a).into()))
            .collect()
    }

    pub fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
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
            .map(|a| {
                self.user
                    .get(&(pid, *a))
                    .cloned()
                    .unwrap_or_else(|| hex(*a).into())
            })
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
                    let f = self.interned.get(&n);
                    self.user.insert((pid, *a), f);
                }
                None if self.retried.insert((pid, *a)) => {}
                None => {
                    self.user.insert((pid, *a), hex(*a).into());
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
        let find = |text: &str, addrs: &[u64]| Kallsyms::find(text.as_bytes(), addrs);
        let text = "0000000000000000 A hidden\nffffffff81000100 T b\nffffffff81000000 T a\nbad\n";
        let addrs = [
            0x1000,
            0xffffffff81000000,
            0xffffffff810000ff,
            0xffffffff81000200,
            0xffffffff81000100 + (1 << 20),
        ];
        let named = find(text, &addrs);
        assert_eq!(named[0], None);
        assert_eq!(named[1].as_deref(), Some("a"));
        assert_eq!(named[2].as_deref(), Some("a"));
        assert_eq!(named[3].as_deref(), Some("b"));
        assert_eq!(named[4], None, "far past the last symbol");
        let text = "ffffffff81000000 T a\nffffffff82000000 R __stop_runtime_ptr_X\n";
        let named = find(text, &[0xffffffff81000010, 0xffffffff82000010]);
        assert_eq!(named[0].as_deref(), Some("a"));
        assert_eq!(named[1], None, "code is not named after data");
        // Repeated addresses, and a later symbol above the first two but below the third.
        let text = "ffffffff81000000 T a\nffffffff81000300 t c\nffffffff81000100 T b\n";
        let addrs = [
            0xffffffff81000050,
            0xffffffff81000050,
            0xffffffff81000150,
            0xffffffff81000400,
        ];
        let named: Vec<Option<String>> = find(text, &addrs);
        let want = [Some("a"), Some("a"), Some("b"), Some("c")];
        assert_eq!(named.iter().map(Option::as_deref).collect::<Vec<_>>(), want);
    }

    #[test]
    fn this_kernels_own_symbols_are_named() {
        let text = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
        let Some((addr, name)) = text.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let a = u64::from_str_radix(f.next()?, 16).ok().filter(|a| *a != 0)?;
            (f.next()? == "T").then(|| (a, f.next().map(str::to_owned)))
        }) else {
            eprintln!("kallsyms addresses hidden (kptr_restrict): nothing to check");
            return;
        };
        let mut s = Symbols::new();
        let got = s.kernel(&[addr, addr]);
        assert_eq!(&*got[0], name.clone().unwrap_or_default());
        assert_eq!(got[0], got[1]);
        assert_eq!(s.kallsyms.names.len(), 1, "one entry per address");
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
        assert_eq!(s.user(0x7fff_ffff, &[0x1234]), vec![Frame::from("0x1234")]);
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
        task_maps::recorded().lock().expect("lock").insert(
            &task_maps::TaskRecord {
                tgid: pid,
                who: None,
                at_exec: false,
            },
            task_maps::parse_maps(&maps),
            true,
        );
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
