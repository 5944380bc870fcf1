use super::*;

/// Kernel 5.10.0-foo lacking the pieces named in `.0`; with `.1`, every probe fails (as
/// when not root).
struct Fake(&'static [&'static str], bool);

impl Probe for Fake {
    fn release(&self) -> String {
        "5.10.0-foo".to_owned()
    }
    fn supports(&self, kind: Kind) -> Result<bool, String> {
        let what = REQUIREMENTS.iter().find(|r| r.kind == kind).unwrap().what;
        if self.1 {
            return Err("bpf_prog_load: Operation not permitted (os error 1)".to_owned());
        }
        Ok(!self.0.contains(&what))
    }
}

#[test]
fn all_present_or_unknown_is_ok() {
    assert!(check(&Fake(&[], false)).is_ok());
    // Probes that fail prove nothing: not reported as missing, the load decides.
    assert!(check(&Fake(&["bpf_fib_lookup"], true)).is_ok());
}

#[test]
fn one_missing_names_it_in_one_line() {
    let text = check(&Fake(&["bpf_ktime_get_coarse_ns"], false))
        .unwrap_err()
        .to_string();
    assert_eq!(
        text,
        "kernel 5.10.0-foo lacks bpf_ktime_get_coarse_ns (helper, Linux 5.11): ikelb needs \
         Linux >= 6.1 (docs/operations.md, \"Kernel requirements\")"
    );
    // Several missing: the most basic one is named.
    let text = check(&Fake(&["bpf_fib_lookup", "BPF_MAP_TYPE_DEVMAP"], false))
        .unwrap_err()
        .to_string();
    let want = "kernel 5.10.0-foo lacks BPF_MAP_TYPE_DEVMAP (map type, Linux 4.14): ";
    assert!(text.starts_with(want), "{text}");
}

#[test]
fn verifier_line_skips_statistics() {
    let log = "0: (b7) r0 = 0\n12: (61) r1 = *(u32 *)(r2 +0)\n\
               R2 invalid mem access 'scalar'\n\
               processed 13 insns (limit 1000000) max_states_per_insn 0 total_states 1\n\
               verification time 24 usec\nstack depth 0\n\0";
    let line = last_meaningful_line(log);
    assert_eq!(line, Some("R2 invalid mem access 'scalar'"));
    assert_eq!(last_meaningful_line("\n processed 1 insns\n"), None);

    // Found among the sources, one line, the release first.
    let load = |log: &str| {
        aya::EbpfError::ProgramError(ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(log.to_owned()),
        })
    };
    let text = refusal("ikelb", &load(log)).unwrap().to_string();
    let want = format!(
        "kernel {}: the verifier refused XDP program ikelb: R2 invalid mem access 'scalar' \
         (BPF_PROG_LOAD: Permission denied (os error 13)); ",
        release()
    );
    assert!(text.starts_with(&want) && !text.contains('\n'), "{text}");
    // No log: refused before the verifier ran, not the verifier's doing.
    assert!(refusal("ikelb", &load("")).is_none());
}
