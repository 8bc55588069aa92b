//! vm.conf(5): the lexer (quoting, macros, continuation, includes) and
//! the parse.y grammar with its actions, on arbitrary bytes.  The first
//! byte chooses `vmd -n` or a registering parse; user and group names
//! resolve through a table instead of NSS, so the target touches no
//! system database.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmd::config::{parse_bytes_with, ParseOptions, Resolver};

struct Names;

impl Resolver for Names {
    fn uid(&self, user: &str) -> Option<u32> {
        match user {
            "root" => Some(0),
            "_vmd" => Some(99),
            "alice" => Some(1000),
            _ => None,
        }
    }
    fn gid(&self, group: &str) -> Option<u32> {
        match group {
            "wheel" => Some(0),
            "staff" => Some(20),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Relative `include`s and disk paths resolve in an empty directory.
    vmd_fuzz::empty_cwd();
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let defines = [(b"ram".to_vec(), b"512M".to_vec())];
    let mut opts = ParseOptions::new(&defines);
    opts.noaction = flags & 1 != 0;
    opts.resolver = &Names;
    let outcome = parse_bytes_with("vm.conf", text, opts);
    // Every message prints, at either verbosity.
    let _ = outcome.lines(u32::from(flags >> 1 & 1));
});
