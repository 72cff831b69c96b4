//! Process hardening before any secret is read: no core dumps, not dumpable (so neither a crash
//! nor a same-user debugger attach through /proc writes keys or notes to disk). What remains
//! (swap, hibernation) is in docs/threat-model.md.

/// Disables core dumps for this process. Failures are ignored: hardening is best effort, and
/// refusing to run would not make a vault safer.
pub fn no_core_dumps() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{
            set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit,
        };
        let _ = setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: Some(0),
            },
        );
        let _ = set_dumpable_behavior(DumpableBehavior::NotDumpable);
    }
}

/// Makes every file and directory this process creates private to its owner (umask 077),
/// whatever the umask it was started with: sled's files, temporary files, backups, recovery-key
/// files. Carnet's own files are also created with explicit owner-only modes.
pub fn private_files() {
    #[cfg(target_os = "linux")]
    {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn core_dumps_are_off_and_the_process_is_not_dumpable() {
        super::no_core_dumps();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap_or("");
        assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
        assert_eq!(
            rustix::process::dumpable_behavior().ok(),
            Some(rustix::process::DumpableBehavior::NotDumpable)
        );
    }
}
