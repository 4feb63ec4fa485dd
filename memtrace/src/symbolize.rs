//! Stack symbolization with blazesym: kernel addresses from /proc/kallsyms, user addresses
//! from the process's ELF files (found through /proc/<pid>/maps). A process that is gone
//! degrades to raw addresses, never an error.

use std::collections::HashMap;

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Process, Source},
    },
};

pub struct Symbols {
    symbolizer: Symbolizer,
    kernel: HashMap<u64, String>,
    /// (pid, address) -> name, so a process that exits keeps the names already resolved.
    user: HashMap<(u32, u64), String>,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

fn hex(addr: u64) -> String {
    format!("0x{addr:x}")
}

fn names(syms: Vec<Symbolized<'_>>, addrs: &[u64]) -> Vec<String> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| match syms.get(i) {
            Some(Symbolized::Sym(s)) => s.name.to_string(),
            _ => hex(*a),
        })
        .collect()
}

impl Symbols {
    pub fn new() -> Self {
        Self { symbolizer: Symbolizer::new(), kernel: HashMap::new(), user: HashMap::new() }
    }

    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<String> {
        let missing: Vec<u64> = addrs.iter().copied().filter(|a| !self.kernel.contains_key(a)).collect();
        if !missing.is_empty() {
            let src = Source::Kernel(Kernel { debug_syms: false, ..Kernel::default() });
            let resolved = match self.symbolizer.symbolize(&src, Input::AbsAddr(&missing)) {
                Ok(s) => names(s, &missing),
                Err(e) => {
                    log::debug!("kernel symbolization: {e}");
                    missing.iter().map(|a| hex(*a)).collect()
                }
            };
            self.kernel.extend(missing.into_iter().zip(resolved));
        }
        addrs.iter().map(|a| self.kernel.get(a).cloned().unwrap_or_else(|| hex(*a))).collect()
    }

    pub fn user(&mut self, pid: u32, addrs: &[u64]) -> Vec<String> {
        let missing: Vec<u64> = addrs.iter().copied().filter(|a| !self.user.contains_key(&(pid, *a))).collect();
        if !missing.is_empty() {
            let src = Source::Process(Process::new(Pid::from(pid)));
            let resolved = match self.symbolizer.symbolize(&src, Input::AbsAddr(&missing)) {
                Ok(s) => names(s, &missing),
                // The process is gone (or never readable): addresses, not an error.
                Err(e) => {
                    log::debug!("symbolizing pid {pid}: {e}");
                    missing.iter().map(|a| hex(*a)).collect()
                }
            };
            self.user.extend(missing.into_iter().map(|a| (pid, a)).zip(resolved));
        }
        addrs.iter().map(|a| self.user.get(&(pid, *a)).cloned().unwrap_or_else(|| hex(*a))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolization() -> u64 {
        marker_function_for_symbolization as usize as u64
    }

    #[test]
    fn own_function_is_named_and_a_dead_pid_gives_addresses() {
        let mut s = Symbols::new();
        let addr = marker_function_for_symbolization();
        let names = s.user(std::process::id(), &[addr]);
        assert!(names[0].contains("marker_function_for_symbolization"), "{names:?}");
        // pid 0x7fffffff does not exist.
        assert_eq!(s.user(0x7fff_ffff, &[0x1234]), vec!["0x1234".to_owned()]);
    }
}
